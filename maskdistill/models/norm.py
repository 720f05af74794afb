"""The input normalisation each weight source was trained with (mean and std per RGB channel)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Normalization:
    """Per-channel mean and std of images in [0, 1], RGB order: x -> (x - mean) / std."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = Normalization(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))
"""ImageNet statistics: DINO ViTs and ResNets, MoCo v2, torchvision's ImageNet weights."""
