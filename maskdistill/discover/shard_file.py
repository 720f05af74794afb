"""Discover shards: the HDF5 files that stage 1 (discover) writes and stage 2 (cluster) reads.

One file holds one record per image. Fixed-size fields are one dataset each, one row per image;
the per-image grids (mask, attention), whose sizes differ between images, are concatenated into
one flat dataset each and sliced with ``grid_offset``. The layout is documented in
data/README.md ("Discover shards").
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from maskdistill.io import atomic_path
from maskdistill.masks import upsample_grid_mask
from maskdistill.names import check_name

FORMAT = "maskdistill.discover_shard"
FORMAT_VERSION = 1

# name -> (dtype, shape of one row)
_ROW_FIELDS: dict[str, tuple[Any, tuple[int, ...]]] = {
    "id": (np.int64, ()),
    "image_size": (np.int32, (2,)),
    "resized_size": (np.int32, (2,)),
    "grid_shape": (np.int32, (2,)),
    "patch_size": (np.int32, ()),
    "source": (np.int64, ()),
    "box": (np.int32, (4,)),
    "empty": (np.bool_, ()),
}
_NATIVE_ATTRS = ("format", "format_version", "num_images")
# every dataset a shard holds (feature is written even for an empty shard)
_DATASETS = (*_ROW_FIELDS, "file_name", "feature", "grid_offset", "grid_mask", "attention")
_STRING = h5py.string_dtype(encoding="utf-8")
_READ_BLOCK = 1024


class ShardWriter:
    """Append records to a new shard; the file appears at ``path`` only when closed cleanly.

    Use as a context manager: an exception inside the block leaves no file behind. Memory is
    bounded by one record: rows are appended to resizable, chunked datasets. ``attrs`` is stored
    at the clean close, so values filled in while writing (e.g. the skipped images) are kept.
    """

    def __init__(self, path: str | os.PathLike, attrs: dict[str, Any]):
        self.path = Path(path)
        self.attrs = attrs
        self._atomic = atomic_path(self.path)
        self._file: h5py.File | None = None
        self.count = 0
        self._cells = 0

    def __enter__(self) -> ShardWriter:
        tmp = self._atomic.__enter__()
        self._file = h5py.File(tmp, "w")
        self._file.attrs["format"] = FORMAT
        self._file.attrs["format_version"] = FORMAT_VERSION
        for name, (dtype, shape) in _ROW_FIELDS.items():
            self._file.create_dataset(
                name, shape=(0, *shape), maxshape=(None, *shape), dtype=dtype, chunks=True
            )
        self._file.create_dataset("file_name", shape=(0,), maxshape=(None,), dtype=_STRING)
        self._file.create_dataset(
            "grid_offset", data=np.zeros(1, np.int64), maxshape=(None,), chunks=True
        )
        for name, dtype in (("grid_mask", np.bool_), ("attention", np.float16)):
            self._file.create_dataset(
                name, shape=(0,), maxshape=(None,), dtype=dtype, chunks=(65536,), compression="gzip"
            )
        return self

    def append(self, record: dict[str, Any]) -> None:
        """Add one image's record (keys as returned by :func:`read_shard`)."""
        f = self._file
        assert f is not None, "use ShardWriter as a context manager"
        h, w = (int(v) for v in record["grid_shape"])
        grid_mask = np.asarray(record["grid_mask"], dtype=bool)
        attention = np.asarray(record["attention"], dtype=np.float16)
        if grid_mask.shape != (h, w) or attention.shape != (h, w):
            raise ValueError(
                f"{record['file_name']}: grid_mask {grid_mask.shape} and attention "
                f"{attention.shape} must both have the grid shape {(h, w)}"
            )
        feature = np.asarray(record["feature"], dtype=np.float32)
        if "feature" not in f:
            f.create_dataset(
                "feature", shape=(0, feature.size), maxshape=(None, feature.size), dtype=np.float32
            )
        elif f["feature"].shape[1] != feature.size:
            raise ValueError(
                f"{record['file_name']}: feature has {feature.size} dims, "
                f"the shard's others have {f['feature'].shape[1]}"
            )
        row = self.count
        for name in (*_ROW_FIELDS, "file_name", "feature"):
            f[name].resize(row + 1, axis=0)
        for name in _ROW_FIELDS:
            f[name][row] = record[name]
        f["file_name"][row] = record["file_name"]
        f["feature"][row] = feature.reshape(-1)
        start, stop = self._cells, self._cells + h * w
        for name, values in (("grid_mask", grid_mask), ("attention", attention)):
            f[name].resize(stop, axis=0)
            f[name][start:stop] = values.reshape(-1)
        f["grid_offset"].resize(row + 2, axis=0)
        f["grid_offset"][row + 1] = stop
        self._cells = stop
        self.count += 1

    def __exit__(self, exc_type, exc, tb) -> None:
        assert self._file is not None
        if "feature" not in self._file:  # no image: keep the schema readable
            self._file.create_dataset("feature", shape=(0, 0), dtype=np.float32)
        self._file.attrs["num_images"] = self.count
        for key, value in self.attrs.items():
            if key in _NATIVE_ATTRS:
                raise ValueError(f"shard attribute {key!r} is reserved")
            self._file.attrs[key] = json.dumps(value)
        self._file.close()
        self._atomic.__exit__(exc_type, exc, tb)


