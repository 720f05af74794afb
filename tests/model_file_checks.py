"""Helpers for the tests that a trained model file works alone (stages 3 and 5)."""

from __future__ import annotations

from pathlib import Path

import pytest

from maskdistill.models.model_file import load_weights, save_state


def copy_alone(model: Path, init: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Copy ``model`` alone into an empty sibling folder ``elsewhere/`` of its folder, delete
    ``init`` (the weights its training started from) and make the copy's folder the current
    directory; returns that folder."""
    alone = model.parent / "elsewhere"
    alone.mkdir()
    (alone / "model.pth").write_bytes(model.read_bytes())
    init.unlink()
    monkeypatch.chdir(alone)
    return alone


def undescribed_copy(model: Path) -> Path:
    """``old.pth`` beside ``model``: the same file without its backbone description, as a model
    file from before model files described themselves."""
    payload = load_weights(model)
    del payload["settings"]["backbone"]
    old = model.parent / "old.pth"
    save_state(old, payload["model"], payload["settings"], {})
    return old
