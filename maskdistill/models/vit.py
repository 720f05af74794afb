"""Frozen DINO-style ViT backbones built from stock timm: loading, preprocessing, q/k capture.

Every public function works on a stock ``timm.models.VisionTransformer``. The model's own
``forward`` is never called: the tokens are embedded here with DINO's positional-embedding
interpolation (``interpolate_pos_encoding`` of facebookresearch/dino, which produced the
reference masks), then timm's own modules (patch projection, blocks, norms) are run. timm's
``dynamic_img_size`` is not used: it resamples to a target size (not DINO's
``scale_factor = (h + 0.1) / h0``), which gives visibly different embeddings, not rounding noise.

Token layout of every token tensor: ``[CLS, registers (R, DINOv2 only), patches (N, row-major)]``;
``num_prefix_tokens(model) == 1 + R``.
"""

from __future__ import annotations

import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import timm
import torch
import torch.nn.functional as F
import torchvision.transforms.functional as TF
from PIL import Image
from timm.models import VisionTransformer

from maskdistill.models.checkpoint import download, load_strict, read_checkpoint
from maskdistill.models.norm import IMAGENET, Normalization
from maskdistill.models.specs import looks_like_path

log = logging.getLogger(__name__)

# default number of attention heads per embedding width (DINO ViT-T/S/B, ViT-L)
DEFAULT_HEADS = {192: 3, 384: 6, 768: 12, 1024: 16}

# defaults of a ``random:`` spec; ``heads`` defaults from the width
RANDOM_DEFAULTS = {"patch": 16, "width": 192, "depth": 4, "seed": 0, "img": 224, "reg": 0}
RANDOM_BACKBONE_WARNING = (
    "backbone %r is a random-initialised ViT: masks from a random ViT are noise (the demo "
    "only shows the mechanics). For real runs set discover.backbone to "
    "vit_small_patch16_224.dino (or vit_small_patch8_224.dino, or a DINO checkpoint path)"
)


def load_backbone(
    spec: str,
    *,
    pretrained: bool = True,
    num_heads: int | None = None,
    device: str | torch.device = "cpu",
    setting: str = "discover.backbone",
) -> VisionTransformer:
    """Build a frozen ViT in eval mode (``requires_grad`` False) on ``device``.

    Args:
        spec: one of
            - a timm model name, e.g. ``vit_small_patch16_224.dino`` (weights from the timm hub
              when ``pretrained``; ``pretrained=False`` gives random weights, for tests);
            - a local checkpoint file: the official DINO release (timm key names, no head), a DINO
              training checkpoint (``teacher`` / ``student`` with ``module.`` / ``backbone.``
              prefixes; the teacher is used), or a timm-saved state dict, possibly wrapped in
              ``state_dict`` or ``model``; the architecture is inferred from the weights;
            - ``random:patch=8,width=192,depth=4,heads=3,seed=0[,img=224,reg=0]``: a small
              randomly initialised ViT, identical for the same spec (demo and tests only).
        pretrained: download hub weights for timm names.
        num_heads: attention heads of a checkpoint or random model (default from the width:
            192 -> 3, 384 -> 6, 768 -> 12, 1024 -> 16); for timm names, an override.
        device: where the model lives.
        setting: the config setting that names ``spec`` (in error messages).

    Raises:
        FileNotFoundError: a checkpoint path that does not exist.
        ValueError: unknown timm name, unreadable checkpoint, weights that do not fit, hub
            weights that cannot be downloaded (within seconds when offline).
    """
    if spec.startswith("random:"):
        model = _random_backbone(spec, num_heads)
    elif Path(spec).is_file():
        model = _checkpoint_backbone(Path(spec), num_heads)
    elif looks_like_path(spec):
        raise FileNotFoundError(f"backbone checkpoint not found: {spec}")
    else:
        model = _timm_backbone(spec, pretrained, num_heads, setting)
    if not getattr(model, "pretrained_cfg", None):  # built here, not by timm: DINO's statistics
        model.pretrained_cfg = {"mean": IMAGENET.mean, "std": IMAGENET.std}
    model.eval().requires_grad_(False)
    return model.to(device)