def write_shard(
    path: str | os.PathLike, records: Iterable[dict[str, Any]], attrs: dict[str, Any]
) -> int:
    """Write ``records`` to a new shard at ``path`` atomically; return the number written.

    ``attrs`` values must be JSON-serialisable (settings, backbone names, skipped files, ...); they
    are stored after the last record, so a list that the ``records`` iterator fills is complete.
    """
    with ShardWriter(path, attrs) as writer:
        for record in records:
            writer.append(record)
    return writer.count


def _open(path: str | os.PathLike) -> h5py.File:
    try:
        f = h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"{path}: not a readable HDF5 discover shard ({error})") from error
    if f.attrs.get("format") != FORMAT:
        f.close()
        raise ValueError(f"{path}: not a maskdistill discover shard (no format={FORMAT!r})")
    version = f.attrs.get("format_version")
    missing = [name for name in _DATASETS if name not in f]
    problem = None
    if not isinstance(_native(version), int):
        problem = "the attribute 'format_version' is missing or not a whole number"
    elif int(version) > FORMAT_VERSION:
        problem = (
            f"shard format version {int(version)} is newer than this maskdistill reads "
            f"({FORMAT_VERSION}); upgrade maskdistill"
        )
    elif missing:
        problem = f"the datasets {missing} are missing"
    if problem is not None:
        f.close()
        raise ValueError(f"{path}: {problem}")
    return f


def _native(value: Any) -> Any:
    return value.item() if isinstance(value, np.generic) else value


def read_shard_attrs(path: str | os.PathLike) -> dict[str, Any]:
    """The shard's file attributes: settings, backbone names, provenance, skipped files."""
    with _open(path) as f:
        attrs = {}
        for key, value in f.attrs.items():
            try:
                attrs[key] = _native(value) if key in _NATIVE_ATTRS else json.loads(value)
            except (TypeError, ValueError) as error:
                raise ValueError(f"{path}: attribute {key!r} is not JSON ({error})") from error
        return attrs


def read_shard_table(path: str | os.PathLike, fields: Iterable[str]) -> dict[str, np.ndarray]:
    """Whole columns of a shard at once, e.g. ``("file_name", "feature", "empty")``.

    Cheap for the fixed-size fields (clustering reads features this way, without the grids).
    ``file_name`` comes back as an object array of str.
    """
    with _open(path) as f:
        table = {}
        for name in fields:
            if name not in (*_ROW_FIELDS, "file_name", "feature"):
                raise ValueError(f"{path}: {name!r} is not a per-image column of a shard")
            if name == "file_name":
                table[name] = f[name].asstr()[:].astype(object)
                for file_name in table[name]:
                    check_name(file_name, str(path))
            else:
                table[name] = f[name][:]
        return table


