"""DeepLab-v3 builders (torchvision): the paper's dilated ResNet-50, and a ViT variant for the demo.

ResNet (``arch: resnet50``): torchvision's ``deeplabv3_resnet50(aux_loss=False)``: layer3 and
layer4 dilated (output stride 8), ASPP with rates 12, 24, 36 and image pooling, a 3 x 3
convolution with BatchNorm and ReLU, a 1 x 1 classifier; the backbone from a weight spec
(reference: MoCo v2). The stem and the first ``freeze_layers`` stages are frozen: their
parameters fixed and their BatchNorm in evaluation mode whatever ``train()`` says
(reference ``freeze_layers: 2``: conv1, bn1, layer1, layer2).

ViT (``arch: vit``): the same head on a ViT's patch tokens, a stride-P map (the demo ViT's P = 8
is output stride 8 too); ``freeze_layers`` > 0 freezes the ViT. ``head_channels`` narrows the head
(256 in the paper).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.segmentation.deeplabv3 import ASPP, DeepLabV3

from maskdistill.config import Settings
from maskdistill.models import vit
from maskdistill.models.checkpoint import described_backbone
from maskdistill.models.model_file import load_weights
from maskdistill.models.norm import Normalization
from maskdistill.models.resnet import build_resnet, load_resnet_weights, resnet_weights

DILATED = ("resnet50", "resnet101")
RATES = (12, 24, 36)
STAGES = (("conv1", "bn1"), ("layer1",), ("layer2",), ("layer3",), ("layer4",))


@dataclass(frozen=True)
class DeepLabSettings(Settings):
    """The network (config ``segment``; docs/method.md, stage 5).

    Attributes:
        arch: ``resnet50`` (the paper), ``resnet101`` or ``vit``.
        init: initial backbone weights: a ResNet weight spec or, for ``vit``, a ViT spec.
        freeze_layers: ResNet stages frozen after the stem (2: conv1, bn1, layer1, layer2);
            for ``vit``, > 0 freezes the ViT.
        head_channels: ASPP and head width (256).
    """

    arch: str
    init: str
    freeze_layers: int
    head_channels: int


def deeplab_head(in_channels: int, num_outputs: int, channels: int) -> nn.Sequential:
    """torchvision's ``DeepLabHead`` with ``channels`` instead of 256 (same layout and keys)."""
    return nn.Sequential(
        ASPP(in_channels, list(RATES), channels),
        nn.Conv2d(channels, channels, 3, padding=1, bias=False),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, num_outputs, 1),
    )


class PatchMap(nn.Module):
    """A ViT's patch map as DeepLabV3's backbone: ``{"out": (B, D, H / P, W / P)}``."""

    def __init__(self, features: vit.PatchFeatures) -> None:
        super().__init__()
        self.features = features

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"out": self.features(images)}


class DeepLab(DeepLabV3):
    """DeepLabV3 whose frozen modules stay in evaluation mode in training.

    ``forward(images (B, 3, H, W), normalised)`` returns ``{"out": (B, K + 1, H, W)}`` logits.
    Frozen modules are kept by name, so that they stay frozen when a module is replaced (DDP's
    SyncBatchNorm conversion replaces every BatchNorm). ``backbone_description`` rebuilds the
    backbone without its weight file (:func:`build_deeplab`); model files store it.
    """

    def __init__(
        self,
        backbone: nn.Module,
        head: nn.Module,
        frozen: list[str],
        backbone_description: Mapping[str, Any],
    ) -> None:
        super().__init__(backbone, head, aux_classifier=None)
        self.backbone_description = dict(backbone_description)
        self.freeze(frozen)

    def freeze(self, names: list[str]) -> None:
        """Fix the parameters of the named submodules and keep them in evaluation mode."""
        self.frozen = list(names)
        for name in self.frozen:
            self.get_submodule(name).requires_grad_(False)

    def train(self, mode: bool = True) -> DeepLab:
        super().train(mode)
        for name in self.frozen:
            self.get_submodule(name).eval()
        return self

    @property
    def classifier_conv(self) -> nn.Conv2d:
        """The last 1 x 1 convolution (the one a linear probe replaces)."""
        return self.classifier[-1]


