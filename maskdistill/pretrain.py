"""DINO self-supervised pretraining of a ViT backbone (student/teacher self-distillation).

Pure pieces (augmentation, head, losses, schedules, EMA, one training step) and a
torchvision-references-style loop with full, atomically written checkpoints and exact resume.

Every random draw of step ``s`` comes from generators seeded by ``(seed, s)``, and every schedule
is a function of ``s``: a run resumed from the checkpoint of step ``s`` continues exactly as the
uninterrupted run would have.

Views: a *view source* returns, for a step, two lists of images (H, W, 3) uint8 of the same
scenes; the first global crop of scene i comes from ``first[i]``, the second from ``second[i]``.
Plain DINO passes the same image twice; the demo passes two renderings of one scene (same
objects, different backgrounds), and an InfoNCE term ties the two renderings' CLS embeddings.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image
from timm.models.vision_transformer import VisionTransformer
from torch import Tensor, nn
from tqdm import tqdm

from maskdistill.demo import render_scene_pair
from maskdistill.io import atomic_path
from maskdistill.provenance import provenance

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# A view source: (numpy generator, batch size) -> (first renderings, second renderings).
ViewSource = Callable[[np.random.Generator, int], tuple[list[np.ndarray], list[np.ndarray]]]


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Every setting of a pretraining run (stored in checkpoints; resume checks them)."""

    patch_size: int = 8
    embed_dim: int = 192
    depth: int = 4
    num_heads: int = 3
    global_size: int = 64  # pixels, side of the global crops (the backbone's native input)
    local_size: int = 32  # pixels, side of the local crops
    num_local: int = 4
    global_scale: tuple[float, float] = (0.4, 1.0)  # area fraction of the source image
    local_scale: tuple[float, float] = (0.05, 0.4)
    hue: float = 0.02  # colour jitter strengths (hue in turns, others relative)
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    out_dim: int = 1024  # DINO head prototypes
    head_hidden: int = 512
    head_bottleneck: int = 128
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    center_momentum: float = 0.9
    batch_size: int = 64
    steps: int = 600
    lr: float = 3e-4
    min_lr: float = 1e-6
    warmup_fraction: float = 0.08
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    teacher_momentum: float = 0.995
    freeze_last_layer_fraction: float = 0.05
    clip_grad: float = 3.0
    infonce_weight: float = 0.0  # paired views only
    infonce_temp: float = 0.2
    koleo_weight: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        checks = {
            "patch_size": self.patch_size > 0,
            "global_size": self.global_size % self.patch_size == 0,
            "local_size": self.local_size % self.patch_size == 0,
            "embed_dim": self.embed_dim % self.num_heads == 0,
            "batch_size": self.batch_size >= 2,
            "steps": self.steps >= 1,
            "num_local": self.num_local >= 0,
            "teacher_momentum": 0.0 <= self.teacher_momentum <= 1.0,
            "warmup_fraction": 0.0 <= self.warmup_fraction < 1.0,
            "freeze_last_layer_fraction": 0.0 <= self.freeze_last_layer_fraction < 1.0,
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"pretrain setting {name}={getattr(self, name)!r} is invalid")

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainSettings:
        """Settings from a checkpoint's ``settings`` dict (lists back to tuples)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"unknown pretrain settings {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})


# ---------------------------------------------------------------------------------------------
# View sources


def resize_shorter_side(image: np.ndarray, side: int) -> np.ndarray:
    """(H, W, 3) uint8 -> resized (bilinear, antialiased) so that min(H, W) == side."""
    height, width = image.shape[:2]
    scale = side / min(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.BILINEAR))


def image_views(images: Sequence[np.ndarray]) -> ViewSource:
    """Plain DINO: each scene is one of ``images`` (drawn with replacement), used for both views."""
    if not images:
        raise ValueError("pretraining needs at least one image")

    def views(rng: np.random.Generator, batch: int) -> tuple[list[np.ndarray], list[np.ndarray]]:
        chosen = [images[i] for i in rng.integers(len(images), size=batch)]
        return chosen, chosen

    return views


def paired_demo_views(rng: np.random.Generator, batch: int) -> tuple[list, list]:
    """The demo's paired renderings: ``batch`` new scenes, each on two independent backgrounds."""
    pairs = [render_scene_pair(rng) for _ in range(batch)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


# ---------------------------------------------------------------------------------------------
# Multi-crop augmentation on tensors


def to_tensor(image: np.ndarray) -> Tensor:
    """(H, W, 3) uint8 -> (3, H, W) float32 in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return torch.tensor(image).permute(2, 0, 1).float().div_(255.0)


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
    return TF.normalize(crop, list(IMAGENET_MEAN), list(IMAGENET_STD))


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
    a = [to_tensor(x) for x in first]
    b = [to_tensor(x) for x in second]
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


# ---------------------------------------------------------------------------------------------
# Models


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


# ---------------------------------------------------------------------------------------------
# Losses, schedules, EMA


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


def cosine_schedule(
    step: int, total: int, base: float, final: float, warmup_steps: int = 0
) -> float:
    """Linear warm-up from 0 to ``base`` over ``warmup_steps``, then cosine to ``final``."""
    if step < warmup_steps:
        return base * step / warmup_steps
    span = max(total - warmup_steps, 1)
    progress = min((step - warmup_steps) / span, 1.0)
    return final + 0.5 * (base - final) * (1.0 + math.cos(math.pi * progress))


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """teacher <- momentum * teacher + (1 - momentum) * student, parameter by parameter."""
    for t, s in zip(teacher.parameters(), student.parameters(), strict=True):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


@dataclasses.dataclass(frozen=True)
class StepSchedule:
    """Values of the schedules at one step."""

    lr: float
    weight_decay: float
    teacher_momentum: float
    freeze_last_layer: bool


def schedule_at(step: int, settings: PretrainSettings) -> StepSchedule:
    """Learning rate (warm-up + cosine), weight decay and teacher momentum (cosine) at ``step``."""
    total = settings.steps
    return StepSchedule(
        lr=cosine_schedule(
            step, total, settings.lr, settings.min_lr, round(settings.warmup_fraction * total)
        ),
        weight_decay=cosine_schedule(step, total, settings.weight_decay, settings.weight_decay_end),
        teacher_momentum=cosine_schedule(step, total, settings.teacher_momentum, 1.0),
        freeze_last_layer=step < round(settings.freeze_last_layer_fraction * total),
    )


# ---------------------------------------------------------------------------------------------
# Training state and step


@dataclasses.dataclass
class TrainState:
    """Everything a checkpoint holds: networks, optimizer, center and the next step."""

    settings: PretrainSettings
    student: DINONet
    teacher: DINONet
    optimizer: torch.optim.Optimizer
    center: Tensor
    step: int = 0


def new_state(settings: PretrainSettings, device: str | torch.device = "cpu") -> TrainState:
    """Fresh student (seeded by ``settings.seed``), teacher = student, AdamW, zero center."""
    torch.manual_seed(settings.seed)
    student = build_dino(settings).to(device)
    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    decay = [p for n, p in student.named_parameters() if p.ndim > 1 and not n.endswith("_token")]
    no_decay = [p for n, p in student.named_parameters() if p.ndim <= 1 or n.endswith("_token")]
    # pos_embed has ndim 3 and is decayed in DINO as well; tokens and 1-d params are not.
    optimizer = torch.optim.AdamW(
        [{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "no_decay": True}],
        lr=settings.lr,
    )
    center = torch.zeros(settings.out_dim, device=device)
    return TrainState(settings, student, teacher, optimizer, center)


def step_generators(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one step (a pure function of seed and step)."""
    rng = np.random.default_rng([seed, step])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, gen


def train_step(state: TrainState, globals_: Tensor, locals_: Tensor) -> dict[str, float]:
    """One optimisation step at ``state.step``; advances the step. Returns the step's metrics.

    Args:
        globals_: (2B, 3, G, G) from :func:`multi_crop`; locals_: (L*B, 3, l, l).
    Raises:
        FloatingPointError: when the loss is not finite (the run stops loudly).
    """
    s = state.settings
    sched = schedule_at(state.step, s)
    for group in state.optimizer.param_groups:
        group["lr"] = sched.lr
        group["weight_decay"] = 0.0 if group.get("no_decay") else sched.weight_decay
    batch = globals_.shape[0] // 2
    state.student.train()
    with torch.no_grad():
        t_cls, t_logits = state.teacher(globals_)
    s_cls, s_logits = state.student(globals_)
    if len(locals_):
        s_logits = torch.cat([s_logits, state.student(locals_)[1]])
    losses = {"dino": dino_loss(s_logits, t_logits, state.center, s.student_temp, s.teacher_temp)}
    if s.infonce_weight > 0:
        first, second = s_cls[:batch], s_cls[batch:]
        nce = info_nce(first, t_cls[batch:], s.infonce_temp)
        nce = (nce + info_nce(second, t_cls[:batch], s.infonce_temp)) / 2
        losses["infonce"] = s.infonce_weight * nce
    if s.koleo_weight > 0:
        kl = (koleo(s_cls[:batch]) + koleo(s_cls[batch:])) / 2
        losses["koleo"] = s.koleo_weight * kl
    loss = sum(losses.values())
    if not torch.isfinite(loss):
        raise FloatingPointError(f"pretrain: loss is {loss.item()} at step {state.step}")
    state.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if s.clip_grad > 0:
        nn.utils.clip_grad_norm_(state.student.parameters(), s.clip_grad)
    if sched.freeze_last_layer:
        state.student.head.prototypes.grad = None
    state.optimizer.step()
    ema_update(state.teacher, state.student, sched.teacher_momentum)
    with torch.no_grad():
        probs = F.softmax((t_logits - state.center) / s.teacher_temp, dim=-1)
        entropy = -(probs * probs.clamp_min(1e-12).log()).sum(-1).mean()
        state.center = updated_center(state.center, t_logits, s.center_momentum)
    state.step += 1
    metrics = {k: float(v.detach()) for k, v in losses.items()}
    metrics.update(loss=float(loss.detach()), lr=sched.lr, teacher_entropy=float(entropy))
    return metrics


# ---------------------------------------------------------------------------------------------
# Checkpoints and export


def save_checkpoint(path: str | Path, state: TrainState, extra: dict[str, Any]) -> None:
    """Write the full training state to ``path`` atomically (a rolling checkpoint)."""
    payload = {
        "student": state.student.state_dict(),
        "teacher": state.teacher.state_dict(),
        "optimizer": state.optimizer.state_dict(),
        "center": state.center,
        "step": state.step,
        "settings": dataclasses.asdict(state.settings),
        "args": extra,
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(
    path: str | Path, settings: PretrainSettings, device: str | torch.device = "cpu"
) -> TrainState:
    """Restore a training state saved by :func:`save_checkpoint` (same settings required)."""
    payload = torch.load(path, map_location="cpu", weights_only=True)
    saved = PretrainSettings.from_dict(payload["settings"])
    if saved != settings:
        differ = {
            k: (v, getattr(settings, k))
            for k, v in dataclasses.asdict(saved).items()
            if v != getattr(settings, k)
        }
        raise ValueError(f"{path}: checkpoint was made with other settings (saved, now): {differ}")
    state = new_state(settings, device)
    state.student.load_state_dict(payload["student"])
    state.teacher.load_state_dict(payload["teacher"])
    state.optimizer.load_state_dict(payload["optimizer"])
    state.center = payload["center"].to(device)
    state.step = int(payload["step"])
    return state


def backbone_state_dict(state: TrainState, dtype: torch.dtype = torch.float16) -> dict[str, Tensor]:
    """The teacher's backbone weights with timm keys (``cls_token``, ``blocks.0.attn.qkv...``)."""
    return {
        k: v.detach().to("cpu", dtype).clone()
        for k, v in state.teacher.backbone.state_dict().items()
    }


def export_backbone(path: str | Path, state: TrainState) -> None:
    """Write the teacher backbone as an fp16 timm-keyed state dict, atomically."""
    with atomic_path(path) as tmp:
        torch.save(backbone_state_dict(state), tmp)


# ---------------------------------------------------------------------------------------------
# The loop


def train(
    settings: PretrainSettings,
    views: ViewSource,
    checkpoint: str | Path,
    checkpoint_every: int = 50,
    resume: bool = True,
    stop_after: int | None = None,
    metrics_log: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> TrainState:
    """Train (or resume) until ``settings.steps``; checkpoint every ``checkpoint_every`` steps.

    Args:
        views: the view source (see module docstring).
        checkpoint: the rolling checkpoint; resumed from when it exists and ``resume`` is set.
        stop_after: stop once this step is reached (for tests and time-sliced runs).
        metrics_log: file that receives one JSON line of metrics per checkpoint.
        device: where the networks run (the crops are made on the CPU).
    Returns:
        The final training state (also saved to ``checkpoint``).
    """
    checkpoint = Path(checkpoint)
    if resume and checkpoint.exists():
        state = load_checkpoint(checkpoint, settings, device)
        log.info("resumed from %s at step %d", checkpoint, state.step)
    else:
        state = new_state(settings, device)
    end = settings.steps if stop_after is None else min(stop_after, settings.steps)
    extra = {"provenance": provenance()}
    started, window = time.time(), []
    with tqdm(total=end, initial=state.step, desc="pretrain", mininterval=30) as bar:
        while state.step < end:
            rng, gen = step_generators(settings.seed, state.step)
            torch.manual_seed(int(rng.integers(2**62)))  # anything drawing from the global RNG
            first, second = views(rng, settings.batch_size)
            globals_, locals_ = multi_crop(first, second, settings, gen)
            window.append(train_step(state, globals_.to(device), locals_.to(device)))
            bar.update(1)
            if state.step % checkpoint_every == 0 or state.step == end:
                save_checkpoint(checkpoint, state, extra)
                summary = {k: float(np.mean([m[k] for m in window])) for k in window[0]}
                summary.update(step=state.step, minutes=(time.time() - started) / 60)
                log.info("%s", json.dumps(summary))
                if metrics_log is not None:
                    with open(metrics_log, "a") as handle:
                        handle.write(json.dumps(summary) + "\n")
                window = []
    return state