def read_columns(
    paths: Sequence[str | os.PathLike], fields: Iterable[str]
) -> dict[str, np.ndarray]:
    """Columns of several shards concatenated in order (:func:`read_shard_table` of each).

    Raises ValueError naming the shard when a file name is in two shards or the feature sizes
    of two shards differ.
    """
    fields = list(dict.fromkeys(["file_name", *fields]))
    parts: dict[str, list[np.ndarray]] = {name: [] for name in fields}
    seen: set[str] = set()
    for path in paths:
        table = read_shard_table(path, fields)
        if not len(table["file_name"]):
            continue
        if "feature" in table and parts["feature"]:
            dims, first = parts["feature"][0].shape[1], paths[0]
            if table["feature"].shape[1] != dims:
                raise ValueError(
                    f"{path}: features have {table['feature'].shape[1]} dims, {first} has {dims}"
                )
        repeated = seen.intersection(table["file_name"])
        if repeated:
            raise ValueError(f"{path}: image {sorted(repeated)[0]!r} is also in another shard")
        seen.update(table["file_name"])
        for name in fields:
            parts[name].append(table[name])
    if not parts["file_name"]:
        raise ValueError(f"no image in the shards {[str(p) for p in paths]}")
    return {name: np.concatenate(values) for name, values in parts.items()}


def skipped_images(paths: Iterable[str | os.PathLike]) -> list[list[str]]:
    """The ``[file_name, reason]`` entries of images the shards skipped, in shard order."""
    return [entry for path in paths for entry in read_shard_attrs(path).get("skipped", [])]


def read_shard(path: str | os.PathLike) -> Iterator[dict[str, Any]]:
    """Yield one dict per image, in the order written.

    Keys: ``id`` int, ``file_name`` str, ``image_size`` (H, W), ``resized_size`` (H', W'),
    ``patch_size`` int, ``grid_shape`` (h, w), ``source`` int (-1: none), ``grid_mask`` bool
    (h, w), ``box`` (x, y, w, h) in original pixels, ``empty`` bool, ``feature`` float32 (D,),
    ``attention`` float16 (h, w). Reads block by block: memory stays bounded.
    """
    with _open(path) as f:
        offsets = f["grid_offset"][:]
        count = len(offsets) - 1
        for block_start in range(0, count, _READ_BLOCK):
            block = slice(block_start, min(block_start + _READ_BLOCK, count))
            columns = {name: f[name][block] for name in _ROW_FIELDS}
            names = f["file_name"].asstr()[block]
            features = f["feature"][block]
            cells = slice(offsets[block.start], offsets[block.stop])
            masks = f["grid_mask"][cells]
            attention = f["attention"][cells]
            for i in range(block.stop - block.start):
                h, w = (int(v) for v in columns["grid_shape"][i])
                lo = offsets[block.start + i] - offsets[block.start]
                yield {
                    "id": int(columns["id"][i]),
                    "file_name": names[i],
                    "image_size": tuple(int(v) for v in columns["image_size"][i]),
                    "resized_size": tuple(int(v) for v in columns["resized_size"][i]),
                    "patch_size": int(columns["patch_size"][i]),
                    "grid_shape": (h, w),
                    "source": int(columns["source"][i]),
                    "grid_mask": masks[lo : lo + h * w].reshape(h, w),
                    "box": tuple(int(v) for v in columns["box"][i]),
                    "empty": bool(columns["empty"][i]),
                    "feature": features[i],
                    "attention": attention[lo : lo + h * w].reshape(h, w),
                }


def full_resolution_mask(record: dict[str, Any]) -> np.ndarray:
    """The record's object mask at the original image size: bool (H, W)."""
    return upsample_grid_mask(
        record["grid_mask"], record["patch_size"], record["resized_size"], record["image_size"]
    )
