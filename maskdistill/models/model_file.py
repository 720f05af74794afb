"""Model files: the trained network a stage hands on, with what rebuilds it (data/README.md).

A dict with ``model`` (the state dict), ``settings`` (everything that decides the network and
rebuilds it: the builders' ``backbone`` description, the classes) and ``extra`` (provenance),
written atomically and read with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from maskdistill.io import atomic_path


def save_state(
    path: str | Path,
    state_dict: Mapping[str, torch.Tensor],
    settings: Mapping[str, Any],
    extra: Mapping[str, Any],
) -> None:
    """Write a trained network for the next stages: ``model`` (the state dict), ``settings``
    (everything needed to build it again) and ``extra`` (provenance), atomically."""
    payload = {"model": dict(state_dict), "settings": dict(settings), "extra": dict(extra)}
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_weights(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_state` (weights only: nothing else is unpickled)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as error:
        raise ValueError(f"{path}: not a readable maskdistill model ({error})") from error
    if not isinstance(payload, dict) or not {"model", "settings"} <= set(payload):
        raise ValueError(f"{path}: not a maskdistill model file (no 'model' and 'settings')")
    return payload
