"""Stage 1 core (pure): one object mask per image from the last block's q and k.

``object_mask`` is the method's stage 1, steps 1-8 (docs/method.md), as the authors'
``mask_generator`` (wvangansbeke/MaskDistill, gen_masks.py) computes it, without building the
N x N patch graph: G = sum_h K_h K_h^T is only needed in the source's row and in the sum of the
seeds' rows, and those are dot products with the keys concatenated over all heads (the seeds'
rows are summed as ``(sum of the seeds' keys) . keys``: equal in exact arithmetic, so a patch
can only differ from the N x N computation where its value is within float32 rounding of 0).
All arithmetic runs in float32 on the CPU, so that ties (many patches are zeroed by the
attention-mass filter) resolve through ``torch.topk`` the same way whatever device produced q
and k.
"""

from __future__ import annotations

import numpy as np
import scipy.ndimage
import torch


def cls_affinity(
    q: torch.Tensor, k: torch.Tensor, heads: int, num_prefix_tokens: int = 1
) -> torch.Tensor:
    """CLS query vs patch keys, averaged over the first ``heads`` heads (steps 1-2).

    Args:
        q, k: (heads_total, P0 + N, d) with P0 = ``num_prefix_tokens`` (CLS first).
        heads: how many of the first heads to average.

    Returns:
        (N,) float32 on the CPU, unscaled, no softmax.
    """
    _check_qk(q, k, heads, num_prefix_tokens)
    q0 = q[:heads, :1].detach().float().cpu()
    keys = k[:heads, num_prefix_tokens:].detach().float().cpu()
    return (q0 @ keys.transpose(-2, -1))[:, 0].mean(dim=0)


def mass_filter(affinity: torch.Tensor, mass: float) -> torch.Tensor:
    """0/1 mask of the patches holding the top ``mass`` of the affinity (step 3).

    As the reference ``threshold_attention``: sort ascending, divide by the sum, cumulative sum,
    keep where the cumulative value exceeds ``1 - mass``.

    Returns:
        (N,) bool.
    """
    values, order = torch.sort(affinity[None])  # (1, N) as in the reference, same reductions
    values = values / torch.sum(values, dim=1, keepdim=True)
    keep_sorted = torch.cumsum(values, dim=1) > (1 - mass)
    keep = torch.empty_like(keep_sorted)
    keep[0, order[0]] = keep_sorted[0]
    return keep[0]


def object_mask(
    q: torch.Tensor,
    k: torch.Tensor,
    grid_shape: tuple[int, int],
    *,
    heads: int,
    topk: float,
    mass: float,
    center_keys: bool = False,
    num_prefix_tokens: int = 1,
) -> tuple[np.ndarray, int]:
    """The object mask of ONE image on its patch grid (docs/method.md, stage 1, steps 1-8).

    Args:
        q, k: (heads_total, P0 + N, d) queries and keys of the last block, P0 =
            ``num_prefix_tokens`` (CLS first, then registers), N = h * w patches row-major.
        grid_shape: (h, w).
        heads: the first ``heads`` heads give the CLS affinity (reference 5); must not exceed
            heads_total. The patch graph always uses all heads.
        topk: proposals k = max(1, int(topk * N)) (the reference crashes at k = 0).
        mass: attention-mass filter threshold (keep the top ``mass`` of the CLS affinity).
        center_keys: not in the reference: subtract the image's mean patch key (per head) before
            the patch graph; tighter masks for weak backbones.

    Returns:
        (h, w) bool grid mask (4-connected component of the source) and the source patch index
        (row-major). An empty seed set or a mask without the source gives an all-False mask
        (the reference would return the complement of its diffusion there).
    """
    _check_qk(q, k, heads, num_prefix_tokens)
    rows, cols = grid_shape
    n_patches = rows * cols
    if q.shape[1] != num_prefix_tokens + n_patches:
        raise ValueError(
            f"q/k have {q.shape[1]} tokens; grid {rows}x{cols} with {num_prefix_tokens} prefix "
            f"tokens needs {num_prefix_tokens + n_patches}"
        )
    if not 0 < topk <= 1 or not 0 < mass <= 1:
        raise ValueError(f"topk ({topk}) and mass ({mass}) must lie in (0, 1]")
    # CLS affinity over the first heads, then the attention-mass filter
    affinity = cls_affinity(q, k, heads, num_prefix_tokens)
    affinity = affinity * mass_filter(affinity, mass)
    # proposals: top-k patches by affinity; the first one is the source
    proposals = torch.topk(affinity, k=max(1, int(topk * n_patches)), largest=True, sorted=True)[1]
    source = int(proposals[0])
    # patch keys concatenated over all heads: G = keys @ keys.T
    keys = k[:, num_prefix_tokens:].detach().float().cpu()
    if center_keys:
        keys = keys - keys.mean(dim=1, keepdim=True)
    keys = keys.permute(1, 0, 2).reshape(n_patches, -1)
    # seeds: proposals similar to the source; diffusion: sum of the seeds' graph rows
    seeds = proposals[keys[proposals] @ keys[source] > 0]
    diffused = (keys @ keys[seeds].sum(dim=0) > 0).reshape(rows, cols).numpy()
    # keep the 4-connected component holding the source
    labels = scipy.ndimage.label(diffused)[0]
    source_label = labels[source // cols, source % cols]
    if source_label == 0:
        return np.zeros((rows, cols), dtype=bool), source
    return labels == source_label, source


def _check_qk(q: torch.Tensor, k: torch.Tensor, heads: int, num_prefix_tokens: int) -> None:
    if q.ndim != 3 or q.shape != k.shape:
        raise ValueError(
            f"q and k must both be (heads, tokens, d); got {tuple(q.shape)} and {tuple(k.shape)}"
        )
    if not 1 <= heads <= q.shape[0]:
        raise ValueError(f"heads={heads}, but the backbone's last block has {q.shape[0]} heads")
    if q.shape[1] <= num_prefix_tokens:
        raise ValueError(f"q/k have {q.shape[1]} tokens: no patch after {num_prefix_tokens}")
