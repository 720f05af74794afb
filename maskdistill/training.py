"""What every training stage shares: the resumable loop (:func:`fit`), checkpoints, schedules,
EMA, metrics logs, seeding.

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

import abc
import contextlib
import hashlib
import json
import logging
import math
import random
import re
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from maskdistill.distributed import World, unwrap, wrap
from maskdistill.io import atomic_path, read_json_lines
from maskdistill.progress import Progress
from maskdistill.runtime import autocast, loader_workers, training_precision

log = logging.getLogger(__name__)


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


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generators seeded by ``seed``, restoring them after.

    For building a network: its random initialisation is then a function of the seed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


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
    start_over = f"delete {path} to start from step 0 (a command run by hand can pass --no-resume)"
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


RESUME_MANIFEST = ".maskdistill-resume.json"
"""The file in a resume folder that lists what maskdistill wrote there (all it ever removes)."""


def resume_files(
    folder: str | Path, settings: Mapping[str, Any], main: bool = True
) -> tuple[Path, Path]:
    """The checkpoint and metrics log of a run with ``settings`` in a run's resume folder.

    Their names hold a content key of ``settings`` (which include a digest of the training
    data), so that a rerun after a kill resumes while a rerun after a change of settings or
    data starts over. The files of earlier runs with other settings are removed (by the
    ``main`` process only, with a log line), but only those the folder's manifest
    (:data:`RESUME_MANIFEST`) lists as written by maskdistill: a folder of the user's loses
    nothing. ``checkpoint-<key>/`` (the detectron2 backend's own folder) counts as the run's.
    """
    folder = Path(folder)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    checkpoint, metrics = folder / f"checkpoint-{key}.pth", folder / f"metrics-{key}.jsonl"
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        current = {checkpoint.name, metrics.name, checkpoint.stem}
        for name in sorted(_manifest(folder) - current):
            path = folder / name
            if path.exists():
                log.info("removing %s: made with other settings or data; starting over", path)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        with atomic_path(folder / RESUME_MANIFEST) as tmp:
            tmp.write_text(json.dumps(sorted(current)) + "\n")
    return checkpoint, metrics


def remove_resume_files(folder: str | Path) -> None:
    """Remove what the manifest of a resume folder lists, the manifest, and the folder when it
    is then empty (a finished run's checkpoints are no longer needed)."""
    folder = Path(folder)
    for name in sorted(_manifest(folder)):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (folder / RESUME_MANIFEST).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _manifest(folder: Path) -> set[str]:
    """The names a resume folder's manifest lists; only plain names of that folder count."""
    path = folder / RESUME_MANIFEST
    if not path.is_file():
        return set()
    try:
        names = json.loads(path.read_text())
    except ValueError:
        return set()
    pattern = re.compile(r"^(checkpoint|metrics)-[0-9a-f]{12}(\.pth|\.jsonl)?$")
    return (
        {n for n in names if isinstance(n, str) and pattern.match(n)}
        if isinstance(names, list)
        else set()
    )


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


def check_finite(losses: Mapping[str, torch.Tensor], step: int, stage: str) -> None:
    """Raise FloatingPointError naming the step and the terms when a loss is not finite."""
    bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v).all()}
    if bad:
        raise FloatingPointError(
            f"{stage}: loss is not finite at step {step} ({bad}); lower the learning rate or "
            "check the training data"
        )


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


def run_steps(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[int, Any]],
    loss_fn: Callable[[nn.Module, Any], Mapping[str, torch.Tensor]],
    *,
    lr_at: Callable[[int], float],
    stop: int,
    start: int,
    save: Callable[[int], None],
    checkpoint_every: int,
    metrics: MetricsLog,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    precision: str,
    clip_grad: float,
    seed: int,
    rank: int = 0,
    stage: str = "train",
    progress: bool = True,
) -> None:
    """The training loop shared by the stages: one optimiser step per ``(step, batch)``.

    Each step seeds the global generators by (seed, step, rank), sets the learning rate
    ``lr_at(step)``, computes ``loss_fn(model, batch)`` (a dict of loss terms, summed) under
    autocast, stops with FloatingPointError on a non-finite loss, steps the optimiser through
    ``scaler`` (gradients clipped to norm ``clip_grad`` when > 0), writes one metrics record
    (``step`` = steps done) and calls ``save(steps_done)`` every ``checkpoint_every`` steps and
    at ``stop``. Only rank 0 logs, shows progress and saves.
    """
    main = rank == 0
    started = time.monotonic()
    with Progress(stop, stage, "steps", initial=start, enabled=progress and main) as bar:
        for step, batch in batches:
            seed_step(seed, step, rank)
            lr = lr_at(step)
            set_learning_rate(optimizer, lr)
            with autocast(device, precision):
                losses = dict(loss_fn(model, batch))
            total = sum(losses.values())
            check_finite({**losses, "loss": total}, step, stage)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(total).backward()
            if clip_grad > 0:
                scaler.unscale_(optimizer)
                nn.utils.clip_grad_norm_(
                    [p for g in optimizer.param_groups for p in g["params"]], clip_grad
                )
            scaler.step(optimizer)
            scaler.update()
            done = step + 1
            if main:
                record = {"step": done, "loss": float(total.detach()), "lr": lr}
                record.update({k: float(v.detach()) for k, v in losses.items()})
                record["seconds"] = round(time.monotonic() - started, 3)
                metrics.write(record)
                if done % checkpoint_every == 0 or done == stop:
                    save(done)
            bar.update()


