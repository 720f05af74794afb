"""ResNet backbones for Mask R-CNN (stage 3) and DeepLab-v3 (stage 5), and their initial weights.

A weight spec (config ``distill.init`` / ``segment.init``) is one of:

- ``none``: random initialisation (train from scratch);
- ``torchvision:<WEIGHTS>``: torchvision's weights for the architecture by enum name, e.g.
  ``torchvision:IMAGENET1K_V1`` (downloaded into the torch hub cache);
- ``timm:<name>``: a timm ResNet, e.g. ``timm:resnet50.a1_in1k`` (downloaded from the hub);
- a file, recognised by its keys:
  - MoCo v1/v2 (``state_dict`` with ``module.encoder_q.*``; the query encoder is used) and
    MoCo v3 (``module.base_encoder.*``; the base encoder, as the reference's loader),
  - DINO (the release's plain ResNet-50 state dict, or a training checkpoint with
    ``teacher`` / ``student`` and ``module.backbone.*`` / ``backbone.*`` keys; the teacher),
  - a torchvision or timm ResNet state dict, possibly wrapped in ``state_dict`` or ``model`` and
    with DDP's ``module.`` prefix.

Every source is filtered to torchvision key names and loaded strictly; only the classifier
``fc.*`` may be missing (the stages replace it). Each source knows the normalisation its
weights were trained with (all of these use ImageNet's; timm's come from its config).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from maskdistill.models.checkpoint import download, load_strict, read_checkpoint, unwrap
from maskdistill.models.norm import IMAGENET, Normalization
from maskdistill.models.specs import looks_like_path

ARCHITECTURES = ("resnet18", "resnet34", "resnet50", "resnet101")
# MoCo v1/v2: the query encoder; MoCo v3: the base encoder (not the momentum encoder)
_MOCO_PREFIXES = ("module.encoder_q.", "encoder_q.", "module.base_encoder.", "base_encoder.")
_DINO_PREFIXES = ("module.backbone.", "backbone.", "module.")


@dataclass
class ResNetWeights:
    """Initial weights of a ResNet: torchvision key names (None: random init) and their source."""

    state_dict: dict[str, torch.Tensor] | None
    normalization: Normalization
    source: str  # what was loaded, for logs and errors: "none", a hub name, a file and its kind


def build_resnet(
    arch: str,
    *,
    norm_layer: Callable[[int], nn.Module] | None = None,
    replace_stride_with_dilation: tuple[bool, bool, bool] = (False, False, False),
) -> torchvision.models.ResNet:
    """A torchvision ResNet with random weights (its classifier ``fc`` is left in place).

    Args:
        arch: one of :data:`ARCHITECTURES`.
        norm_layer: e.g. ``torchvision.ops.FrozenBatchNorm2d`` or a GroupNorm factory; default
            BatchNorm2d.
        replace_stride_with_dilation: dilate layer2, layer3, layer4 instead of striding
            (DeepLab's output stride 8 is (False, True, True)); bottleneck ResNets (50, 101)
            only, as in torchvision.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"ResNet architecture {arch!r} is not one of {ARCHITECTURES}")
    kwargs = {"weights": None, "norm_layer": norm_layer}
    if any(replace_stride_with_dilation):
        if arch in ("resnet18", "resnet34"):
            raise ValueError(f"{arch} has basic blocks, which torchvision cannot dilate")
        kwargs["replace_stride_with_dilation"] = list(replace_stride_with_dilation)
    return getattr(torchvision.models, arch)(**kwargs)


def filter_torchvision(state_dict: dict) -> dict[str, torch.Tensor]:
    """A torchvision / timm ResNet state dict (wrapped or DDP-prefixed) -> torchvision keys."""
    state_dict = unwrap(state_dict, ("state_dict", "model"))
    return {
        key.removeprefix("module."): value
        for key, value in state_dict.items()
        if isinstance(value, torch.Tensor)
    }


