"""Masks: boxes, grid upsampling, RLE, COCO annotations, label-map painting, palette PNGs."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from maskdistill.images import BadImageError
from maskdistill.masks import (
    IGNORE,
    decode_rle,
    encode_rle,
    label_png_path,
    mask_annotation,
    mask_box,
    paint_label_map,
    read_label_png,
    upsample_grid_mask,
    voc_palette,
    write_label_png,
)


def test_upsample_grid_mask_by_hand():
    grid = np.array([[1, 0], [0, 1]], bool)
    # patch 2 -> 4x4, crop to the resized 3x4, then nearest resize to 6x8 doubles each pixel
    full = upsample_grid_mask(grid, patch_size=2, resized_size=(3, 4), image_size=(6, 8))
    expected_resized = np.array(
        [[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]],
        bool,
    )
    np.testing.assert_array_equal(full, expected_resized.repeat(2, 0).repeat(2, 1))
    assert full.dtype == bool


def test_mask_box():
    mask = np.zeros((5, 6), bool)
    assert mask_box(mask) == (0, 0, 0, 0)
    mask[1:3, 2:5] = True
    assert mask_box(mask) == (2, 1, 3, 2)


def test_rle_round_trip_and_annotation_fields():
    rng = np.random.default_rng(0)
    mask = rng.random((7, 9)) > 0.6
    rle = encode_rle(mask)
    assert rle["size"] == [7, 9] and isinstance(rle["counts"], str)
    np.testing.assert_array_equal(decode_rle(rle), mask)
    np.testing.assert_array_equal(decode_rle({**rle, "counts": rle["counts"].encode()}), mask)
    ann = mask_annotation(mask, annotation_id=3, image_id=5, category_id=2, score=0.25)
    assert ann["area"] == int(mask.sum()) and ann["score"] == 0.25 and ann["iscrowd"] == 0
    assert ann["bbox"] == list(mask_box(mask))
    # pycocotools decodes it as it encoded it
    pyco = {"size": rle["size"], "counts": rle["counts"].encode()}
    np.testing.assert_array_equal(mask_utils.decode(pyco).astype(bool), mask)


def _square(shape, rows, cols):
    mask = np.zeros(shape, bool)
    mask[rows, cols] = True
    return mask


def test_paint_label_map_overlap_rules():
    first = _square((4, 4), slice(0, 2), slice(0, 2))  # top-left 2x2, painted first
    second = _square((4, 4), slice(1, 3), slice(1, 3))  # overlaps first at (1, 1)
    third = _square((4, 4), slice(3, 4), slice(3, 4))  # bottom-right pixel, no overlap
    masks = [(first, 1), (second, 2), (third, 3)]
    skip = paint_label_map((4, 4), masks, "skip")
    overwrite = paint_label_map((4, 4), masks, "overwrite")
    fill = paint_label_map((4, 4), masks, "fill")
    expected_skip = np.array([[1, 1, 0, 0], [1, 1, 0, 0], [0, 0, 0, 0], [0, 0, 0, 3]])
    expected_overwrite = np.array([[1, 1, 0, 0], [1, 2, 2, 0], [0, 2, 2, 0], [0, 0, 0, 3]])
    expected_fill = np.array([[1, 1, 0, 0], [1, 1, 2, 0], [0, 2, 2, 0], [0, 0, 0, 3]])
    np.testing.assert_array_equal(skip, expected_skip)
    np.testing.assert_array_equal(overwrite, expected_overwrite)
    np.testing.assert_array_equal(fill, expected_fill)
    with pytest.raises(ValueError, match="overlap"):
        paint_label_map((4, 4), masks, "blend")
    with pytest.raises(ValueError, match="start at 1"):
        paint_label_map((4, 4), [(first, 0)])
    with pytest.raises(ValueError, match="does not fit"):
        paint_label_map((3, 4), [(first, 1)])


def test_label_png_round_trip_keeps_indices_and_the_voc_palette(tmp_path):
    labels = np.array([[0, 1, 2], [20, IGNORE, 254]], dtype=np.uint8)
    path = tmp_path / "sub" / "x.png"
    write_label_png(path, labels)
    np.testing.assert_array_equal(read_label_png(path), labels)
    with Image.open(path) as image:
        assert image.mode == "P" and image.getpalette()[:9] == voc_palette()[:9]
    assert [p.name for p in path.parent.iterdir()] == ["x.png"]  # no temporary file left
    with pytest.raises(ValueError, match="values 0..255"):
        write_label_png(tmp_path / "bad.png", np.array([[256]]))
    Image.fromarray(np.zeros((2, 2, 3), np.uint8)).save(tmp_path / "rgb.png")
    with pytest.raises(BadImageError, match="palette"):
        read_label_png(tmp_path / "rgb.png")


def test_voc_palette_known_entries():
    palette = voc_palette()
    assert len(palette) == 768
    assert palette[0:3] == [0, 0, 0]
    assert palette[3:6] == [128, 0, 0] and palette[6:9] == [0, 128, 0]
    assert palette[255 * 3 : 256 * 3] == [224, 224, 192]


def test_label_png_path_keeps_sub_folders():
    assert label_png_path("out", "a/b/c.jpg").as_posix() == "out/a/b/c.png"
    assert label_png_path("out", "2007_000032.jpg").as_posix() == "out/2007_000032.png"