def normalization(model: VisionTransformer) -> Normalization:
    """The input normalisation of the model's weights (timm's pretrained config, else ImageNet)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return Normalization(
        mean=tuple(cfg.get("mean", IMAGENET.mean)), std=tuple(cfg.get("std", IMAGENET.std))
    )


def describe(model: VisionTransformer) -> dict[str, Any]:
    """What rebuilds ``model`` without the file or hub it came from, for model files: the
    architecture (``vit``: a timm name or VisionTransformer arguments) and the input statistics."""
    norm = normalization(model)
    return {"vit": dict(model.architecture), "mean": list(norm.mean), "std": list(norm.std)}


def from_description(description: Mapping[str, Any]) -> VisionTransformer:
    """The ViT of :func:`describe`, frozen, in eval mode, with untrained weights (the caller loads
    a model file's state dict into the network built on it); reads no file, downloads nothing."""
    arch = dict(description["vit"])
    if "timm" in arch:
        model = _timm_backbone(arch.pop("timm"), False, arch.get("num_heads"), "model file")
    else:
        model = _build_vit("model file", **arch)
    model.pretrained_cfg = {"mean": tuple(description["mean"]), "std": tuple(description["std"])}
    return model.eval().requires_grad_(False)


@dataclass
class Backbones:
    """The mask backbone and the clustering-feature backbone (possibly the same module)."""

    backbone: VisionTransformer
    feature: VisionTransformer


def load_backbones(
    spec: str,
    feature_spec: str,
    *,
    pretrained: bool,
    num_heads: int | None,
    device: torch.device,
) -> Backbones:
    """Load both backbones (``feature_spec`` "same" or equal to ``spec``: one shared model)."""
    for name in (spec, feature_spec):
        if name.startswith("random:"):
            log.warning(RANDOM_BACKBONE_WARNING, name)
    backbone = load_backbone(spec, pretrained=pretrained, num_heads=num_heads, device=device)
    if feature_spec in ("same", spec):
        return Backbones(backbone, backbone)
    feature = load_backbone(
        feature_spec, pretrained=pretrained, device=device, setting="discover.feature_backbone"
    )
    return Backbones(backbone, feature)


def _timm_backbone(
    name: str, pretrained: bool, num_heads: int | None, setting: str
) -> VisionTransformer:
    """A model from timm's registry, without classifier head (weights from the hub)."""
    kwargs = {"num_heads": num_heads} if num_heads is not None else {}
    if not timm.is_model(name):
        raise ValueError(f"{setting}: {name!r} is neither a timm model name nor an existing file")

    def create() -> torch.nn.Module:
        return timm.create_model(name, pretrained=pretrained, num_classes=0, **kwargs)

    model = download(create, name, setting, hub=True) if pretrained else create()
    if not isinstance(model, VisionTransformer):
        raise ValueError(f"backbone {name!r} is a {type(model).__name__}, not a VisionTransformer")
    model.architecture = {"timm": name, **kwargs}
    return model


def _random_backbone(spec: str, num_heads: int | None) -> VisionTransformer:
    """A seeded random ViT from ``random:key=value,...`` (see ``load_backbone``)."""
    settings = dict(RANDOM_DEFAULTS)
    body = spec.removeprefix("random:")
    for item in filter(None, body.split(",")):
        key, _, value = item.partition("=")
        if key not in (*RANDOM_DEFAULTS, "heads") or not value.strip().isdigit():
            raise ValueError(
                f"bad random backbone spec {spec!r}: {item!r} (expected key=int with key in "
                f"{', '.join((*RANDOM_DEFAULTS, 'heads'))})"
            )
        settings[key] = int(value)
    heads = settings.pop("heads", num_heads) or _default_heads(settings["width"], spec)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(settings["seed"])
        return _build_vit(
            spec,
            img_size=settings["img"],
            patch_size=settings["patch"],
            embed_dim=settings["width"],
            depth=settings["depth"],
            num_heads=heads,
            reg_tokens=settings["reg"],
            no_embed_class=settings["reg"] > 0,
        )


def _build_vit(source: str, **kwargs) -> VisionTransformer:
    """A headless timm VisionTransformer; timm's argument assertions become ValueError."""
    try:
        model = VisionTransformer(**kwargs, num_classes=0)
    except (AssertionError, ValueError, ZeroDivisionError) as error:
        raise ValueError(f"{source}: cannot build a ViT with {kwargs}: {error}") from error
    model.architecture = dict(kwargs)  # what describe() stores in model files
    return model


def _default_heads(width: int, source: str) -> int:
    if width not in DEFAULT_HEADS:
        raise ValueError(
            f"{source}: no default number of heads for width {width}; pass num_heads "
            f"(known widths: {sorted(DEFAULT_HEADS)})"
        )
    return DEFAULT_HEADS[width]


def checkpoint_filter_fn(state_dict: dict) -> dict[str, torch.Tensor]:
    """Turn any supported checkpoint object into a timm VisionTransformer state dict.

    Unwraps ``teacher`` (preferred over ``student``), ``state_dict`` or ``model``; strips the
    ``module.`` (DDP) and ``backbone.`` (DINO wrapper) prefixes; drops the DINO projection head and
    any classifier head (``head.*``). Pure: the input is not modified.
    """
    for wrapper in ("teacher", "student", "state_dict", "model"):
        if isinstance(state_dict.get(wrapper), dict):
            state_dict = state_dict[wrapper]
            break
    keys = {key: key.removeprefix("module.") for key in state_dict}
    wrapped = any(key.startswith("backbone.") for key in keys.values())
    out = {}
    for old_key, value in state_dict.items():
        key = keys[old_key]
        if wrapped:
            if not key.startswith("backbone."):
                continue
            key = key.removeprefix("backbone.")
        if key.startswith("head.") or not isinstance(value, torch.Tensor):
            continue
        out[key] = value
    return out


def _checkpoint_backbone(path: Path, num_heads: int | None) -> VisionTransformer:
    """A ViT whose architecture is inferred from the checkpoint's weights, loaded strictly."""
    state_dict = checkpoint_filter_fn(read_checkpoint(path))
    if "patch_embed.proj.weight" not in state_dict:
        raise ValueError(
            f"{path}: not a ViT checkpoint (no patch_embed.proj.weight among "
            f"{len(state_dict)} tensors)"
        )
    model = _build_vit(str(path), **_architecture(state_dict, num_heads, path))
    load_strict(model, state_dict, str(path))
    return model


def _architecture(state_dict: dict[str, torch.Tensor], num_heads: int | None, path: Path) -> dict:
    """VisionTransformer keyword arguments inferred from a filtered state dict."""
    width, _, kh, kw = state_dict["patch_embed.proj.weight"].shape
    if kh != kw:
        raise ValueError(f"{path}: non-square patch kernel {kh}x{kw} is not supported")
    depth = len({int(m.group(1)) for k in state_dict if (m := re.match(r"blocks\.(\d+)\.", k))})
    reg = state_dict["reg_token"].shape[1] if "reg_token" in state_dict else 0
    prefix = int("cls_token" in state_dict) + reg
    tokens = state_dict["pos_embed"].shape[1] if "pos_embed" in state_dict else 0
    if _is_square(tokens - prefix):
        grid, no_embed_class = math.isqrt(tokens - prefix), False
    elif _is_square(tokens):
        grid, no_embed_class = math.isqrt(tokens), True
    else:
        raise ValueError(f"{path}: pos_embed has {tokens} tokens, not a square grid")
    fc1 = state_dict.get("blocks.0.mlp.fc1.weight")
    return {
        "img_size": grid * kh,
        "patch_size": kh,
        "embed_dim": width,
        "depth": depth,
        "num_heads": num_heads or _default_heads(width, str(path)),
        "mlp_ratio": fc1.shape[0] / width if fc1 is not None else 4.0,
        "qkv_bias": "blocks.0.attn.qkv.bias" in state_dict,
        "class_token": "cls_token" in state_dict,
        "reg_tokens": reg,
        "no_embed_class": no_embed_class,
        "init_values": 1e-5 if "blocks.0.ls1.gamma" in state_dict else None,
    }


def _is_square(n: int) -> bool:
    return n > 0 and math.isqrt(n) ** 2 == n


def num_prefix_tokens(model: VisionTransformer) -> int:
    """Tokens before the patches: CLS plus registers."""
    return model.num_prefix_tokens


def patch_size(model: VisionTransformer) -> int:
    """The (square) patch size P in pixels."""
    return model.patch_embed.proj.kernel_size[0]


def preprocess(
    image: np.ndarray, resize: int | None, patch: int, norm: Normalization
) -> tuple[torch.Tensor, tuple[int, int]]:
    """Reference preprocessing: resize, ToTensor, normalisation, zero padding.

    Args:
        image: (H, W, 3) uint8 RGB.
        resize: ``torchvision.transforms.Resize(resize)`` on the PIL image (shorter side to
            ``resize``, longer side ``int(long * resize / short)``, PIL bilinear); None keeps
            the size.
        patch: P; the result is zero-padded bottom/right to multiples of P (at least one patch).
        norm: the backbone's normalisation (:func:`normalization`; DINO: ImageNet's).

    Returns:
        (3, Hp, Wp) float32 tensor and the (H', W') size after resizing, before padding.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    pil = Image.fromarray(image)
    if resize is not None:
        pil = TF.resize(pil, resize)
    tensor = TF.normalize(TF.to_tensor(pil), list(norm.mean), list(norm.std))
    return pad_to_patch(tensor, patch), (pil.height, pil.width)


def preprocess_full(image: np.ndarray, patch: int, norm: Normalization) -> torch.Tensor:
    """Full-resolution normalised (3, Hp, Wp) tensor of an (H, W, 3) uint8 image, padded to P."""
    return preprocess(image, None, patch, norm)[0]


def pad_to_patch(tensor: torch.Tensor, patch: int) -> torch.Tensor:
    """Zero-pad (..., H, W) bottom/right to multiples of ``patch`` (at least one patch)."""
    height, width = tensor.shape[-2:]
    pad_h = max(1, math.ceil(height / patch)) * patch - height
    pad_w = max(1, math.ceil(width / patch)) * patch - width
    return F.pad(tensor, (0, pad_w, 0, pad_h)) if pad_h or pad_w else tensor


def interpolate_pos_embed(model: VisionTransformer, grid: tuple[int, int]) -> torch.Tensor:
    """The model's positional embedding for an h x w patch grid, as DINO computes it.

    Bicubic ``F.interpolate`` of the pretrained grid with ``scale_factor = (h + 0.1) / h0,
    (w + 0.1) / w0`` (DINO's ``interpolate_pos_encoding``); the pretrained embedding unchanged at
    the native grid. Prefix entries (CLS, when the model embeds it) are kept as they are.

    Returns:
        (1, P0 + h * w, D) where P0 = prefix tokens covered by ``pos_embed``
        (0 when ``model.no_embed_class``).
    """
    pos_embed = model.pos_embed
    rows, cols = grid
    old_rows, old_cols = model.patch_embed.grid_size
    if (rows, cols) == (old_rows, old_cols):
        return pos_embed
    n_prefix = 0 if model.no_embed_class else model.num_prefix_tokens
    prefix, patches = pos_embed[:, :n_prefix], pos_embed[:, n_prefix:]
    dim = pos_embed.shape[-1]
    patches = patches.float().reshape(1, old_rows, old_cols, dim).permute(0, 3, 1, 2)
    patches = F.interpolate(
        patches,
        scale_factor=((rows + 0.1) / old_rows, (cols + 0.1) / old_cols),
        mode="bicubic",
        align_corners=False,
    )
    if patches.shape[-2:] != (rows, cols):
        raise ValueError(f"positional embedding resized to {patches.shape[-2:]}, not {grid}")
    patches = patches.permute(0, 2, 3, 1).reshape(1, rows * cols, dim).to(pos_embed.dtype)
    return torch.cat((prefix, patches), dim=1)


def embed(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Tokens entering the first block, for images whose sides are multiples of P.

    Args:
        images: (B, 3, H, W) normalised, H and W multiples of P.

    Returns:
        (B, 1 + R + N, D) tokens, N = (H / P) * (W / P).
    """
    p = patch_size(model)
    height, width = images.shape[-2:]
    if height % p or width % p:
        raise ValueError(f"image size {height}x{width} is not a multiple of the patch size {p}")
    x = model.patch_embed.proj(images).flatten(2).transpose(1, 2)
    x = model.patch_embed.norm(x)
    pos_embed = interpolate_pos_embed(model, (height // p, width // p)).to(x.dtype)
    prefix = [
        t.expand(x.shape[0], -1, -1) for t in (model.cls_token, model.reg_token) if t is not None
    ]
    if model.no_embed_class:
        x = torch.cat([*prefix, x + pos_embed], dim=1)
    else:
        x = torch.cat([*prefix, x], dim=1) + pos_embed
    return model.norm_pre(model.patch_drop(model.pos_drop(x)))


def last_block_qk(
    model: VisionTransformer, images: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """q and k of every head of the last block, without its attention output or MLP.

    Runs ``blocks[:-1]`` as timm does (fused attention), then the last block's ``norm1`` and
    ``attn.qkv`` projection only. No scaling, no softmax.

    Args:
        images: (B, 3, H, W) normalised, sides multiples of P.

    Returns:
        q, k: each (B, heads, 1 + R + N, d); see ``num_prefix_tokens`` for 1 + R.
    """
    x = embed(model, images)
    for block in model.blocks[:-1]:
        x = block(x)
    last = model.blocks[-1]
    attn = last.attn
    qkv = attn.qkv(last.norm1(x))
    batch, tokens, _ = qkv.shape
    q, k, _ = qkv.reshape(batch, tokens, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4)
    return attn.q_norm(q), attn.k_norm(k)


def cls_features(model: VisionTransformer, images: torch.Tensor) -> torch.Tensor:
    """Final normalised CLS token (after ``model.norm``), (B, D), for (B, 3, H, W) images."""
    x = model.blocks(embed(model, images))
    return model.norm(x)[:, 0]


class PatchFeatures(torch.nn.Module):
    """A ViT as a convolutional backbone: images -> the final normalised patch tokens as a map.

    ``forward((B, 3, H, W))`` with H, W multiples of P returns (B, D, H / P, W / P): stride P.
    The ViT is fine-tuned when ``trainable``, else frozen (it then stays in evaluation mode).
    """

    def __init__(self, model: VisionTransformer, trainable: bool) -> None:
        super().__init__()
        self.vit = model
        self.trainable = trainable
        self.vit.requires_grad_(trainable)
        self.out_channels = model.embed_dim
        self.stride = patch_size(model)

    def train(self, mode: bool = True) -> PatchFeatures:
        super().train(mode)
        self.vit.train(mode and self.trainable)
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        tokens = self.vit.norm(self.vit.blocks(embed(self.vit, images)))
        patches = tokens[:, num_prefix_tokens(self.vit) :]
        rows, cols = images.shape[-2] // self.stride, images.shape[-1] // self.stride
        return patches.transpose(1, 2).reshape(images.shape[0], -1, rows, cols)
