"""DINO's self-distillation loss and the two terms added to it here (InfoNCE, KoLeo)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def dino_loss(
    student_logits: Tensor,
    teacher_logits: Tensor,
    center: Tensor,
    student_temp: float,
    teacher_temp: float,
) -> Tensor:
    """DINO cross-entropy between teacher and student crops of the same scenes.

    Args:
        student_logits: (V * B, K), crop-major (crop v of every scene in block v); the first
            ``teacher_logits.shape[0] // B`` crops are the global crops the teacher saw.
        teacher_logits: (T * B, K), the teacher's T global crops in the same order.
        center: (K,) running mean of the teacher logits, subtracted before the softmax.
    Returns:
        The mean over scenes and over crop pairs (t, v) with t != v of
        -sum_k softmax((teacher - center) / teacher_temp)_k * log_softmax(student / student_temp)_k.
    """
    num_teacher = 2
    batch = teacher_logits.shape[0] // num_teacher
    num_student = student_logits.shape[0] // batch
    targets = F.softmax((teacher_logits - center) / teacher_temp, dim=-1).chunk(num_teacher)
    log_probs = F.log_softmax(student_logits / student_temp, dim=-1).chunk(num_student)
    total, pairs = student_logits.new_zeros(()), 0
    for t, target in enumerate(targets):
        for v, log_prob in enumerate(log_probs):
            if v == t:
                continue
            total = total + (-target * log_prob).sum(dim=-1).mean()
            pairs += 1
    return total / pairs


def updated_center(center: Tensor, teacher_logits: Tensor, momentum: float) -> Tensor:
    """EMA of the teacher's batch-mean logits: momentum * center + (1 - momentum) * mean."""
    return center * momentum + teacher_logits.mean(dim=0) * (1.0 - momentum)


def info_nce(queries: Tensor, keys: Tensor, temperature: float) -> Tensor:
    """InfoNCE: query i's positive is key i, the other keys of the batch are negatives.

    queries, keys: (B, D), compared by cosine similarity / temperature. Returns a scalar.
    """
    logits = F.normalize(queries, dim=-1) @ F.normalize(keys, dim=-1).T / temperature
    return F.cross_entropy(logits, torch.arange(len(queries), device=queries.device))


def koleo(x: Tensor, eps: float = 1e-8) -> Tensor:
    """KoLeo regulariser (DINOv2): -mean log distance to the nearest other L2-normalised row."""
    x = F.normalize(x, dim=-1, eps=eps)
    with torch.no_grad():
        similarity = x @ x.T
        similarity.fill_diagonal_(-2.0)
        nearest = similarity.argmax(dim=1)
    distance = F.pairwise_distance(x, x[nearest], eps=eps)
    return -torch.log(distance + eps).mean()
