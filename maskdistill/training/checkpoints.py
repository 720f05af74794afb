"""Training checkpoints: write, read (refusing other settings), and the resume folder's files.

A checkpoint is one ``torch.save`` dict written atomically: ``step`` (the next step to run),
``settings`` (everything that decides the result; resuming with other settings is refused),
``rng`` (the global RNG states), the state dicts of the networks and optimizer, and ``extra``
(provenance). It loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from maskdistill.io import atomic_path
from maskdistill.training.rng import rng_state, set_rng_state

log = logging.getLogger(__name__)


class CheckpointError(ValueError):
    """A checkpoint that cannot be resumed from; the message names the file and the way out."""


def save_checkpoint(
    path: str | Path,
    *,
    step: int,
    settings: Mapping[str, Any],
    states: Mapping[str, Any],
    extra: Mapping[str, Any] | None = None,
) -> None:
    """Write a training checkpoint atomically (a rolling file: the previous one is replaced).

    Args:
        step: the next step to run.
        settings: the run's settings (JSON-like values).
        states: state dicts by name (``model``, ``optimizer``, ``scaler``, ...) or tensors.
        extra: anything else to keep (provenance).
    """
    payload = {
        "step": int(step),
        "settings": dict(settings),
        "rng": rng_state(),
        **dict(states),
        "extra": dict(extra or {}),
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_checkpoint(
    path: str | Path,
    settings: Mapping[str, Any],
    *,
    may_change: Iterable[str] = (),
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` for a run with ``settings``.

    Args:
        may_change: settings whose saved value may differ (the caller decides what a change
            means, e.g. more steps continue a finished run).

    Raises:
        CheckpointError: the file is not a readable checkpoint, or was made with other settings;
            the message names the file, the settings that differ and how to start over.
    """
    path = Path(path)
    start_over = f"delete {path} to start from step 0 (a command run by hand can pass --no-resume)"
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:
        raise CheckpointError(
            f"{path}: not a readable training checkpoint ({type(error).__name__}: {error}); "
            f"{start_over}"
        ) from error
    if not isinstance(payload, dict) or not {"step", "settings"} <= set(payload):
        raise CheckpointError(f"{path}: not a maskdistill training checkpoint; {start_over}")
    saved, now = _jsonable(payload["settings"]), _jsonable(dict(settings))
    changed = set(may_change)
    differ = {
        key: (saved.get(key), now.get(key))
        for key in sorted(set(saved) | set(now))
        if key not in changed and saved.get(key) != now.get(key)
    }
    if differ:
        listing = "; ".join(f"{k}: saved {a!r}, now {b!r}" for k, (a, b) in differ.items())
        raise CheckpointError(
            f"{path}: the checkpoint was made with other settings ({listing}); {start_over}, "
            "or change the settings back"
        )
    return payload


RESUME_MANIFEST = ".maskdistill-resume.json"
"""The file in a resume folder that lists what maskdistill wrote there (all it ever removes)."""


def resume_files(
    folder: str | Path, settings: Mapping[str, Any], main: bool = True
) -> tuple[Path, Path]:
    """The checkpoint and metrics log of a run with ``settings`` in a run's resume folder.

    Their names hold a content key of ``settings`` (which include a digest of the training
    data), so that a rerun after a kill resumes while a rerun after a change of settings or
    data starts over. The files of earlier runs with other settings are removed (by the
    ``main`` process only, with a log line), but only those the folder's manifest
    (:data:`RESUME_MANIFEST`) lists as written by maskdistill: a folder of the user's loses
    nothing. ``checkpoint-<key>/`` (the detectron2 backend's own folder) counts as the run's.
    """
    folder = Path(folder)
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:12]
    checkpoint, metrics = folder / f"checkpoint-{key}.pth", folder / f"metrics-{key}.jsonl"
    if main:
        folder.mkdir(parents=True, exist_ok=True)
        current = {checkpoint.name, metrics.name, checkpoint.stem}
        for name in sorted(_manifest(folder) - current):
            path = folder / name
            if path.exists():
                log.info("removing %s: made with other settings or data; starting over", path)
                shutil.rmtree(path) if path.is_dir() else path.unlink()
        with atomic_path(folder / RESUME_MANIFEST) as tmp:
            tmp.write_text(json.dumps(sorted(current)) + "\n")
    return checkpoint, metrics


def remove_resume_files(folder: str | Path) -> None:
    """Remove what the manifest of a resume folder lists, the manifest, and the folder when it
    is then empty (a finished run's checkpoints are no longer needed)."""
    folder = Path(folder)
    for name in sorted(_manifest(folder)):
        path = folder / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
    (folder / RESUME_MANIFEST).unlink(missing_ok=True)
    if folder.is_dir() and not any(folder.iterdir()):
        folder.rmdir()


def _manifest(folder: Path) -> set[str]:
    """The names a resume folder's manifest lists; only plain names of that folder count."""
    path = folder / RESUME_MANIFEST
    if not path.is_file():
        return set()
    try:
        names = json.loads(path.read_text())
    except ValueError:
        return set()
    pattern = re.compile(r"^(checkpoint|metrics)-[0-9a-f]{12}(\.pth|\.jsonl)?$")
    return (
        {n for n in names if isinstance(n, str) and pattern.match(n)}
        if isinstance(names, list)
        else set()
    )


def restore_rng(payload: Mapping[str, Any]) -> None:
    """Restore the RNG states a checkpoint holds."""
    set_rng_state(payload["rng"])


def _jsonable(values: Mapping[str, Any]) -> dict[str, Any]:
    """Settings with tuples turned into lists, so that saved and current compare equal."""
    return json.loads(json.dumps(values))
