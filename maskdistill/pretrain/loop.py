"""One DINO training step, the training state and its checkpoints, export, and the loop."""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from maskdistill.io import atomic_path
from maskdistill.pretrain.augment import multi_crop
from maskdistill.pretrain.losses import dino_loss, info_nce, koleo, updated_center
from maskdistill.pretrain.model import DINONet, build_dino
from maskdistill.pretrain.settings import PretrainSettings
from maskdistill.pretrain.views import ViewSource
from maskdistill.progress import Progress
from maskdistill.provenance import provenance
from maskdistill.training.checkpoints import CheckpointError
from maskdistill.training.checkpoints import load_checkpoint as read_training_checkpoint
from maskdistill.training.checkpoints import save_checkpoint as write_training_checkpoint
from maskdistill.training.loop import check_finite
from maskdistill.training.metrics_log import MetricsLog
from maskdistill.training.rng import step_generators
from maskdistill.training.schedules import cosine_schedule, ema_update

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class StepSchedule:
    """Values of the schedules at one step."""

    lr: float
    weight_decay: float
    teacher_momentum: float
    freeze_last_layer: bool


def schedule_at(step: int, settings: PretrainSettings) -> StepSchedule:
    """Learning rate (warm-up + cosine), weight decay and teacher momentum (cosine) at ``step``."""
    total = settings.steps
    return StepSchedule(
        lr=cosine_schedule(
            step, total, settings.lr, settings.min_lr, round(settings.warmup_fraction * total)
        ),
        weight_decay=cosine_schedule(step, total, settings.weight_decay, settings.weight_decay_end),
        teacher_momentum=cosine_schedule(step, total, settings.teacher_momentum, 1.0),
        freeze_last_layer=step < round(settings.freeze_last_layer_fraction * total),
    )


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds: networks, optimizer, center and the next step."""

    settings: PretrainSettings
    student: DINONet
    teacher: DINONet
    optimizer: torch.optim.Optimizer
    center: Tensor
    step: int = 0
    schedule: list[list[int]] = dataclasses.field(default_factory=list)  # [first step, steps]


def new_state(settings: PretrainSettings, device: str | torch.device = "cpu") -> TrainState:
    """Fresh student (seeded by ``settings.seed``), teacher = student, AdamW, zero center."""
    torch.manual_seed(settings.seed)
    student = build_dino(settings).to(device)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    decay = [p for n, p in student.named_parameters() if p.ndim > 1 and not n.endswith("_token")]
    no_decay = [p for n, p in student.named_parameters() if p.ndim <= 1 or n.endswith("_token")]
    # pos_embed has ndim 3 and is decayed in DINO as well; tokens and 1-d params are not.
    optimizer = torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "no_decay": True}],
        lr=settings.lr,
    )
    center = torch.zeros(settings.out_dim, device=device)
    return TrainState(settings, student, teacher, optimizer, center, schedule=[[0, settings.steps]])


def train_step(state: TrainState, globals_: Tensor, locals_: Tensor) -> dict[str, float]:
    """One optimisation step at ``state.step``; advances the step. Returns the step's metrics.

    Args:
        globals_: (2B, 3, G, G) from :func:`multi_crop`; locals_: (L*B, 3, l, l).
    Raises:
        FloatingPointError: when the loss is not finite (the run stops loudly).
    """
    s = state.settings
    sched = schedule_at(state.step, s)
    for group in state.optimizer.param_groups:
        group["lr"] = sched.lr
        group["weight_decay"] = 0.0 if group.get("no_decay") else sched.weight_decay
    batch = globals_.shape[0] // 2
    state.student.train()
    with torch.no_grad():
        t_cls, t_logits = state.teacher(globals_)
    s_cls, s_logits = state.student(globals_)
    if len(locals_):
        s_logits = torch.cat([s_logits, state.student(locals_)[1]])
    losses = {"dino": dino_loss(s_logits, t_logits, state.center, s.student_temp, s.teacher_temp)}
    if s.infonce_weight > 0:
        first, second = s_cls[:batch], s_cls[batch:]
        nce = info_nce(first, t_cls[batch:], s.infonce_temp)
        nce = (nce + info_nce(second, t_cls[:batch], s.infonce_temp)) / 2
        losses["infonce"] = s.infonce_weight * nce
    if s.koleo_weight > 0:
        kl = (koleo(s_cls[:batch]) + koleo(s_cls[batch:])) / 2
        losses["koleo"] = s.koleo_weight * kl
    loss = sum(losses.values())
    check_finite(losses, state.step, "pretrain")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.clip_grad > 0:
        nn.utils.clip_grad_norm_(state.student.parameters(), s.clip_grad)
    if sched.freeze_last_layer:
        state.student.head.prototypes.grad = None
    state.optimizer.step()
    ema_update(state.teacher, state.student, sched.teacher_momentum)
    with torch.no_grad():
        probs = F.softmax((t_logits - state.center) / s.teacher_temp, dim=-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
        state.center = updated_center(state.center, t_logits, s.center_momentum)
    state.step += 1
    metrics = {k: float(v.detach()) for k, v in losses.items()}
    metrics.update(loss=float(loss.detach()), lr=sched.lr, teacher_entropy=float(entropy))
    return metrics


def save_checkpoint(path: str | Path, state: TrainState) -> None:
    """Write the full training state to ``path`` atomically (a rolling checkpoint)."""
    write_training_checkpoint(
        path,
        step=state.step,
        settings=dataclasses.asdict(state.settings),
        states={
            "student": state.student.state_dict(),
            "teacher": state.teacher.state_dict(),
            "optimizer": state.optimizer.state_dict(),
            "center": state.center,
        },
        extra={"provenance": provenance(), "schedule": state.schedule},
    )


def load_checkpoint(
    path: str | Path, settings: PretrainSettings, device: str | torch.device = "cpu"
) -> TrainState:
    """Restore a training state saved by :func:`save_checkpoint`.

    The settings must be the saved ones, but ``steps`` may grow: a finished (or interrupted)
    run then continues to the new length, its schedules (learning rate, weight decay, teacher
    momentum) recomputed for the new length from the step it resumes at, so the result is not
    that of a run with the new length from step 0. The lengths a run was trained with are kept
    in the checkpoint (``extra.schedule``: [first step, steps] pairs).
    """
    payload = read_training_checkpoint(path, dataclasses.asdict(settings), may_change=("steps",))
    step, saved_steps = int(payload["step"]), int(payload["settings"]["steps"])
    if settings.steps < step:
        raise CheckpointError(
            f"{path}: {step} steps are done, more than steps {settings.steps}; raise steps to "
            f">= {step}, or delete {path} (or pass --no-resume) to start from step 0"
        )
    schedule = [list(pair) for pair in payload["extra"].get("schedule", [[0, saved_steps]])]
    if settings.steps != saved_steps:
        log.info("%s: continuing at step %d with steps %d (was %d)", path, step, settings.steps,
                 saved_steps)  # fmt: skip
        schedule.append([step, settings.steps])
    state = new_state(settings, device)
    state.schedule = schedule
    state.student.load_state_dict(payload["student"])
    state.teacher.load_state_dict(payload["teacher"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.center = payload["center"].to(device)
    state.step = int(payload["step"])
    return state


def backbone_state_dict(state: TrainState, dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """The teacher's backbone weights with timm keys (``cls_token``, ``blocks.0.attn.qkv...``)."""
    return {
        k: v.detach().to("cpu", dtype).clone()
        for k, v in state.teacher.backbone.state_dict().items()
    }


