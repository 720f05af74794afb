"""Which shard an image belongs to: the one rule every sharded stage (and the workflow) uses."""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any


def shard_of(file_name: str, num_shards: int) -> int:
    """The shard an image belongs to: ``crc32(file_name) % num_shards``.

    Torch-free, so that the workflow can list a shard's images when it parses the rules.
    Stable across runs, machines and Python versions, and independent of the other images:
    adding images to a dataset never moves an existing image to another shard (it only
    changes the shards the new images land in). Shards are balanced only on average.
    """
    return zlib.crc32(file_name.encode("utf-8", "surrogateescape")) % num_shards


def in_shard(shard: int, num_shards: int) -> Callable[[str], bool]:
    """Whether a file name belongs to shard ``shard`` of ``num_shards`` (checked to exist)."""
    if num_shards < 1 or not 0 <= shard < num_shards:
        raise ValueError(f"shard {shard} of {num_shards}: expected 0 <= shard < num_shards")
    return lambda file_name: shard_of(file_name, num_shards) == shard


def select_shard(records: Sequence[Any], shard: int, num_shards: int) -> list[Any]:
    """The records (anything with a ``file_name``) of shard ``shard`` of ``num_shards``."""
    keep = in_shard(shard, num_shards)
    return [r for r in records if keep(r.file_name)]
