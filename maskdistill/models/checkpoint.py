"""Reading weight files safely and loading them strictly, with errors that name the file.

Checkpoints are untrusted input: they are read with ``torch.load(..., weights_only=True)`` (tensors,
containers, numbers and the ``argparse.Namespace`` that DINO and MoCo checkpoints carry; never
arbitrary pickled objects) or as safetensors. Loads are strict: a missing, unexpected or
mis-shaped tensor is an error listing them, never a silently random layer.
"""

from __future__ import annotations

import argparse
import socket
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

HUB_TIMEOUT_S = 15
"""Seconds a weight download may wait for the network before it fails."""


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """The raw object of a weights file: a dict (safe loading only, see the module doc)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such weights file")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # any failure to unpickle means: not a usable checkpoint
        raise ValueError(f"{path}: not a readable checkpoint ({error})") from error
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: not a checkpoint (holds a {type(obj).__name__}, not a dict)")
    return obj


def unwrap(obj: dict[str, Any], wrappers: Iterable[str]) -> dict[str, Any]:
    """The first of ``wrappers`` (``state_dict``, ``model``, ...) holding a dict, else ``obj``."""
    for wrapper in wrappers:
        if isinstance(obj.get(wrapper), dict):
            return obj[wrapper]
    return obj


def listing(items: list[str], limit: int = 20) -> str:
    """At most ``limit`` items, comma separated, with a count of the rest."""
    if not items:
        return "none"
    more = f" ... ({len(items) - limit} more)" if len(items) > limit else ""
    return ", ".join(items[:limit]) + more


def load_strict(
    model: torch.nn.Module,
    state_dict: dict[str, torch.Tensor],
    source: str,
    may_be_missing: Callable[[str], bool] = lambda key: False,
) -> None:
    """Load every tensor of ``state_dict`` into ``model`` or raise ValueError listing the misfits.

    Args:
        model: the network to fill.
        state_dict: tensors by the model's key names.
        source: the file (or hub name) named in the error.
        may_be_missing: keys of the model the weights need not provide (e.g. a classifier
            ``fc.*`` that the next stage replaces); they keep their initialisation.
    """
    expected = model.state_dict()
    missing = sorted(k for k in set(expected) - set(state_dict) if not may_be_missing(k))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = [
        f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in state_dict.items()
        if k in expected and v.shape != expected[k].shape
    ]
    if missing or unexpected or shapes:
        raise ValueError(
            f"{source}: weights do not fit the network; missing keys: {listing(missing)}; "
            f"unexpected keys: {listing(unexpected)}; shape mismatches: {listing(shapes)}"
        )
    model.load_state_dict(state_dict, strict=False)


def download(fetch: Callable[[], Any], name: str, setting: str) -> Any:
    """Run ``fetch`` (a hub download) with a short network timeout.

    Raises:
        ValueError: naming the weights, the config setting that asked for them and the ways out
            (a local file, or a machine with network access to fill the cache), when the
            download fails (offline, a firewall, a wrong name).
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(HUB_TIMEOUT_S)
    try:
        return fetch()
    except Exception as error:
        raise ValueError(
            f"{setting}: cannot download the weights {name!r} ({type(error).__name__}: "
            f"{error}). Offline? Set {setting} to a local weights file, or fetch them once on a "
            f"machine with network access (torch hub cache: {torch.hub.get_dir()}, Hugging "
            "Face cache: $HF_HOME) and copy the cache here"
        ) from error
    finally:
        socket.setdefaulttimeout(previous)
