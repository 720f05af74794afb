"""Stage 4 (select): the tau rule and its fallback, skip vs overwrite, label values, the PNGs."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from maskdistill import cli
from maskdistill.masks import decode_rle, encode_rle, read_label_png
from maskdistill.select.confident import confident, select_label_map


def _prediction(mask: np.ndarray, score: float, category: int, name: str = "a.jpg") -> dict:
    return {
        "file_name": name,
        "image_id": 0,
        "category_id": category,
        "score": score,
        "segmentation": encode_rle(mask),
    }


def _box(rows: slice, cols: slice, shape=(6, 6)) -> np.ndarray:
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def decode(p: dict) -> np.ndarray:
    return decode_rle(p["segmentation"])


# top-left (score 0.95, class 2), overlapping centre (0.92, class 3), bottom-right (0.5, class 4)
TOP = _prediction(_box(slice(0, 3), slice(0, 3)), 0.95, 2)
CENTRE = _prediction(_box(slice(2, 5), slice(2, 5)), 0.92, 3)
LOW = _prediction(_box(slice(5, 6), slice(5, 6)), 0.5, 4)


def test_tau_keeps_the_confident_predictions_or_the_best_one_alone():
    kept, fell_back = confident([LOW, CENTRE, TOP], tau=0.9)
    assert [p["score"] for p in kept] == [0.95, 0.92] and not fell_back
    kept, fell_back = confident([LOW, CENTRE], tau=0.99)
    assert [p["score"] for p in kept] == [0.92] and fell_back
    assert confident([], tau=0.9) == ([], False)


def test_skip_leaves_out_a_mask_touching_painted_pixels():
    skip = select_label_map([LOW, CENTRE, TOP], (6, 6), 0.9, "skip", decode)
    expected = np.zeros((6, 6), np.int32)
    expected[0:3, 0:3] = 2  # CENTRE touches TOP at (2, 2): skipped
    np.testing.assert_array_equal(skip.labels, expected)
    assert (skip.kept, skip.painted, skip.fell_back) == (2, 1, False)
    with pytest.raises(ValueError, match="overlap"):
        select_label_map([TOP], (6, 6), 0.9, "fill", decode)


def test_overwrite_is_the_reference_test_that_indexes_rows_0_and_1():
    # TOP touches row 0: every later mask is skipped, even one that does not touch it
    apart = _prediction(_box(slice(4, 6), slice(4, 6)), 0.93, 3)
    overwrite = select_label_map([TOP, apart], (6, 6), 0.9, "overwrite", decode)
    expected = np.zeros((6, 6), np.int32)
    expected[0:3, 0:3] = 2
    np.testing.assert_array_equal(overwrite.labels, expected)
    assert (overwrite.kept, overwrite.painted) == (2, 1)
    skip = select_label_map([TOP, apart], (6, 6), 0.9, "skip", decode)
    assert skip.painted == 2 and (skip.labels == 3).sum() == 4  # the paper's rule keeps it
    # nothing in rows 0 and 1: later masks paint over earlier ones where they overlap
    low_top = _prediction(_box(slice(2, 5), slice(0, 3)), 0.95, 2)
    overwrite = select_label_map([low_top, CENTRE], (6, 6), 0.9, "overwrite", decode)
    expected = np.zeros((6, 6), np.int32)
    expected[2:5, 0:3] = 2
    expected[2:5, 2:5] = 3
    np.testing.assert_array_equal(overwrite.labels, expected)


def reference_paint(masks: list[np.ndarray], categories: list[int]) -> np.ndarray:
    """A transcription of the authors' gen_segmentation.py painting loop (uint8 masks)."""
    mask_res = False
    for j, (mask, category) in enumerate(zip(masks, categories, strict=True)):
        if mask_res is not False and (mask_res[mask]).any():
            continue
        if j == 0:
            mask_res = np.zeros(mask.shape).astype(np.uint8)
        mask_res[mask == 1] = category
    return mask_res


