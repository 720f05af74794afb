"""DINO multi-crop augmentation on tensors, every draw from the step's torch generator."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor

from maskdistill.loader import image_tensor
from maskdistill.models.norm import IMAGENET
from maskdistill.pretrain.settings import PretrainSettings


def random_resized_crop_box(
    gen: torch.Generator, height: int, width: int, scale: tuple[float, float]
) -> tuple[int, int, int, int]:
    """A crop (top, left, h, w) of area fraction in ``scale`` and aspect ratio in [3/4, 4/3].

    Falls back to the largest centred crop of aspect ratio 1 after 10 rejected draws (as
    torchvision's RandomResizedCrop does).
    """
    area = height * width
    log_ratio = (math.log(3 / 4), math.log(4 / 3))
    for _ in range(10):
        u = torch.rand(4, generator=gen).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u[0])
        ratio = math.exp(log_ratio[0] + (log_ratio[1] - log_ratio[0]) * u[1])
        w = round(math.sqrt(target * ratio))
        h = round(math.sqrt(target / ratio))
        if 0 < w <= width and 0 < h <= height:
            top = int(u[2] * (height - h + 1))
            left = int(u[3] * (width - w + 1))
            return top, left, h, w
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def augment(
    image: Tensor,
    size: int,
    scale: tuple[float, float],
    settings: PretrainSettings,
    gen: torch.Generator,
) -> Tensor:
    """One DINO crop of ``image`` (3, H, W) in [0, 1] -> (3, size, size), ImageNet-normalised.

    Random resized crop, horizontal flip (p 0.5), colour jitter (p 0.8; brightness, contrast,
    saturation, hue in random order as torchvision's ColorJitter).
    """
    top, left, h, w = random_resized_crop_box(gen, image.shape[1], image.shape[2], scale)
    crop = TF.resized_crop(image, top, left, h, w, [size, size], antialias=True)
    u = torch.rand(7, generator=gen)
    if u[0] < 0.5:
        crop = TF.horizontal_flip(crop)
    if u[1] < 0.8:
        jitters = [
            (TF.adjust_brightness, settings.brightness, 1.0),
            (TF.adjust_contrast, settings.contrast, 1.0),
            (TF.adjust_saturation, settings.saturation, 1.0),
            (TF.adjust_hue, settings.hue, 0.0),
        ]
        for index in torch.randperm(4, generator=gen).tolist():
            fn, strength, neutral = jitters[index]
            if strength > 0:
                factor = neutral + strength * (2.0 * float(u[2 + index]) - 1.0)
                crop = fn(crop, factor)
        crop = crop.clamp_(0.0, 1.0)
    return TF.normalize(crop, list(IMAGENET.mean), list(IMAGENET.std))


def multi_crop(
    first: Sequence[np.ndarray],
    second: Sequence[np.ndarray],
    settings: PretrainSettings,
    gen: torch.Generator,
) -> tuple[Tensor, Tensor]:
    """The crops of one batch of B scenes.

    Args:
        first, second: B images (H, W, 3) uint8 each; global crop 0 of scene i comes from
            ``first[i]``, global crop 1 from ``second[i]``, local crops from either at random.
    Returns:
        globals (2B, 3, G, G): all scenes' crop 0, then all scenes' crop 1;
        locals (L*B, 3, l, l): local crop j of every scene in block j (empty when L = 0).
    """
    if len(first) != len(second):
        raise ValueError(f"view source returned {len(first)} and {len(second)} images")
    a = [image_tensor(x) for x in first]
    b = [image_tensor(x) for x in second]
    g, gs = settings.global_size, settings.global_scale
    global_crops = [augment(x, g, gs, settings, gen) for x in a]
    global_crops += [augment(x, g, gs, settings, gen) for x in b]
    local_crops = []
    for _ in range(settings.num_local):
        pick = torch.rand(len(a), generator=gen).tolist()
        for i in range(len(a)):
            source = a[i] if pick[i] < 0.5 else b[i]
            local_crops.append(
                augment(source, settings.local_size, settings.local_scale, settings, gen)
            )
    l_size = settings.local_size
    locals_ = torch.stack(local_crops) if local_crops else torch.empty(0, 3, l_size, l_size)
    return torch.stack(global_crops), locals_
