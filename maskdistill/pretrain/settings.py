"""Every setting of a pretraining run (stored in its checkpoints; resume checks them)."""

from __future__ import annotations

import dataclasses
from typing import Any

from maskdistill.config import defaults

VIEWS = ("dataset", "paired-demo")
INFONCE_WEIGHT = {"paired-demo": 1.0, "dataset": 0.0}
"""``infonce_weight`` when the config leaves it null: the InfoNCE term needs paired views."""


@dataclasses.dataclass(frozen=True)
class PretrainSettings:
    """Every setting of a pretraining run (stored in checkpoints; resume checks them).

    The fields up to ``seed`` are the config's ``pretrain`` settings, whose defaults live in the
    config schema (:meth:`with_defaults`); the others are fixed recipe values.
    """

    patch_size: int
    embed_dim: int
    depth: int
    num_heads: int
    global_size: int  # pixels, side of the global crops (the backbone's native input)
    local_size: int  # pixels, side of the local crops
    num_local: int
    hue: float  # colour jitter of the hue, in turns
    out_dim: int  # DINO head prototypes
    teacher_temp: float
    batch_size: int
    steps: int
    lr: float
    warmup_fraction: float
    teacher_momentum: float
    infonce_weight: float  # paired views only
    koleo_weight: float
    seed: int
    global_scale: tuple[float, float] = (0.4, 1.0)  # area fraction of the source image
    local_scale: tuple[float, float] = (0.05, 0.4)
    brightness: float = 0.4  # colour jitter strengths, relative
    contrast: float = 0.4
    saturation: float = 0.2
    head_hidden: int = 512
    head_bottleneck: int = 128
    student_temp: float = 0.1
    center_momentum: float = 0.9
    min_lr: float = 1e-6
    weight_decay: float = 0.04
    weight_decay_end: float = 0.4
    freeze_last_layer_fraction: float = 0.05
    clip_grad: float = 3.0
    infonce_temp: float = 0.2

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
    def with_defaults(cls, views: str = "dataset", **values: Any) -> PretrainSettings:
        """Settings from ``values``, the rest from the config schema's ``pretrain`` defaults.

        A null ``infonce_weight`` becomes :data:`INFONCE_WEIGHT` of ``views``.
        """
        fields = {f.name for f in dataclasses.fields(cls)}
        merged = {k: v for k, v in defaults("pretrain").items() if k in fields}
        merged.update(values)
        if merged.get("infonce_weight") is None:
            merged["infonce_weight"] = INFONCE_WEIGHT[views]
        return cls.from_dict(merged)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> PretrainSettings:
        """Settings from a checkpoint's ``settings`` dict (lists back to tuples)."""
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = set(values) - fields
        if unknown:
            raise ValueError(f"unknown pretrain settings {sorted(unknown)}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in values.items()})
