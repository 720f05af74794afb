"""The networks of DINO: a timm ViT and the DINO projection head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn

from maskdistill.pretrain.settings import PretrainSettings


def build_vit(settings: PretrainSettings) -> VisionTransformer:
    """A timm ViT without classifier; positional embeddings interpolate to any input size."""
    return VisionTransformer(
        img_size=settings.global_size,
        patch_size=settings.patch_size,
        embed_dim=settings.embed_dim,
        depth=settings.depth,
        num_heads=settings.num_heads,
        num_classes=0,
        dynamic_img_size=True,
    )


class DINOHead(nn.Module):
    """DINO projection head: 3-layer MLP, L2-normalised bottleneck, cosine prototypes.

    The prototypes are weight-normalised with the norm fixed at 1 (DINO's ``norm_last_layer``):
    logits = normalise(z) @ normalise(W)^T, shape (B, out_dim).
    """

    def __init__(self, in_dim: int, out_dim: int, hidden: int, bottleneck: int) -> None:
        super().__init__()
        self.mlp = nn.Sequential(
            nn.Linear(in_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, bottleneck),
        )
        for module in self.mlp:
            if isinstance(module, nn.Linear):
                nn.init.trunc_normal_(module.weight, std=0.02)
                nn.init.zeros_(module.bias)
        self.prototypes = nn.Parameter(torch.empty(out_dim, bottleneck))
        nn.init.trunc_normal_(self.prototypes, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        """(B, in_dim) -> logits (B, out_dim)."""
        z = F.normalize(self.mlp(x), dim=-1)
        return z @ F.normalize(self.prototypes, dim=-1).T


class DINONet(nn.Module):
    """Backbone + head; returns the backbone's CLS embedding and the head's logits."""

    def __init__(self, backbone: VisionTransformer, head: DINOHead) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(B, 3, H, W) -> (CLS (B, D), logits (B, out_dim))."""
        cls = self.backbone(images)
        return cls, self.head(cls)


def build_dino(settings: PretrainSettings) -> DINONet:
    """Student network for ``settings`` (the teacher is a copy of it)."""
    backbone = build_vit(settings)
    head = DINOHead(
        settings.embed_dim, settings.out_dim, settings.head_hidden, settings.head_bottleneck
    )
    return DINONet(backbone, head)
