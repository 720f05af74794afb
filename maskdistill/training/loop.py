"""The resumable training loop every training stage runs (:func:`fit` over :func:`run_steps`).

Reproducibility contract: every random draw of step ``s`` comes from generators seeded by
``(seed, s)`` (:mod:`maskdistill.training.rng`) and every schedule is a pure function of ``s``,
so a run resumed from the checkpoint of step ``s`` continues exactly as the uninterrupted run
would have (on the CPU, bit for bit).
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from maskdistill.distributed import World, unwrap, wrap
from maskdistill.progress import Progress
from maskdistill.runtime import autocast, loader_workers, training_precision
from maskdistill.training.checkpoints import load_checkpoint, restore_rng, save_checkpoint
from maskdistill.training.metrics_log import MetricsLog
from maskdistill.training.rng import seed_step
from maskdistill.training.schedules import set_learning_rate

log = logging.getLogger(__name__)


def check_finite(losses: Mapping[str, torch.Tensor], step: int, stage: str) -> None:
    """Raise FloatingPointError naming the step and the terms when a loss is not finite."""
    bad = {k: float(v) for k, v in losses.items() if not torch.isfinite(v).all()}
    if bad:
        raise FloatingPointError(
            f"{stage}: loss is not finite at step {step} ({bad}); lower the learning rate or "
            "check the training data"
        )


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