def test_overwrite_equals_the_authors_loop_on_random_masks():
    rng = np.random.default_rng(0)
    differ = 0
    for _ in range(200):
        shape = tuple(int(v) for v in rng.integers(4, 12, size=2))
        count = int(rng.integers(1, 5))
        predictions = []
        for k in range(count):
            top, left = rng.integers(0, shape[0]), rng.integers(0, shape[1])
            height, width = rng.integers(1, 5, size=2)
            mask = _box(slice(top, top + height), slice(left, left + width), shape)
            predictions.append(_prediction(mask, 0.99 - 0.01 * k, int(rng.integers(1, 5))))
        ours = select_label_map(predictions, shape, 0.9, "overwrite", decode).labels
        masks = [decode(p).astype(np.uint8) for p in predictions]
        theirs = reference_paint(masks, [p["category_id"] for p in predictions])
        np.testing.assert_array_equal(ours, theirs)
        skip = select_label_map(predictions, shape, 0.9, "skip", decode).labels
        differ += not np.array_equal(skip, theirs)
    assert differ > 20  # the two rules really differ on such scenes


def test_the_command_writes_one_palette_png_per_image_and_the_stats(tmp_path):
    index = {
        "images": [
            {"id": 0, "file_name": "a.jpg", "height": 6, "width": 6},
            {"id": 1, "file_name": "sub/b.jpg", "height": 6, "width": 6},
            {"id": 2, "file_name": "c.jpg", "height": 6, "width": 6},
        ],
        "annotations": [],
        "categories": [{"id": k} for k in range(1, 5)],
    }
    b_only = _prediction(_box(slice(1, 4), slice(1, 4)), 0.3, 4, "sub/b.jpg")
    (tmp_path / "pgt.json").write_text(json.dumps(index))
    (tmp_path / "pred.json").write_text(json.dumps([LOW, CENTRE, TOP, b_only]))
    out = ["--out", str(tmp_path / "labels"), "--stats", str(tmp_path / "stats.json")]
    cli.main(["select", "--predictions", str(tmp_path / "pred.json"),
              "--pseudo-gt", str(tmp_path / "pgt.json"), "--tau", "0.9", "--overlap", "skip",
              *out])  # fmt: skip
    a = read_label_png(tmp_path / "labels" / "a.png")
    assert a[0, 0] == 2 and a[3, 3] == 0 and a.dtype == np.uint8
    b = read_label_png(tmp_path / "labels" / "sub" / "b.png")
    assert b[2, 2] == 4 and b.sum() == 4 * 9  # fell back to its only prediction
    # no prediction: no map (the image leaves stage 5's training set), counted in the stats
    assert not (tmp_path / "labels" / "c.png").exists()
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert (stats["num_images"], stats["num_fell_back"], stats["num_without_predictions"]) == (
        3,
        1,
        1,
    )
    assert (stats["num_labelled"], stats["num_confident"]) == (2, 1)
    assert stats["kept_per_image"] == {"0": 1, "1": 1, "2": 1}
    assert (stats["num_kept"], stats["num_painted"]) == (3, 2)


def test_from_annotations_paints_each_images_pseudo_mask_with_its_cluster(tmp_path):
    """segment.labels pseudo_gt: the stage-2 masks through stage 4, as predictions of score 1."""
    a, b = _box(slice(0, 3), slice(1, 5)), _box(slice(2, 6), slice(0, 2))
    coco = {
        "images": [
            {"id": 7, "file_name": "a.jpg", "height": 6, "width": 6},
            {"id": 8, "file_name": "b.jpg", "height": 6, "width": 6},
            {"id": 9, "file_name": "empty.jpg", "height": 6, "width": 6},
        ],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 3, "segmentation": encode_rle(a)},
            {"id": 2, "image_id": 8, "category_id": 1, "segmentation": encode_rle(b)},
        ],
        "categories": [{"id": k} for k in range(1, 5)],
    }
    (tmp_path / "pgt.json").write_text(json.dumps(coco))
    pgt = str(tmp_path / "pgt.json")
    cli.main(["select", "--predictions", pgt, "--from-annotations", "--pseudo-gt", pgt,
              "--tau", "0.9", "--out", str(tmp_path / "labels"),
              "--stats", str(tmp_path / "stats.json")])  # fmt: skip
    np.testing.assert_array_equal(read_label_png(tmp_path / "labels" / "a.png"), 3 * a)
    np.testing.assert_array_equal(read_label_png(tmp_path / "labels" / "b.png"), 1 * b)
    assert not (tmp_path / "labels" / "empty.png").exists()
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert stats["num_fell_back"] == 0 and stats["num_without_predictions"] == 1
    with pytest.raises(SystemExit):  # without the flag, a COCO dict is not a results list
        other = ["--out", str(tmp_path / "other"), "--stats", str(tmp_path / "s.json")]
        cli.main(["select", "--predictions", pgt, "--pseudo-gt", pgt, *other])