def filter_moco(state_dict: dict) -> dict[str, torch.Tensor]:
    """A MoCo checkpoint -> the query (v1/v2) or base (v3) encoder's backbone (its MLP head
    ``fc.*`` dropped; v3's momentum encoder and predictor are left out)."""
    state_dict = unwrap(state_dict, ("state_dict", "model"))
    out = {}
    for key, value in state_dict.items():
        for prefix in _MOCO_PREFIXES:
            if key.startswith(prefix):
                name = key.removeprefix(prefix)
                if not name.startswith("fc."):
                    out[name] = value
    return out


def filter_dino(state_dict: dict) -> dict[str, torch.Tensor]:
    """A DINO ResNet training checkpoint -> the teacher's backbone (its DINO head dropped)."""
    state_dict = unwrap(state_dict, ("teacher", "student"))
    out = {}
    for key, value in state_dict.items():
        if key.startswith(("head.", "module.head.")):
            continue
        name = key
        for prefix in _DINO_PREFIXES:
            name = name.removeprefix(prefix)
        out[name] = value
    return out


def checkpoint_kind(obj: dict) -> str:
    """``moco``, ``dino`` or ``torchvision``: which filter a weights file needs, from its keys."""
    inner = unwrap(obj, ("state_dict", "model"))
    if any(str(k).startswith(_MOCO_PREFIXES) for k in inner):
        return "moco"
    if isinstance(obj.get("teacher"), dict) or any(str(k).startswith("backbone.") for k in inner):
        return "dino"
    return "torchvision"


FILTERS = {"moco": filter_moco, "dino": filter_dino, "torchvision": filter_torchvision}


def resnet_weights(spec: str, arch: str, setting: str) -> ResNetWeights:
    """Read the initial weights that ``spec`` names for ``arch`` (see the module doc).

    Args:
        spec: the weight spec.
        arch: the architecture the weights are for (torchvision names them per architecture).
        setting: the config key that holds ``spec``, named in errors (e.g. ``distill.init``).

    Raises:
        FileNotFoundError: a file that does not exist.
        ValueError: an unreadable file, an unknown weights name, or a failed download.
    """
    if spec == "none":
        return ResNetWeights(None, IMAGENET, "none")
    if spec.startswith("torchvision:"):
        name = spec.removeprefix("torchvision:")
        try:
            weights = torchvision.models.get_model_weights(arch)[name]
        except KeyError:
            known = [w.name for w in torchvision.models.get_model_weights(arch)]
            raise ValueError(
                f"{setting}: {arch} has no torchvision weights {name!r}; known: {known}"
            ) from None
        state_dict = download(lambda: weights.get_state_dict(progress=False), spec, setting)
        norm = Normalization(tuple(weights.transforms().mean), tuple(weights.transforms().std))
        return ResNetWeights(filter_torchvision(state_dict), norm, spec)
    if spec.startswith("timm:"):
        import timm  # only this source needs it

        name = spec.removeprefix("timm:")
        model = download(lambda: timm.create_model(name, pretrained=True), spec, setting, hub=True)
        cfg = model.pretrained_cfg
        norm = Normalization(tuple(cfg["mean"]), tuple(cfg["std"]))
        return ResNetWeights(filter_torchvision(model.state_dict()), norm, spec)
    if not looks_like_path(spec) and not Path(spec).is_file():
        raise ValueError(
            f"{setting}: {spec!r} is neither 'none', 'torchvision:<WEIGHTS>', 'timm:<name>' "
            "nor a weights file"
        )
    obj = read_checkpoint(spec)
    kind = checkpoint_kind(obj)
    return ResNetWeights(FILTERS[kind](obj), IMAGENET, f"{spec} ({kind})")


def load_resnet_weights(model: nn.Module, weights: ResNetWeights) -> None:
    """Load ``weights`` into a torchvision ResNet strictly; only ``fc.*`` may be missing.

    BatchNorm statistics load into ``FrozenBatchNorm2d`` as well (same buffer names; its
    ``num_batches_tracked`` is dropped).
    """
    if weights.state_dict is None:
        return
    expected = model.state_dict()
    state_dict = {
        k: v
        for k, v in weights.state_dict.items()
        if not (k.endswith("num_batches_tracked") and k not in expected)
    }
    load_strict(model, state_dict, weights.source, may_be_missing=lambda k: k.startswith("fc."))
