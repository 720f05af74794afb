"""Learning-rate schedules (pure functions of the step), SGD parameter groups, EMA."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn


def cosine_schedule(
    step: int, total: int, base: float, final: float, warmup_steps: int = 0
) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup_steps``, then cosine to ``final``."""
    if step < warmup_steps:
        return base * step / warmup_steps
    span = max(total - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


def step_decay_schedule(
    step: int,
    base: float,
    milestones: Iterable[int],
    gamma: float = 0.1,
    warmup_steps: int = 0,
    warmup_factor: float = 1.0,
    after: bool = False,
) -> float:
    """``base`` x ``gamma`` ^ (milestones passed), after a linear warm-up.

    The warm-up (detectron2's ``WarmupMultiStepLR``, method linear) scales the rate by
    ``warmup_factor`` at step 0, rising linearly to 1 at ``warmup_steps``. ``step`` may count
    iterations or epochs, as long as the milestones count the same. A milestone m is passed at
    step m (``step >= m``, detectron2's iterations), or with ``after`` from step m + 1 (``step >
    m``, the reference's ``adjust_learning_rate`` with 0-based epochs: lr_epochs [40] gives 41
    epochs at the base rate).
    """
    factor = 1.0
    if step < warmup_steps:
        alpha = step / warmup_steps
        factor = warmup_factor * (1 - alpha) + alpha
    passed = sum(step > m if after else step >= m for m in milestones)
    return base * factor * gamma**passed


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """Set every parameter group's learning rate (times its ``lr_scale``, default 1)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


NORM_LAYERS = (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm)


def parameter_groups(
    model: nn.Module, weight_decay: float, norm_decay: float | None = None
) -> list[dict[str, Any]]:
    """SGD parameter groups: trainable parameters with ``weight_decay``, norm layers' with
    ``norm_decay`` (None: the same; detectron2 uses 0 for them)."""
    norm_params = {
        id(p) for m in model.modules() if isinstance(m, NORM_LAYERS) for p in m.parameters()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    if norm_decay is None or norm_decay == weight_decay:
        return [{"params": trainable, "weight_decay": weight_decay}]
    others = [p for p in trainable if id(p) not in norm_params]
    norms = [p for p in trainable if id(p) in norm_params]
    return [
        {"params": others, "weight_decay": weight_decay},
        {"params": norms, "weight_decay": norm_decay},
    ]
