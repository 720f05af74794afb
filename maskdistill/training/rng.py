"""Seeding for training: per-step generators and the global RNG states a checkpoint keeps.

Every random draw of a training step ``s`` comes from generators seeded by ``(seed, s)``
(:func:`step_generators`, :func:`seed_step`), so a resumed run draws what the uninterrupted run
would have.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np
import torch


def step_generators(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The numpy and torch generators of one step (a pure function of seed and step)."""
    rng = np.random.default_rng([seed, step])
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    return rng, gen


def seed_step(seed: int, step: int, rank: int = 0) -> None:
    """Seed torch's global generators (CPU and CUDA) for step ``step`` of process ``rank``.

    For the randomness that happens inside library code (dropout, Mask R-CNN's proposal
    sampling and scale choice), which draws from the global generators.
    """
    torch.manual_seed(int(np.random.default_rng([seed, step, 1, rank]).integers(2**62)))


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's global generators seeded by ``seed``, restoring them after.

    For building a network: its random initialisation is then a function of the seed.
    """
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU and CUDA, numpy, Python) as tensors and plain types."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "gauss": float(gauss),
        },
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Mapping[str, Any]) -> None:
    """Restore states saved by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    n = state["numpy"]
    np.random.set_state(
        (n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"])
    )
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
