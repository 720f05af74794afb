"""The input normalisation each weight source was trained with (mean and std per RGB channel)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of images in [0, 1], RGB order: x -> (x - mean) / std."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def describe(self) -> dict[str, list[float]]:
        """The statistics as a model file stores them (``mean`` and ``std`` lists)."""
        return {"mean": list(self.mean), "std": list(self.std)}

    @classmethod
    def from_description(cls, description: Mapping[str, Any]) -> Normalization:
        """The statistics of :meth:`describe`'s mapping (other keys are ignored)."""
        return cls(mean=tuple(description["mean"]), std=tuple(description["std"]))


IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
"""ImageNet statistics: DINO ViTs and ResNets, MoCo v2, torchvision's ImageNet weights."""
