"""The metrics log of a training run: JSON lines, one per step or epoch, safe to resume."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from maskdistill.io import atomic_path, read_json_lines


class MetricsLog:
    """A JSON-lines file of training metrics, one object per step or epoch, appended.

    Each record holds, under ``key``, the number of steps (or epochs) done when it was written.
    Opened for a run that resumes with ``start_step`` steps done, it first drops the records of
    later steps (written after the checkpoint the run resumes from), so the file never holds a
    step twice.
    """

    def __init__(self, path: str | Path | None, start_step: int = 0, key: str = "step") -> None:
        self.path = None if path is None else Path(path)
        self.key = key
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            kept = [r for r in read_json_lines(self.path) if r.get(key, 0) <= start_step]
            with atomic_path(self.path) as tmp:
                tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))

    def write(self, record: Mapping[str, Any]) -> None:
        """Append one record (it should hold the steps done under ``key``)."""
        if self.path is not None:
            with open(self.path, "a") as handle:
                handle.write(json.dumps(dict(record)) + "\n")
