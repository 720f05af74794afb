"""Discover shards: round trip, atomic writes, bad files, full-resolution masks."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from maskdistill.discover.shard_file import (
    ShardWriter,
    full_resolution_mask,
    read_shard,
    read_shard_attrs,
    read_shard_table,
    write_shard,
)


def make_record(i: int, grid_shape=(3, 4), dim=5) -> dict:
    rng = np.random.default_rng(i)
    h, w = grid_shape
    return {
        "id": i,
        "file_name": f"dir with space/ümlaut_{i}.jpg",
        "image_size": (h * 8 + 3, w * 8 - 2),
        "resized_size": (h * 8 - 1, w * 8 - 2),
        "patch_size": 8,
        "grid_shape": grid_shape,
        "source": i % (h * w),
        "grid_mask": rng.random(grid_shape) > 0.5,
        "box": (1, 2, 3, 4),
        "empty": False,
        "feature": rng.standard_normal(dim).astype(np.float32),
        "attention": rng.standard_normal(grid_shape).astype(np.float16),
    }


def test_round_trip_keeps_every_field(tmp_path):
    records = [make_record(i, grid_shape=(2 + i % 3, 5 - i % 2)) for i in range(7)]
    path = tmp_path / "shard.h5"
    attrs = {"settings": {"topk": 0.4, "heads": 5}, "skipped": [["bad.jpg", "zero bytes"]]}
    assert write_shard(path, records, attrs) == 7
    back = list(read_shard(path))
    assert len(back) == 7
    for written, read in zip(records, back, strict=True):
        assert set(read) == set(written)
        for key, value in written.items():
            np.testing.assert_array_equal(np.asarray(read[key]), np.asarray(value), err_msg=key)
    stored = read_shard_attrs(path)
    assert stored["settings"] == {"topk": 0.4, "heads": 5}
    assert stored["skipped"] == [["bad.jpg", "zero bytes"]]
    assert stored["num_images"] == 7
    table = read_shard_table(path, ["file_name", "feature"])
    assert list(table["file_name"]) == [r["file_name"] for r in records]
    assert table["feature"].shape == (7, 5)


def test_read_crosses_block_boundaries(tmp_path, monkeypatch):
    monkeypatch.setattr("maskdistill.discover.shard_file._READ_BLOCK", 3)
    records = [make_record(i, grid_shape=(1 + i % 4, 2)) for i in range(8)]
    write_shard(tmp_path / "s.h5", records, {})
    back = list(read_shard(tmp_path / "s.h5"))
    for written, read in zip(records, back, strict=True):
        np.testing.assert_array_equal(read["grid_mask"], written["grid_mask"])


def test_empty_shard_is_readable(tmp_path):
    assert write_shard(tmp_path / "empty.h5", [], {"skipped": []}) == 0
    assert list(read_shard(tmp_path / "empty.h5")) == []


def test_failure_while_writing_leaves_no_file(tmp_path):
    path = tmp_path / "shard.h5"
    with pytest.raises(RuntimeError), ShardWriter(path, {}) as writer:
        writer.append(make_record(0))
        raise RuntimeError("killed")
    assert list(tmp_path.iterdir()) == []


def test_inconsistent_record_is_rejected(tmp_path):
    record = make_record(0)
    record["attention"] = np.zeros((9, 9), np.float16)
    with pytest.raises(ValueError, match="ümlaut_0.jpg"):
        write_shard(tmp_path / "s.h5", [record], {})
    assert not (tmp_path / "s.h5").exists()


def test_not_a_shard_names_the_file(tmp_path):
    text = tmp_path / "notes.h5"
    text.write_text("hello")
    with pytest.raises(ValueError, match="notes.h5"):
        list(read_shard(text))
    other = tmp_path / "other.h5"
    with h5py.File(other, "w") as f:
        f["x"] = [1]
    with pytest.raises(ValueError, match="not a maskdistill discover shard"):
        read_shard_attrs(other)


def test_attrs_filled_while_writing_are_stored(tmp_path):
    skipped: list[tuple[str, str]] = []

    def records():
        yield make_record(0)
        skipped.append(("bad.jpg", "truncated"))

    write_shard(tmp_path / "s.h5", records(), {"skipped": skipped})
    assert read_shard_attrs(tmp_path / "s.h5")["skipped"] == [["bad.jpg", "truncated"]]


def test_full_resolution_mask_without_resize_is_a_crop():
    record = make_record(1)
    record["resized_size"] = record["image_size"] = (20, 30)
    record["grid_shape"] = (3, 4)
    full = full_resolution_mask(record)
    assert full.shape == (20, 30)
    np.testing.assert_array_equal(full[::8, ::8], record["grid_mask"][:3, :4])
