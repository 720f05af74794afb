"""A run's view of the content-addressed cache, and the cache entries no run uses.

Every stage writes under ``<results>/cache/<stage>/<key>/`` (the key hashes what decides the
stage's output: its settings and the keys of its inputs), so runs that agree on a stage share
its folder. A run folder (``<results>/<run_name>/``) holds the run's own metrics and pictures, a
manifest ``stages.json`` naming the cache folders the run uses, and one relative symbolic link
per stage (``<run>/distill -> ../cache/distill/<key>``) so that a run reads like a folder of its
own. The manifest names each folder relative to the run folder, as the link does.
:func:`unused_entries` lists the cache folders that no run's manifest names.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from maskdistill.io import atomic_path

log = logging.getLogger(__name__)

MANIFEST = "stages.json"
"""The file in a run folder that names the cache folders the run uses."""
CACHE = "cache"


def write_run_view(run_dir: str | Path, stages: Mapping[str, str | Path]) -> list[str]:
    """Link ``run_dir/<name>`` to each stage folder and write ``run_dir/stages.json``.

    Args:
        run_dir: the run folder.
        stages: stage name (a plain file name) -> the cache folder it uses.

    Returns:
        The names left unlinked: a real file or folder is there (a run folder written before
        stages were cached); it is kept, and the manifest still names the cache folder.
    """
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    kept = []
    targets = {}  # name -> the cache folder, relative to the run folder
    for name, folder in stages.items():
        if Path(name).name != name or name in ("", ".", "..", MANIFEST):
            raise ValueError(f"stage name {name!r}: expected a plain file name")
        targets[name] = os.path.relpath(Path(folder).resolve(), run_dir.resolve())
        link = run_dir / name
        if link.exists() and not link.is_symlink():
            log.warning("%s is not a link (an older run layout): left as it is", link)
            kept.append(name)
            continue
        if link.is_symlink():
            link.unlink()
        link.symlink_to(targets[name], target_is_directory=True)
    with atomic_path(run_dir / MANIFEST) as tmp:
        tmp.write_text(json.dumps({"stages": targets}, indent=2, sort_keys=True) + "\n")
    return kept


def used_folders(results: str | Path) -> set[Path]:
    """The cache folders named by the manifest of any run folder in ``results`` (resolved; a
    manifest names them relative to its run folder, so this holds from any directory)."""
    used = set()
    manifests = [*Path(results).glob(f"*/{MANIFEST}"), *Path(results).glob(f"*/*/{MANIFEST}")]
    for manifest in sorted(manifests):  # a run's, or a sweep run's (<run_name>/<setting>=<value>)
        try:
            stages = json.loads(manifest.read_text())["stages"]
            used.update((manifest.parent / folder).resolve() for folder in stages.values())
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            raise ValueError(f"{manifest}: not a run manifest ({error})") from error
    return used


@dataclass(frozen=True)
class CacheEntry:
    """One content-addressed folder: ``<results>/cache/<stage>/<key>``, its size in bytes."""

    path: Path
    size: int


def folder_size(path: Path) -> int:
    """Bytes of the files below ``path`` (links not followed)."""
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def unused_entries(results: str | Path) -> list[CacheEntry]:
    """The cache folders of ``results`` that no run's manifest names, in path order.

    A run that has not finished yet has no manifest: clean only when no workflow runs.
    """
    used = used_folders(results)
    cache = Path(results) / CACHE
    entries = []
    for folder in sorted(cache.glob("*/*")):
        if folder.is_dir() and not folder.is_symlink() and folder.resolve() not in used:
            entries.append(CacheEntry(folder, folder_size(folder)))
    return entries


def remove_entries(entries: list[CacheEntry]) -> int:
    """Remove the folders of ``entries``; returns the bytes freed."""
    for entry in entries:
        shutil.rmtree(entry.path)
    return sum(entry.size for entry in entries)


def skipped_image_notes(
    discover_shards: list[str | os.PathLike], run: str | os.PathLike
) -> list[str]:
    """One line per skip list of a run that names images (they are missing from its results):
    the lists next to its discover shards, and those of stages 3 and 5 in its run folder."""
    from maskdistill.images import read_skipped

    lists = [Path(f"{shard}.skipped.tsv") for shard in discover_shards]
    lists += sorted(Path(run).rglob("*.skipped.tsv"))
    return [
        f"{len(rows)} unreadable images skipped, listed in {path}"
        for path in lists
        if path.is_file() and (rows := read_skipped(path))
    ]
