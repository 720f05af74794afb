"""Training Mask R-CNN on the pseudo ground truth: iteration-based, resumable, data-parallel.

The recipe is detectron2's for R50-FPN: SGD with momentum, weight decay (none on the norm
layers), a linear warm-up, the learning rate divided by 10 at given fractions of training, and
the linear scaling rule: ``lr`` is the rate of a total batch of 16 images, the run uses
``lr * batch_size / 16``. Mixed precision on CUDA. Every ``checkpoint_every`` iterations the
rolling checkpoint (network, optimiser, gradient scaler, iteration, RNG states) is rewritten;
a rerun resumes from it.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch

from maskdistill.config import Settings
from maskdistill.distill.data import DistillDataset, step_batches
from maskdistill.distributed import World
from maskdistill.training.loop import StepSampler, TrainingRun, fit
from maskdistill.training.schedules import parameter_groups, step_decay_schedule

REFERENCE_BATCH = 16  # ``lr`` is the learning rate of this total batch (detectron2's)


@dataclass(frozen=True)
class DistillTrainSettings(Settings):
    """The training schedule (config ``distill``; docs/method.md, stage 3).

    Attributes:
        iterations: optimiser steps.
        batch_size: images per step, over all processes.
        lr: learning rate for a batch of 16 (scaled linearly to ``batch_size``).
        momentum, weight_decay: SGD's (no weight decay on norm layers).
        warmup_iterations, warmup_factor: linear warm-up from ``warmup_factor`` x lr.
        lr_steps: fractions of ``iterations`` after which the rate is multiplied by ``gamma``.
        gamma: the decay factor.
        clip_grad: gradient-norm clip (0: none).
        flip: horizontal-flip augmentation.
        amp: mixed precision on CUDA.
        seed: every random draw of the run.
    """

    iterations: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    warmup_iterations: int
    warmup_factor: float
    lr_steps: tuple[float, ...]
    gamma: float
    clip_grad: float
    flip: bool
    amp: bool
    seed: int

    @property
    def scaled_lr(self) -> float:
        """The learning rate of this run's total batch."""
        return self.lr * self.batch_size / REFERENCE_BATCH

    @property
    def milestones(self) -> list[int]:
        """Iterations after which the rate decays."""
        return [round(f * self.iterations) for f in self.lr_steps]

    def lr_at(self, step: int) -> float:
        """The learning rate of iteration ``step``."""
        return step_decay_schedule(
            step,
            self.scaled_lr,
            self.milestones,
            self.gamma,
            self.warmup_iterations,
            self.warmup_factor,
        )


class DistillSampler(StepSampler):
    """Each step's images: one orientation group per step (:func:`step_batches`), this process's
    share of the global batch."""

    def __init__(
        self,
        dataset: DistillDataset,
        settings: DistillTrainSettings,
        world: World,
        start: int,
        stop: int,
    ) -> None:
        self.groups = [image.landscape for image in dataset.images]
        self.settings, self.world, self.start, self.stop = settings, world, start, stop

    def steps(self) -> Iterator[tuple[int, list[int]]]:
        s = self.settings
        for step, batch in step_batches(self.groups, s.batch_size, s.seed, self.start, self.stop):
            yield step, self.world.share(batch)


def _detection_losses(model: torch.nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
    """Mask R-CNN's five losses of one batch (images and targets on the model's device)."""
    images, targets = batch
    return model(images, targets)


def _on_device(samples: list, device: torch.device) -> tuple[list, list]:
    images = [image.to(device, non_blocking=True) for image, _ in samples]
    targets = [{k: v.to(device, non_blocking=True) for k, v in t.items()} for _, t in samples]
    return images, targets


def train_maskrcnn(
    model: torch.nn.Module,
    dataset: DistillDataset,
    settings: DistillTrainSettings,
    run: TrainingRun,
) -> torch.nn.Module:
    """Train (or resume) ``model`` to ``settings.iterations``; return the trained network.

    Args:
        model: the Mask R-CNN, on ``run.device``.
        dataset: the training samples.
        settings: the schedule.
        run: where the job keeps its state and how it runs.
    """
    optimizer = torch.optim.SGD(
        parameter_groups(model, settings.weight_decay, norm_decay=0.0),
        lr=settings.scaled_lr,
        momentum=settings.momentum,
    )
    return fit(
        model,
        optimizer,
        dataset,
        sampler=lambda start, stop: DistillSampler(dataset, settings, run.world, start, stop),
        total_steps=settings.iterations,
        to_device=_on_device,
        loss_fn=_detection_losses,
        lr_at=settings.lr_at,
        amp=settings.amp,
        clip_grad=settings.clip_grad,
        seed=settings.seed,
        stage="distill",
        run=run,
    )