def export_backbone(path: str | Path, state: TrainState) -> None:
    """Write the teacher backbone as an fp16 timm-keyed state dict, atomically."""
    with atomic_path(path) as tmp:
        torch.save(backbone_state_dict(state), tmp)


def train(
    settings: PretrainSettings,
    views: ViewSource,
    checkpoint: str | Path,
    checkpoint_every: int = 50,
    resume: bool = True,
    stop_after: int | None = None,
    metrics_log: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> TrainState:
    """Train (or resume) until ``settings.steps``; checkpoint every ``checkpoint_every`` steps.

    Args:
        views: the view source (see module docstring).
        checkpoint: the rolling checkpoint; resumed from when it exists and ``resume`` is set.
        stop_after: stop once this step is reached (for tests and time-sliced runs).
        metrics_log: file that receives one JSON line of metrics per checkpoint.
        device: where the networks run (the crops are made on the CPU).
    Returns:
        The final training state (also saved to ``checkpoint``).
    """
    checkpoint = Path(checkpoint)
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, settings, device)
        log.info("resumed from %s at step %d", checkpoint, state.step)
    else:
        state = new_state(settings, device)
    end = settings.steps if stop_after is None else min(stop_after, settings.steps)
    metrics = MetricsLog(metrics_log, start_step=state.step)
    started, window = time.time(), []
    with Progress(end, "pretrain", "steps", initial=state.step) as bar:
        while state.step < end:
            rng, gen = step_generators(settings.seed, state.step)
            torch.manual_seed(int(rng.integers(2**62)))  # anything drawing from the global RNG
            first, second = views(rng, settings.batch_size)
            globals_, locals_ = multi_crop(first, second, settings, gen)
            window.append(train_step(state, globals_.to(device), locals_.to(device)))
            bar.update(1)
            if state.step % checkpoint_every == 0 or state.step == end:
                save_checkpoint(checkpoint, state)
                summary = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                summary.update(step=state.step, minutes=(time.time() - started) / 60)
                log.info("%s", json.dumps(summary))
                metrics.write(summary)
                window = []
    return state