def build_deeplab(
    num_outputs: int,
    settings: DeepLabSettings,
    setting: str = "segment.init",
    backbone: Mapping[str, Any] | None = None,
) -> tuple[DeepLab, Normalization]:
    """A DeepLab-v3 with ``num_outputs`` outputs (K + 1) and its input normalisation.

    The backbone starts from ``settings.init`` (named ``setting`` in errors); with ``backbone``,
    a model file's description (the network's ``backbone_description``), the architecture is
    rebuilt with untrained weights instead and no weight file is read (a model file's state dict
    is loaded next). The returned network carries its ``backbone_description``.
    """
    if settings.arch == "vit":
        if backbone is None:
            model = vit.load_backbone(settings.init, setting=setting)
        else:
            model = vit.from_description(backbone)
        features = vit.PatchFeatures(model, trainable=settings.freeze_layers == 0)
        head = deeplab_head(features.out_channels, num_outputs, settings.head_channels)
        frozen = ["backbone.features"] if settings.freeze_layers > 0 else []
        network = DeepLab(PatchMap(features), head, frozen, vit.describe(model))
        return network, vit.normalization(model)
    if settings.arch not in DILATED:
        raise ValueError(f"segment.arch: expected vit or one of {DILATED}, got {settings.arch!r}")
    if not 0 <= settings.freeze_layers <= 4:
        raise ValueError(f"segment.freeze_layers: expected 0..4, got {settings.freeze_layers}")
    resnet = build_resnet(settings.arch, replace_stride_with_dilation=(False, True, True))
    if backbone is None:
        weights = resnet_weights(settings.init, settings.arch, setting)
        load_resnet_weights(resnet, weights)
        norm = weights.normalization
    else:
        norm = Normalization.from_description(backbone)
    stages = STAGES[: settings.freeze_layers + 1] if settings.freeze_layers else ()
    frozen = [f"backbone.{name}" for stage in stages for name in stage]
    layers = IntermediateLayerGetter(resnet, return_layers={"layer4": "out"})
    head = deeplab_head(resnet.fc.in_features, num_outputs, settings.head_channels)
    return DeepLab(layers, head, frozen, norm.describe()), norm


def rebuild_deeplab(settings: Mapping[str, Any], source: str) -> tuple[DeepLab, Normalization]:
    """The untrained network of a stage-5 model file's ``settings`` (its state dict follows).

    Raises:
        ValueError: naming ``source`` when the file does not describe its backbone (written
            before model files described themselves: rerun its training).
    """
    network = DeepLabSettings.from_config(settings)
    backbone = described_backbone(settings, source)
    return build_deeplab(settings["num_outputs"], network, backbone=backbone)


def probe_network(model: nn.Module, num_classes: int) -> nn.Module:
    """``model`` frozen, with a new last 1 x 1 convolution to ``num_classes`` outputs.

    The new convolution's weights are drawn from N(0, 0.01) and its bias is 0 (the reference);
    every other parameter is fixed and the network stays in evaluation mode in training.
    """
    old = model.classifier_conv
    new = nn.Conv2d(old.in_channels, num_classes, kernel_size=1)
    nn.init.normal_(new.weight, mean=0.0, std=0.01)
    nn.init.zeros_(new.bias)
    model.classifier[-1] = new
    last = len(model.classifier) - 1
    model.freeze(["backbone"] + [f"classifier.{i}" for i in range(last)])
    return model


def load_deeplab(path: str | Path) -> tuple[DeepLab, Normalization, dict[str, Any]]:
    """A stage-5 network or linear probe from its model file alone (no init weights, no config):
    the network with its trained weights (loaded strictly), its input normalisation, the file's
    payload."""
    payload = load_weights(path)
    settings = payload["settings"]
    model, norm = rebuild_deeplab(settings, str(path))
    if settings.get("supervised"):  # a linear probe: the new last convolution
        model = probe_network(model, settings["num_outputs"])
    model.load_state_dict(payload["model"])
    return model, norm, payload
