"""Stage 5 samples: images with their label maps, augmented as the reference does.

Training augmentation (docs/method.md, stage 5), as the reference's ``ScaleNRotate`` and
``FixedResize``: a horizontal flip (p 0.5), then one affine transform about the image centre
with a scale drawn from ``scale_range`` and a rotation from +- ``rotation`` degrees (image
bicubic, labels nearest; pixels brought in from outside the image are 0 in both, so they are
background in the labels and trained on), then a resize to ``size`` x ``size`` (image bicubic
without antialiasing, labels nearest), normalisation with the backbone's statistics; the image
is clamped to [0, 1] after each bicubic step, as the reference's 8-bit images saturate. Every
draw comes from a generator seeded by (seed, step, image). At prediction time the image is
resized (bicubic) and normalised.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image
from torchvision.transforms import InterpolationMode

from maskdistill.config import Settings
from maskdistill.data.base import ImageRecord
from maskdistill.images import load_image
from maskdistill.loader import image_tensor
from maskdistill.masks import label_png_path, read_label_png
from maskdistill.models.norm import Normalization

BACKGROUND = 0  # the label of pixels brought in from outside the image (the reference's fill)


@dataclass(frozen=True)
class Augmentation(Settings):
    """Training augmentation settings (config ``segment``)."""

    size: int  # pixels, the side of the square network input (reference 512)
    scale_range: tuple[float, float]  # reference (0.75, 1.25)
    rotation: float  # degrees, reference 5
    flip: bool


@dataclass(frozen=True)
class LabelledImage:
    """A training image and its label map (a PNG of labels, ``IGNORE`` not scored)."""

    file_name: str
    image: Path
    labels: Path


def labelled_images(
    records: Iterable[ImageRecord], label_folders: Sequence[str | Path]
) -> tuple[list[LabelledImage], list[str]]:
    """The records that have a label PNG in one of ``label_folders``, and those that have none."""
    found, missing = [], []
    for record in records:
        paths = [label_png_path(folder, record.file_name) for folder in label_folders]
        existing = [path for path in paths if path.is_file()]
        if existing:
            found.append(LabelledImage(record.file_name, record.path, existing[0]))
        else:
            missing.append(record.file_name)
    return found, missing


def _bicubic_resize(image: torch.Tensor, size: int) -> torch.Tensor:
    """(3, H, W) in [0, 1] -> (3, size, size), bicubic without antialiasing, clamped to [0, 1]."""
    resized = TF.resize(image, [size, size], InterpolationMode.BICUBIC, antialias=False)
    return resized.clamp_(0.0, 1.0)


def network_input(image: np.ndarray, size: int, norm: Normalization) -> torch.Tensor:
    """(H, W, 3) uint8 -> (3, size, size) resized (bicubic) and normalised."""
    return TF.normalize(_bicubic_resize(image_tensor(image), size), list(norm.mean), list(norm.std))


def augment(
    image: np.ndarray,
    labels: np.ndarray,
    settings: Augmentation,
    rng: np.random.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Flip, scale and rotate, resize (module doc).

    Args:
        image: (H, W, 3) uint8 RGB.
        labels: (H, W) uint8 label map.

    Returns:
        (3, size, size) float32 in [0, 1] and (size, size) uint8 labels.
    """
    pil_image, pil_labels = Image.fromarray(image), Image.fromarray(labels)
    if settings.flip and rng.random() < 0.5:
        pil_image, pil_labels = TF.horizontal_flip(pil_image), TF.horizontal_flip(pil_labels)
    scale = float(rng.uniform(*settings.scale_range))
    angle = float(rng.uniform(-settings.rotation, settings.rotation))
    # on 8-bit images (PIL), as the reference's OpenCV: bicubic values saturate at 0 and 255
    common = {"angle": angle, "translate": [0, 0], "scale": scale, "shear": [0.0, 0.0]}
    pil_image = TF.affine(pil_image, interpolation=InterpolationMode.BICUBIC, fill=0, **common)
    pil_labels = TF.affine(
        pil_labels, interpolation=InterpolationMode.NEAREST, fill=BACKGROUND, **common
    )
    resized = _bicubic_resize(image_tensor(np.array(pil_image)), settings.size)
    size = [settings.size, settings.size]
    label_map = TF.resize(
        torch.from_numpy(np.array(pil_labels))[None], size, InterpolationMode.NEAREST
    )[0]
    return resized, label_map


class SegmentationDataset(torch.utils.data.Dataset):
    """Augmented training samples keyed by (image index, step)."""

    def __init__(
        self,
        items: Sequence[LabelledImage],
        settings: Augmentation,
        norm: Normalization,
        seed: int,
    ) -> None:
        self.items = list(items)
        self.settings = settings
        self.norm = norm
        self.seed = seed

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """(3, size, size) normalised image and (size, size) int64 labels."""
        index, step = key
        item = self.items[index]
        image = load_image(item.image)
        labels = read_label_png(item.labels)
        if labels.shape != image.shape[:2]:
            raise ValueError(
                f"{item.labels}: label map {labels.shape} does not fit its image "
                f"{item.image} {image.shape[:2]}"
            )
        rng = np.random.default_rng([self.seed, step, index])
        tensor, label_map = augment(image, labels, self.settings, rng)
        tensor = TF.normalize(tensor, list(self.norm.mean), list(self.norm.std))
        return tensor, label_map.long()


def epoch_order(count: int, batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: a (seed, epoch) permutation cut into full batches (the rest dropped)."""
    order = np.random.default_rng([seed, epoch]).permutation(count).tolist()
    return [order[i : i + batch_size] for i in range(0, count - batch_size + 1, batch_size)]