@dataclass(frozen=True)
class TrainingRun:
    """Where a training job keeps its state and how it runs (nothing here changes the weights).

    Attributes:
        run_settings: everything that decides the result (stored in the checkpoint; a resume
            with other settings is refused).
        checkpoint: the rolling checkpoint file (resumed from when it exists and ``resume``).
        checkpoint_every: steps between checkpoints.
        resume: continue from ``checkpoint`` when it exists.
        metrics_log: JSON lines, one per step, written by the main process.
        device: where the network trains.
        world: the DDP processes (one: no DDP).
        workers: DataLoader processes loading images.
        progress: show a progress bar.
        stop_after: stop (with a checkpoint) once this many steps are done, for time-sliced
            runs; the schedule stays that of the whole run.
    """

    run_settings: Mapping[str, Any]
    checkpoint: Path
    checkpoint_every: int
    resume: bool
    metrics_log: Path | None
    device: torch.device
    world: World
    workers: int = 0
    progress: bool = True
    stop_after: int | None = None


class StepSampler(abc.ABC):
    """A DataLoader batch sampler over the steps ``start`` .. ``stop - 1`` of a training run.

    Subclasses define :meth:`steps`; each batch is a list of keys (image index, step), so that a
    dataset can draw the augmentation of an image from generators seeded by its step.
    """

    start: int
    stop: int

    @abc.abstractmethod
    def steps(self) -> Iterator[tuple[int, list[int]]]:
        """(step, this process's image indices) for the steps ``start`` .. ``stop - 1``."""

    def __iter__(self) -> Iterator[list[tuple[int, int]]]:
        for step, indices in self.steps():
            yield [(index, step) for index in indices]

    def __len__(self) -> int:
        return self.stop - self.start


def fit(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    dataset: Dataset,
    *,
    sampler: Callable[[int, int], StepSampler],
    total_steps: int,
    to_device: Callable[[list, torch.device], Any],
    loss_fn: Callable[[nn.Module, Any], Mapping[str, torch.Tensor]],
    lr_at: Callable[[int], float],
    amp: bool,
    clip_grad: float,
    seed: int,
    stage: str,
    run: TrainingRun,
    sync_batchnorm: bool = False,
) -> nn.Module:
    """Train ``model`` for ``total_steps`` steps, resuming from ``checkpoint``; return it trained.

    The one resumable training job of the stages (stage 3, stage 5, the linear probe): resume
    (network, optimiser, gradient scaler and RNG states; refused when ``run_settings`` differ),
    DDP over ``world``, the data loader, :func:`run_steps`, and a full checkpoint every
    ``checkpoint_every`` steps and at the end. A stage supplies what differs: its dataset and
    ``sampler(start, stop)``, ``to_device(samples, device)`` (a batch for ``loss_fn``), its loss
    and its learning rate ``lr_at(step)``.

    Args:
        run: where the job keeps its state and how it runs.
        sync_batchnorm: batch-norm statistics over all processes (DeepLab's BatchNorm).
    """
    device, world, checkpoint = run.device, run.world, Path(run.checkpoint)
    precision = training_precision(device, amp)
    scaler = torch.amp.GradScaler(device.type, enabled=precision != "fp32")
    start = 0
    if run.resume and checkpoint.exists():
        payload = load_checkpoint(checkpoint, run.run_settings)
        model.load_state_dict(payload["model"])
        optimizer.load_state_dict(payload["optimizer"])
        scaler.load_state_dict(payload["scaler"])
        restore_rng(payload)
        start = int(payload["step"])
        log.info("resumed from %s at step %d", checkpoint, start)
    stop = total_steps if run.stop_after is None else min(run.stop_after, total_steps)
    if sync_batchnorm and world.size > 1:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    ddp_model = wrap(model, world, device)
    ddp_model.train()
    steps = sampler(start, stop)
    loader = DataLoader(
        dataset, batch_sampler=steps, num_workers=loader_workers(run.workers), collate_fn=list
    )
    batches = (
        (step, to_device(samples, device))
        for (step, _), samples in zip(steps.steps(), loader, strict=True)
    )

    def save(done: int) -> None:
        states = {"model": unwrap(ddp_model).state_dict(), "optimizer": optimizer.state_dict()}
        states["scaler"] = scaler.state_dict()
        save_checkpoint(checkpoint, step=done, settings=run.run_settings, states=states)

    run_steps(
        ddp_model,
        optimizer,
        batches,
        loss_fn,
        lr_at=lr_at,
        stop=stop,
        start=start,
        save=save,
        checkpoint_every=run.checkpoint_every,
        metrics=MetricsLog(run.metrics_log if world.main else None, start_step=start),
        scaler=scaler,
        device=device,
        precision=precision,
        clip_grad=clip_grad,
        seed=seed,
        rank=world.rank,
        stage=stage,
        progress=run.progress,
    )
    return unwrap(ddp_model)


def save_state(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    settings: Mapping[str, Any],
    extra: Mapping[str, Any],
) -> None:
    """Write a trained network for the next stages: ``model`` (the state dict), ``settings``
    (everything needed to build it again) and ``extra`` (provenance), atomically."""
    payload = {"model": dict(state_dict), "settings": dict(settings), "extra": dict(extra)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_weights(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_state` (weights only: nothing else is unpickled)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(f"{path}: not a readable maskdistill model ({error})") from error
    if not isinstance(payload, dict) or not {"model", "settings"} <= set(payload):
        raise ValueError(f"{path}: not a maskdistill model file (no 'model' and 'settings')")
    return payload


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
            kept = [r for r in read_json_lines(self.path) if r.get(key, 0) <= start_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (it should hold the steps done under ``key``)."""
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(dict(record)) + "\n")