def _sharded_scene(tmp_path, count: int = 12):
    """A pseudo ground truth of ``count`` 6 x 6 images, one or two predictions each, and the
    predictions split as `distill predict` writes them (one file per shard of 3)."""
    from maskdistill.sharding import shard_of

    rng = np.random.default_rng(0)
    images = [{"id": i, "file_name": f"img{i}.jpg", "height": 6, "width": 6} for i in range(count)]
    predictions = []
    for image in images[:-1]:  # the last image has no prediction
        for _ in range(int(rng.integers(1, 3))):
            top, left = rng.integers(0, 4, size=2)
            mask = _box(slice(top, top + 2), slice(left, left + 3))
            score = float(rng.uniform(0.5, 1.0))
            predictions.append(
                _prediction(mask, score, int(rng.integers(1, 4)), image["file_name"])
            )
    index = {"images": images, "annotations": [], "categories": [{"id": k} for k in (1, 2, 3)]}
    (tmp_path / "pgt.json").write_text(json.dumps(index))
    (tmp_path / "all.json").write_text(json.dumps(predictions))
    for shard in range(3):
        mine = [p for p in predictions if shard_of(p["file_name"], 3) == shard]
        (tmp_path / f"pred-{shard}.json").write_text(json.dumps(mine))
    return images


def _select(tmp_path, predictions: str, out: str, *shard: str) -> dict:
    cli.main(["select", "--predictions", str(tmp_path / predictions),
              "--pseudo-gt", str(tmp_path / "pgt.json"), "--tau", "0.8", *shard,
              "--out", str(tmp_path / out), "--stats", str(tmp_path / f"{out}.json")])  # fmt: skip
    return json.loads((tmp_path / f"{out}.json").read_text())


def test_one_job_per_shard_writes_the_maps_of_one_job_over_every_image(tmp_path):
    """Shard by shard, on each shard's predictions file: the same PNGs, byte for byte, and the
    same per-image stats, partitioned by the shards."""
    images = _sharded_scene(tmp_path)
    whole = _select(tmp_path, "all.json", "whole")
    rows = []
    for shard in range(3):
        stats = _select(tmp_path, f"pred-{shard}.json", f"shard-{shard}", "--shard", str(shard),
                        "--num-shards", "3")  # fmt: skip
        assert (stats["shard"], stats["num_shards"]) == (shard, 3)
        rows += stats["images"]
    assert sorted(rows, key=lambda r: r["file_name"]) == sorted(
        whole["images"], key=lambda r: r["file_name"]
    )
    written = 0
    for image in images:
        name = image["file_name"].replace(".jpg", ".png")
        found = [tmp_path / f"shard-{s}" / name for s in range(3)]
        found = [path for path in found if path.exists()]
        if image["file_name"] == "img11.jpg":  # no prediction: no map anywhere
            assert not found and not (tmp_path / "whole" / name).exists()
            continue
        assert len(found) == 1  # in its own shard only
        assert found[0].read_bytes() == (tmp_path / "whole" / name).read_bytes()
        written += 1
    assert written == len(images) - 1


def test_another_shards_predictions_are_refused_by_name(tmp_path, caplog):
    _sharded_scene(tmp_path)
    with pytest.raises(SystemExit):
        _select(tmp_path, "pred-1.json", "wrong", "--shard", "0", "--num-shards", "3")
    assert re.search(r"pred-1\.json: predictions of \d+ images .* shard 0 of 3", caplog.text)
    assert not (tmp_path / "wrong").exists()
    with pytest.raises(SystemExit):
        _select(tmp_path, "pred-1.json", "bad", "--shard", "3", "--num-shards", "3")
    assert "--shard 3: expected 0 <= shard < --num-shards" in caplog.text
