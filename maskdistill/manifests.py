"""Per-shard manifests of a folder dataset: what the workflow's DAG holds instead of its images.

A folder's images enter the workflow through one small TSV file per shard (each image's
relative path, size in bytes and modification time in ns, sorted by path), the input of the
shard's jobs, so that Snakemake's DAG holds one file per shard whatever the number of images.
The workflow lists the folder once when it parses the rules and rewrites a manifest only when
its content changed: adding, editing or removing images makes the manifests of the shards they
land in newer than those shards' outputs, so exactly those shards rerun.

Torch-free: the workflow imports it every time it parses the rules.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

from maskdistill.data.folder import list_images
from maskdistill.io import atomic_path
from maskdistill.sharding import shard_of

HEADER = "file\tbytes\tmtime_ns\n"


def manifest_paths(folder: str | os.PathLike, num_shards: int) -> list[Path]:
    """The manifests of ``num_shards`` shards: ``folder/shard-<i>-of-<S>.tsv``."""
    return [Path(folder) / f"shard-{i}-of-{num_shards}.tsv" for i in range(num_shards)]


def manifest_rows(root: str | os.PathLike, names: list[str]) -> list[str]:
    """One TSV row per image of ``names`` (relative to ``root``): path, bytes, mtime in ns
    (-1 and 0 for a file that cannot be read: a broken link)."""
    rows, folder = [], os.fspath(root)
    for name in names:
        try:
            stat = os.stat(f"{folder}/{name}")  # a string join: millions of names
            size, mtime = stat.st_size, stat.st_mtime_ns
        except OSError:
            size, mtime = -1, 0
        rows.append(f"{name}\t{size}\t{mtime}\n")
    return rows


def write_manifests(
    root: str | os.PathLike, names: list[str], num_shards: int, folder: str | os.PathLike
) -> list[Path]:
    """Write the manifests of ``names`` (the folder's images, as its listing gives them) into
    ``folder``, rewriting only those whose content changed; returns every manifest's path."""
    shards: list[list[str]] = [[] for _ in range(num_shards)]
    for name, row in zip(names, manifest_rows(root, names), strict=True):
        shards[shard_of(name, num_shards)].append(row)
    paths = manifest_paths(folder, num_shards)
    Path(folder).mkdir(parents=True, exist_ok=True)
    for path, rows in zip(paths, shards, strict=True):
        text = HEADER + "".join(sorted(rows))
        if not path.is_file() or path.read_text(errors="surrogateescape") != text:
            with atomic_path(path) as tmp:
                Path(tmp).write_text(text, errors="surrogateescape")
    return paths


@functools.cache
def folder_listing(root: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(the image files, the other visible files) of a folder (``list_images``), listed once per
    process: a workflow parse, whose sweep runs all read the same dataset."""
    others: list[str] = []
    images = list_images(Path(root), others)
    return tuple(images), tuple(others)


@functools.cache
def folder_manifests(root: str, num_shards: int, folder: str) -> tuple[Path, ...]:
    """:func:`write_manifests` of the folder's listing, once per process (a sweep's runs share
    the dataset's manifests)."""
    images, _ = folder_listing(root)
    return tuple(write_manifests(root, list(images), num_shards, folder))
