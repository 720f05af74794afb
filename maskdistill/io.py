"""File helpers shared by the command-line front ends: atomic writes, JSON, RGB pictures."""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling of ``path``; rename it to ``path`` only if the block succeeds.

    A crash or an error inside the block leaves no partial ``path`` behind (the temporary file
    is removed), so a rerun never mistakes a half-written output for a finished one. A folder
    replaces an existing folder (the old one is moved aside, then removed). The
    temporaries of earlier writers of ``path`` that were killed (``.<name>.tmp-<pid>``) are
    removed first: one writer per output at a time, as Snakemake runs one job per output.
    """
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    for stale in final.parent.glob(f".{glob.escape(final.name)}.tmp-*"):
        _remove(stale)
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    old = final.with_name(f".{final.name}.old-{os.getpid()}")
    try:
        yield tmp
        if tmp.is_dir() and final.is_dir():  # a folder cannot replace a folder in one rename
            os.replace(final, old)
        os.replace(tmp, final)
    finally:
        _remove(tmp)
        _remove(old)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def write_json(path: str | os.PathLike, obj: Any, compact: bool = False) -> None:
    """Write ``obj`` as indented JSON (``compact``: on one line, for large files), atomically."""
    text = json.dumps(obj, separators=(",", ":")) if compact else json.dumps(obj, indent=2)
    with atomic_path(path) as tmp:
        tmp.write_text(text + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Read JSON, naming the file in the error when it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{path}: not valid JSON ({error})") from error


def read_json_lines(path: str | os.PathLike) -> list[Any]:
    """The records of a JSON-lines file, e.g. a metrics log (an empty list for a missing file)."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as error:
                raise ValueError(f"{path}:{number}: not a JSON line ({error})") from error
    return records


def write_png(path: str | os.PathLike, rgb: Any) -> None:
    """Write an (H, W, 3) uint8 array (a picture or a chart) as PNG, atomically."""
    from PIL import Image

    with atomic_path(path) as tmp:
        Image.fromarray(rgb).save(tmp, format="PNG")
    log.info("wrote %s (%d x %d)", path, rgb.shape[1], rgb.shape[0])
