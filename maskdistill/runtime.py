"""Where and how a stage computes: device choice, mixed-precision autocast, CPU threads."""

from __future__ import annotations

import contextlib
import logging
import os

import torch

log = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> cuda when available, else cpu; ``cuda`` without a GPU is an error."""
    if name not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {name!r}")
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("device cuda: no CUDA GPU is available (use --device cpu or auto)")
    return torch.device(name)


def check_precision(precision: str) -> None:
    """Raise ValueError unless ``precision`` is one of :data:`PRECISIONS`."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {tuple(PRECISIONS)}, got {precision!r}")


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """Autocast to fp16/bf16 on ``device``, or nothing for fp32."""
    check_precision(precision)
    dtype = PRECISIONS[precision]
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def training_precision(device: torch.device, amp: bool) -> str:
    """The autocast precision of a training loop: fp16 with ``amp`` on CUDA, else fp32.

    Mixed precision pays on GPUs only; on the CPU training stays in fp32 (and exactly
    reproducible).
    """
    return "fp16" if amp and device.type == "cuda" else "fp32"


def set_threads(threads: int | None) -> None:
    """Limit torch's CPU threads (None leaves torch's default)."""
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads: expected >= 1, got {threads}")
        torch.set_num_threads(threads)


def available_cpus() -> int:
    """The CPUs this process may run on (its affinity mask where the system has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def loader_workers(requested: int) -> int:
    """Data-loading processes: ``requested``, at most the CPUs available (a preset sized for a
    GPU node asks for more than a laptop has; PyTorch would warn on every loader)."""
    if requested < 0:
        raise ValueError(f"workers: expected >= 0, got {requested}")
    cpus = available_cpus()
    if requested > cpus:
        log.info("%d data-loading workers asked for, %d CPUs available: using %d", requested,
                 cpus, cpus)  # fmt: skip
        return cpus
    return requested
