"""Reading weight files safely and loading them strictly, with errors that name the file.

Checkpoints are untrusted input: they are read with ``torch.load(..., weights_only=True)`` (tensors,
containers, numbers and the ``argparse.Namespace`` that DINO and MoCo checkpoints carry; never
arbitrary pickled objects) or as safetensors. Loads are strict: a missing, unexpected or
mis-shaped tensor is an error listing them, never a silently random layer.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import socket
import urllib.parse
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file

HUB_TIMEOUT_S = 15
"""Seconds a weight download may wait for the network before it fails."""
HUB_PROBE_TIMEOUT_S = 5
"""Seconds to wait for the Hugging Face hub to answer before using the local cache alone."""


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


def described_backbone(settings: Mapping[str, Any], source: str) -> Mapping[str, Any]:
    """The backbone description of a model file's ``settings`` (what rebuilds its network
    without the initial weights).

    Raises:
        ValueError: naming ``source`` when the file has none (written by a maskdistill from
            before model files described themselves: its training is rerun).
    """
    if "backbone" not in settings:
        raise ValueError(
            f"{source}: the model file does not describe its backbone (written by an older "
            "maskdistill); train it again"
        )
    return settings["backbone"]


def hub_endpoint() -> tuple[str, int]:
    """(host, port) of the Hugging Face hub that timm downloads from (``HF_ENDPOINT``)."""
    parts = urllib.parse.urlsplit(os.environ.get("HF_ENDPOINT") or "https://huggingface.co")
    return parts.hostname or "huggingface.co", parts.port or (80 if parts.scheme == "http" else 443)


def reachable(host: str, port: int, timeout: float = HUB_PROBE_TIMEOUT_S) -> bool:
    """Whether a TCP connection to ``host:port`` opens within ``timeout`` seconds."""
    try:
        socket.create_connection((host, port), timeout=timeout).close()
    except OSError:
        return False
    return True


@contextlib.contextmanager
def hub_cache_only() -> Iterator[None]:
    """Hugging Face hub downloads from the local cache only, without network requests (as with
    ``HF_HUB_OFFLINE=1``), inside the block."""
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        constants.HF_HUB_OFFLINE = before


def download(fetch: Callable[[], Any], name: str, setting: str, hub: bool = False) -> Any:
    """Run ``fetch`` (a download, from the Hugging Face hub when ``hub``) with short timeouts.

    A hub download first checks in at most 5 s that the hub can be reached; when it cannot
    (offline, a firewall), the weights come from the local cache alone, so an offline machine
    with a filled cache works and one without fails at once instead of retrying for a minute.

    Raises:
        ValueError: one line naming the weights, the config setting that asked for them and the
            ways out (a local file, a filled cache), when the download fails.
    """
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(HUB_TIMEOUT_S)
    offline = hub and not reachable(*hub_endpoint())
    try:
        if offline:
            with hub_cache_only():
                return fetch()
        return fetch()
    except Exception as error:
        raise ValueError(_download_error(name, setting, error, offline)) from error
    finally:
        socket.setdefaulttimeout(previous)


def _download_error(name: str, setting: str, error: Exception, offline: bool) -> str:
    if offline:
        from huggingface_hub import constants

        host = hub_endpoint()[0]
        return (
            f"{setting}: the weights {name!r} are not in the Hugging Face cache "
            f"({constants.HF_HUB_CACHE}) and {host} cannot be reached. Set {setting} to a local "
            "checkpoint file, or download the weights once on a machine with network access "
            "and copy its cache folder here (then HF_HUB_OFFLINE=1 skips the network check)"
        )
    return (
        f"{setting}: cannot download the weights {name!r} ({type(error).__name__}: {error}). "
        f"Offline? Set {setting} to a local weights file, or fetch them once on a machine with "
        f"network access (torch hub cache: {torch.hub.get_dir()}, Hugging Face cache: "
        "$HF_HOME) and copy the cache here"
    )
