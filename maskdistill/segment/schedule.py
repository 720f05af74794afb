"""The epoch-based SGD schedule of stage 5 and the linear probe (config ``segment``, ``probe``)."""

from __future__ import annotations

from dataclasses import dataclass

from maskdistill.config import Settings
from maskdistill.training.schedules import step_decay_schedule


@dataclass(frozen=True)
class EpochSchedule(Settings):
    """An epoch-based SGD schedule (config ``segment``, ``probe``).

    Attributes:
        epochs: passes over the training images.
        batch_size: images per step, over all processes.
        lr, momentum, weight_decay: SGD's.
        lr_epochs: the rate is multiplied by ``gamma`` for each of these that the 0-based
            epoch exceeds (the reference's ``epoch > m``: [40] decays from the 42nd epoch).
        gamma: the decay factor.
        clip_grad: gradient-norm clip (0: none).
        amp: mixed precision on CUDA.
        seed: every random draw of the run.
    """

    epochs: int
    batch_size: int
    lr: float
    momentum: float
    weight_decay: float
    lr_epochs: tuple[int, ...]
    gamma: float
    clip_grad: float
    amp: bool
    seed: int

    def steps_per_epoch(self, images: int) -> int:
        """Full batches per epoch (raises ValueError when there is not even one)."""
        steps = images // self.batch_size
        if steps == 0:
            raise ValueError(f"batch size {self.batch_size}: only {images} training images")
        return steps

    def lr_at(self, step: int, steps_per_epoch: int) -> float:
        """The learning rate of step ``step``: multiplied by ``gamma`` for each epoch of
        ``lr_epochs`` that the step's 0-based epoch exceeds (the reference's rule)."""
        epoch = step // steps_per_epoch
        return step_decay_schedule(epoch, self.lr, self.lr_epochs, self.gamma, after=True)
