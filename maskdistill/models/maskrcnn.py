"""Mask R-CNN builders (torchvision): the paper's R50-FPN, and a small ViT variant for the demo.

ResNet backbones (``arch: resnet50`` etc.) with an FPN:

- started from weights, the network is torchvision's ``maskrcnn_resnet50_fpn`` (v1,
  detectron2's R50-FPN architecture) with the R50-FPN settings: frozen BatchNorm in the
  backbone, the first ``5 - trainable_layers`` backbone stages frozen, a two-layer MLP box head,
  a four-convolution mask head;
- trained from scratch (``init: none``), BatchNorm statistics of a few images per GPU are
  unstable, so the backbone, the FPN and both heads use GroupNorm (32 groups), with a
  four-convolution box head (detectron2's GN recipe) and every backbone stage trainable.

ViT backbones (``arch: vit``, ``init`` a ViT spec such as the demo's checkpoint): the patch
tokens of the last block as a stride-P map, and a simple feature pyramid on it (ViTDet's idea:
projected to ``fpn_channels``, then stride P/2 by a transposed convolution, P, 2P and 4P by
pooling). The ViT is fine-tuned unless ``trainable_layers`` is 0.

Images go in as float RGB in [0, 1]; the network normalises them with the statistics of its
initial weights and resizes them: in training each image to a shorter side drawn from
``train_sizes`` (longer side at most ``max_size``), at test time to ``test_size``.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.faster_rcnn import (
    FastRCNNConvFCHead,
    FastRCNNPredictor,
    TwoMLPHead,
)
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform, resize_boxes
from torchvision.ops import FrozenBatchNorm2d
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool

from maskdistill.config import Settings
from maskdistill.models import vit
from maskdistill.models.checkpoint import described_backbone
from maskdistill.models.norm import Normalization
from maskdistill.models.resnet import (
    ARCHITECTURES,
    build_resnet,
    load_resnet_weights,
    resnet_weights,
)

GROUPS = 32
BACKBONE_STAGES = ("layer4", "layer3", "layer2", "layer1", "conv1")


@dataclass(frozen=True)
class MaskRCNNSettings(Settings):
    """The architecture and its input sizes (config ``distill``; docs/method.md, stage 3).

    Attributes:
        arch: ``resnet50`` (the paper's R50-FPN), another ResNet, or ``vit``.
        init: initial backbone weights: a ResNet weight spec (:mod:`maskdistill.models.resnet`)
            or, for ``vit``, a ViT spec (:func:`maskdistill.models.vit.load_backbone`).
        trainable_layers: ResNet stages trained when starting from weights, 0..5 (torchvision's
            and detectron2's default 3: layer2..layer4); for ``vit``, 0 freezes the ViT.
        fpn_channels: FPN and head width (256 in R50-FPN).
        box_head_dim: width of the box head's fully connected layers (1024 in R50-FPN).
        mask_head_convs: convolutions of the mask head (4 in R50-FPN).
        train_sizes: shorter sides drawn per training image, pixels.
        test_size: shorter side at prediction time, pixels.
        max_size: cap of the longer side, pixels.
        proposals_train, proposals_test: RPN proposals kept per image after NMS in training and
            at prediction; before NMS, per pyramid level, twice as many in training and as many
            at prediction (detectron2's R50-FPN: 2000 -> 1000 and 1000 -> 1000).
        rpn_batch_size: anchors sampled per image for the RPN loss.
        roi_batch_size: proposals sampled per image for the box and mask losses.
        score_floor: predictions scoring less are dropped (torchvision's box_score_thresh).
        detections_per_image: at most this many predictions per image.
    """

    arch: str
    init: str
    trainable_layers: int
    fpn_channels: int
    box_head_dim: int
    mask_head_convs: int
    train_sizes: tuple[int, ...]
    test_size: int
    max_size: int
    proposals_train: int
    proposals_test: int
    rpn_batch_size: int
    roi_batch_size: int
    score_floor: float
    detections_per_image: int


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with 32 groups (fewer when ``channels`` is smaller)."""
    return nn.GroupNorm(min(GROUPS, channels), channels)


def freeze_stages(backbone: nn.Module, trainable_layers: int) -> None:
    """Fix the parameters of all but the last ``trainable_layers`` ResNet stages."""
    if not 0 <= trainable_layers <= 5:
        raise ValueError(f"trainable_layers: expected 0..5, got {trainable_layers}")
    train = list(BACKBONE_STAGES[:trainable_layers]) + (["bn1"] if trainable_layers == 5 else [])
    for name, parameter in backbone.named_parameters():
        if not name.startswith(tuple(train)):
            parameter.requires_grad_(False)


class ViTPyramid(nn.Module):
    """A simple feature pyramid on a ViT's stride-P patch map (torchvision's backbone contract).

    The patch map is projected to ``out_channels`` (1 x 1 convolution), then brought to strides
    P/2 (a 2 x 2 transposed convolution), P, 2P and 4P (max pooling), each smoothed by a 3 x 3
    convolution. ``forward`` returns an OrderedDict of these 4 maps and one more at 8P, named
    ``0``..``3`` and ``pool`` as torchvision's FPN names them.
    """

    def __init__(self, features: vit.PatchFeatures, channels: int) -> None:
        super().__init__()
        self.features = features
        self.out_channels = channels
        self.project = nn.Conv2d(features.out_channels, channels, 1)
        self.upsample = nn.ConvTranspose2d(channels, channels, kernel_size=2, stride=2)
        self.output = nn.ModuleList(nn.Conv2d(channels, channels, 3, padding=1) for _ in range(4))

    def forward(self, images: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        patches = self.project(self.features(images))
        levels = [self.upsample(patches), patches]
        levels += [F.max_pool2d(patches, 2), F.max_pool2d(patches, 4)]
        maps = [smooth(level) for level, smooth in zip(levels, self.output, strict=True)]
        pyramid = OrderedDict((str(i), level) for i, level in enumerate(maps))
        pyramid["pool"] = F.max_pool2d(maps[-1], kernel_size=1, stride=2)
        return pyramid


def _resnet_fpn(
    settings: MaskRCNNSettings, setting: str, backbone: Mapping[str, Any] | None
) -> tuple[BackboneWithFPN, Normalization, dict[str, Any]]:
    """The ResNet-FPN backbone, its normalisation and its description (``scratch``: trained
    from scratch, hence GroupNorm everywhere)."""
    if backbone is None:
        weights = resnet_weights(settings.init, settings.arch, setting)
        scratch, normalization = weights.state_dict is None, weights.normalization
    else:
        weights = None
        scratch, normalization = backbone["scratch"], Normalization.from_description(backbone)
    resnet = build_resnet(settings.arch, norm_layer=group_norm if scratch else FrozenBatchNorm2d)
    if weights is not None:
        load_resnet_weights(resnet, weights)
    freeze_stages(resnet, 5 if scratch else settings.trainable_layers)
    stage2 = resnet.inplanes // 8  # layer1's output channels
    pyramid = BackboneWithFPN(
        resnet,
        return_layers={f"layer{k}": str(k - 1) for k in (1, 2, 3, 4)},
        in_channels_list=[stage2 * 2**i for i in range(4)],
        out_channels=settings.fpn_channels,
        extra_blocks=LastLevelMaxPool(),
        norm_layer=group_norm if scratch else None,
    )
    return pyramid, normalization, {**normalization.describe(), "scratch": scratch}


def _vit_pyramid(
    settings: MaskRCNNSettings, setting: str, backbone: Mapping[str, Any] | None
) -> tuple[ViTPyramid, Normalization, dict[str, Any]]:
    """The ViT's simple feature pyramid, its normalisation and its description."""
    if backbone is None:
        model = vit.load_backbone(settings.init, setting=setting)
    else:
        model = vit.from_description(backbone)
    features = vit.PatchFeatures(model, trainable=settings.trainable_layers > 0)
    pyramid = ViTPyramid(features, settings.fpn_channels)
    return pyramid, vit.normalization(model), vit.describe(model)


def build_maskrcnn(
    num_classes: int,
    settings: MaskRCNNSettings,
    setting: str = "distill.init",
    backbone: Mapping[str, Any] | None = None,
) -> tuple[MaskRCNN, Normalization]:
    """A Mask R-CNN for ``num_classes`` classes plus background, and its input normalisation.

    Args:
        num_classes: K (the clusters); the network has K + 1 outputs.
        settings: the architecture.
        setting: the config key of ``settings.init``, named in errors.
        backbone: a model file's description of the backbone (the network's
            ``backbone_description``): the architecture is rebuilt with untrained weights and
            no weight file is read (the model file's state dict is loaded next).
    """
    if settings.arch == "vit":
        pyramid, normalization, description = _vit_pyramid(settings, setting, backbone)
    elif settings.arch in ARCHITECTURES:
        pyramid, normalization, description = _resnet_fpn(settings, setting, backbone)
    else:
        raise ValueError(
            f"distill.arch: expected vit or one of {ARCHITECTURES}, got {settings.arch!r}"
        )
    scratch = description.get("scratch", False)
    channels, norm = settings.fpn_channels, group_norm if scratch else None
    if scratch:
        box_head = FastRCNNConvFCHead(
            (channels, 7, 7), [channels] * 4, [settings.box_head_dim], norm_layer=group_norm
        )
    else:
        box_head = TwoMLPHead(channels * 7 * 7, settings.box_head_dim)
    mask_width = channels if scratch or settings.arch == "vit" else 256  # R50-FPN: 256
    mask_head = MaskRCNNHeads(channels, [mask_width] * settings.mask_head_convs, 1, norm_layer=norm)
    model = MaskRCNN(
        pyramid,
        min_size=settings.train_sizes,
        max_size=settings.max_size,
        image_mean=list(normalization.mean),
        image_std=list(normalization.std),
        rpn_head=RPNHead(channels, 3),
        rpn_pre_nms_top_n_train=2 * settings.proposals_train,  # detectron2's 2000 / 1000
        rpn_post_nms_top_n_train=settings.proposals_train,
        rpn_pre_nms_top_n_test=settings.proposals_test,
        rpn_post_nms_top_n_test=settings.proposals_test,
        rpn_batch_size_per_image=settings.rpn_batch_size,
        box_head=box_head,
        box_predictor=FastRCNNPredictor(settings.box_head_dim, num_classes + 1),
        box_batch_size_per_image=settings.roi_batch_size,
        box_score_thresh=settings.score_floor,
        box_detections_per_img=settings.detections_per_image,
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(mask_width, mask_width, num_classes + 1),
    )
    model.backbone_description = description  # what a model file stores to rebuild it
    return model, normalization


def rebuild_maskrcnn(settings: Mapping[str, Any], source: str) -> MaskRCNN:
    """The untrained network of a stage-3 model file's ``settings`` (its state dict follows);
    reads no other file.

    Raises:
        ValueError: naming ``source`` when the file does not describe its backbone.
    """
    network = MaskRCNNSettings.from_config(settings)
    backbone = described_backbone(settings, source)
    return build_maskrcnn(settings["num_classes"], network, backbone=backbone)[0]


class BoxMaskTransform(GeneralizedRCNNTransform):
    """torchvision's transform, except that prediction leaves each mask as the mask head's
    (1, M, M) probabilities in its box instead of pasting every one at the image's full size
    (:func:`maskdistill.distill.predict.pasted_masks` pastes them one at a time)."""

    def postprocess(
        self,
        result: list[dict[str, torch.Tensor]],
        image_shapes: list[tuple[int, int]],
        original_image_sizes: list[tuple[int, int]],
    ) -> list[dict[str, torch.Tensor]]:
        if self.training:
            return result
        for prediction, size, original in zip(
            result, image_shapes, original_image_sizes, strict=True
        ):
            prediction["boxes"] = resize_boxes(prediction["boxes"], size, original)
        return result


def for_prediction(model: MaskRCNN, settings: MaskRCNNSettings) -> MaskRCNN:
    """The model in evaluation mode, resizing every image to ``test_size``; its outputs' masks
    are per box (:class:`BoxMaskTransform`)."""
    old = model.transform
    model.transform = BoxMaskTransform(
        (settings.test_size,),
        old.max_size,
        old.image_mean,
        old.image_std,
        size_divisible=old.size_divisible,
        fixed_size=old.fixed_size,
    )
    return model.eval()
