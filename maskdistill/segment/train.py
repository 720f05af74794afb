"""Training DeepLab-v3 on label maps (stage 5) and the linear probe: epochs, resumable, DDP.

Both run on :func:`maskdistill.training.loop.run_steps`: an epoch is a (seed, epoch) permutation of
the images cut into full batches; the learning rate is multiplied by ``gamma`` at the epochs
``lr_epochs``; SGD with momentum and weight decay on every trained parameter. Stage 5 uses the
hard-pixel-mining cross-entropy; the probe trains only a new last 1 x 1 convolution with plain
cross-entropy on ground-truth labels, the rest of the network frozen in evaluation mode. The
final model is the result: no epoch is picked by its validation score.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import nn

from maskdistill.distributed import World
from maskdistill.masks import IGNORE
from maskdistill.segment.data import SegmentationDataset, epoch_order
from maskdistill.segment.loss import ohem_cross_entropy
from maskdistill.segment.schedule import EpochSchedule
from maskdistill.training.loop import StepSampler, TrainingRun, fit
from maskdistill.training.schedules import parameter_groups


class EpochSampler(StepSampler):
    """Each step's images: the epoch's shuffled order (:func:`epoch_order`) cut into batches, this
    process's share of the global batch."""

    def __init__(
        self, count: int, schedule: EpochSchedule, world: World, start: int, stop: int
    ) -> None:
        self.count, self.schedule, self.world = count, schedule, world
        self.start, self.stop = start, stop
        self.per_epoch = schedule.steps_per_epoch(count)

    def steps(self) -> Iterator[tuple[int, list[int]]]:
        s = self.schedule
        for epoch in range(self.start // self.per_epoch, s.epochs):
            for i, batch in enumerate(epoch_order(self.count, s.batch_size, s.seed, epoch)):
                step = epoch * self.per_epoch + i
                if self.start <= step < self.stop:
                    yield step, self.world.share(batch)


def _on_device(samples: list, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    images = torch.stack([image for image, _ in samples]).to(device, non_blocking=True)
    labels = torch.stack([labels for _, labels in samples]).to(device, non_blocking=True)
    return images, labels


def segmentation_loss(model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
    """Stage 5's loss: hard-pixel-mining cross-entropy of the logits."""
    images, labels = batch
    return {"ohem": ohem_cross_entropy(model(images)["out"], labels)}


def probe_loss(model: nn.Module, batch: tuple) -> dict[str, torch.Tensor]:
    """The linear probe's loss: cross-entropy over the valid pixels."""
    images, labels = batch
    logits = model(images)["out"]
    return {"cross_entropy": F.cross_entropy(logits, labels, ignore_index=IGNORE)}


def train_epochs(
    model: nn.Module,
    dataset: SegmentationDataset,
    schedule: EpochSchedule,
    run: TrainingRun,
    *,
    loss: str,
) -> nn.Module:
    """Train (or resume) ``model`` for ``schedule.epochs`` epochs; return the trained network.

    Args:
        model: the network on ``run.device``; only its parameters with ``requires_grad`` train.
        schedule: the epochs, batch and learning rate.
        run: where the job keeps its state and how it runs.
        loss: ``segment`` (hard pixel mining) or ``probe`` (cross-entropy).
    """
    optimizer = torch.optim.SGD(
        parameter_groups(model, schedule.weight_decay), lr=schedule.lr, momentum=schedule.momentum
    )
    per_epoch = schedule.steps_per_epoch(len(dataset))
    return fit(
        model,
        optimizer,
        dataset,
        sampler=lambda start, stop: EpochSampler(len(dataset), schedule, run.world, start, stop),
        total_steps=per_epoch * schedule.epochs,
        to_device=_on_device,
        loss_fn={"segment": segmentation_loss, "probe": probe_loss}[loss],
        lr_at=lambda step: schedule.lr_at(step, per_epoch),
        amp=schedule.amp,
        clip_grad=schedule.clip_grad,
        seed=schedule.seed,
        stage=loss,
        run=run,
        sync_batchnorm=True,
    )
