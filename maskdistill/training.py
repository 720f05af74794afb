"""What every training stage shares: checkpoints, resume, schedules, EMA, metrics logs, seeding.

Reproducibility contract of the training loops built on this module: every random draw of step
``s`` comes from generators seeded by ``(seed, s)`` (:func:`step_generators`, :func:`seed_step`)
and every schedule is a pure function of ``s``, so a run resumed from the checkpoint of step
``s`` continues exactly as the uninterrupted run would have (on the CPU, bit for bit).

A checkpoint is one ``torch.save`` dict written atomically: ``step`` (the next step to run),
``settings`` (everything that decides the result; resuming with other settings is refused),
``rng`` (the global RNG states), the state dicts of the networks and optimizer, and ``extra``
(provenance). It loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from maskdistill.io import atomic_path


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and the way out."""


# ------------------------------------------------------------------ random number generators


def step_generators(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one step (a pure function of seed and step)."""
    rng = np.random.default_rng([seed, step])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, gen


def seed_step(seed: int, step: int, rank: int = 0) -> None:
    """Seed torch's global generators (CPU and CUDA) for step ``step`` of process ``rank``.

    For the randomness that happens inside library code (dropout, Mask R-CNN's proposal
    sampling and scale choice), which draws from the global generators.
    """
    torch.manual_seed(int(np.random.default_rng([seed, step, 1, rank]).integers(2**62)))


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy, Python) as tensors and plain types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------ checkpoints


def save_checkpoint(
    path: str | Path,
    *,
    step: int,
    settings: Mapping[str, Any],
    states: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a training checkpoint atomically (a rolling file: the previous one is replaced).

    Args:
        step: the next step to run.
        settings: the run's settings (JSON-like values).
        states: state dicts by name (``model``, ``optimizer``, ``scaler``, ...) or tensors.
        extra: anything else to keep (provenance).
    """
    payload = {
        "step": int(step),
        "settings": dict(settings),
        "rng": rng_state(),
        **dict(states),
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(
    path: str | Path,
    settings: Mapping[str, Any],
    *,
    may_change: Iterable[str] = (),
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` for a run with ``settings``.

    Args:
        may_change: settings whose saved value may differ (the caller decides what a change
            means, e.g. more steps continue a finished run).

    Raises:
        CheckpointError: the file is not a readable checkpoint, or was made with other settings;
            the message names the file, the settings that differ and how to start over.
    """
    path = Path(path)
    start_over = f"delete {path} (or pass --no-resume) to start from step 0"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: not a readable training checkpoint ({type(error).__name__}: {error}); "
            f"{start_over}"
        ) from error
    if not isinstance(payload, dict) or not {"step", "settings"} <= set(payload):
        raise CheckpointError(f"{path}: not a maskdistill training checkpoint; {start_over}")
    saved, now = _jsonable(payload["settings"]), _jsonable(dict(settings))
    changed = set(may_change)
    differ = {
        key: (saved.get(key), now.get(key))
        for key in sorted(set(saved) | set(now))
        if key not in changed and saved.get(key) != now.get(key)
    }
    if differ:
        listing = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise CheckpointError(
            f"{path}: the checkpoint was made with other settings ({listing}); {start_over}, "
            "or change the settings back"
        )
    return payload


def restore_rng(payload: Mapping[str, Any]) -> None:
    """Restore the RNG states a checkpoint holds."""
    set_rng_state(payload["rng"])


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings with tuples turned into lists, so that saved and current compare equal."""
    return json.loads(json.dumps(values))


# ------------------------------------------------------------------ schedules and EMA


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
) -> float:
    """``base`` x ``gamma`` ^ (milestones passed), after a linear warm-up.

    The warm-up (detectron2's ``WarmupMultiStepLR``, method linear) scales the rate by
    ``warmup_factor`` at step 0, rising linearly to 1 at ``warmup_steps``. ``step`` may count
    iterations or epochs, as long as the milestones count the same.
    """
    factor = 1.0
    if step < warmup_steps:
        alpha = step / warmup_steps
        factor = warmup_factor * (1 - alpha) + alpha
    passed = sum(step >= m for m in milestones)
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


def check_finite(losses: Mapping[str, torch.Tensor], step: int, stage: str) -> None:
    """Raise FloatingPointError naming the step and the terms when a loss is not finite."""
    bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v).all()}
    if bad:
        raise FloatingPointError(
            f"{stage}: loss is not finite at step {step} ({bad}); lower the learning rate or "
            "check the training data"
        )


# ------------------------------------------------------------------ metrics log


class MetricsLog:
    """A JSON-lines file of training metrics, one object per step or epoch, appended.

    Each record holds, under ``key``, the number of steps (or epochs) done when it was written.
    Opened for a run that resumes with ``start_step`` steps done, it first drops the records of
    later steps (written after the checkpoint the run resumes from), so the file never holds a
    step twice.
    """

    def __init__(self, path: str | Path | None, start_step: int = 0, key: str = "step") -> None:
        self.path = None if path is None else Path(path)
        self.key = key
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = [r for r in read_metrics(self.path) if r.get(key, 0) <= start_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (it should hold the steps done under ``key``)."""
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(dict(record)) + "\n")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics log (an empty list for a missing file)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from error
    return records
