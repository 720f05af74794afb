"""The hard-pixel-mining cross-entropy of stage 5 (the reference's ``CrossEntropyOHEM``)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from maskdistill.masks import IGNORE

HARD_FRACTION = 0.2


def ohem_cross_entropy(
    logits: torch.Tensor, labels: torch.Tensor, fraction: float = HARD_FRACTION
) -> torch.Tensor:
    """Mean cross-entropy of the hardest pixels of a batch.

    k = min(int(``fraction`` x every pixel of the batch, ignored ones included), the valid
    pixels); the loss is the mean of the k largest per-pixel cross-entropies among the valid
    pixels (labels ``IGNORE`` are never counted). 0 (with a gradient) when no pixel is valid.

    Args:
        logits: (B, C, H, W).
        labels: (B, H, W) int64 in 0..C-1 or ``IGNORE``.
    """
    losses = F.cross_entropy(logits, labels, ignore_index=IGNORE, reduction="none").flatten()
    valid = losses[labels.flatten() != IGNORE]
    k = min(int(fraction * labels.numel()), valid.numel())
    if k == 0:
        return logits.sum() * 0.0
    return torch.topk(valid, k, sorted=False).values.mean()
