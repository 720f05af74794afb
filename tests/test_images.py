"""Image loading: mode conversions, EXIF orientation, bad files and skip lists."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from maskdistill.images import (
    BadImageError,
    image_size,
    load_image,
    load_or_skip,
    read_skipped,
    write_skipped,
)
from maskdistill.masks import read_label_png

RNG = np.random.default_rng(0)
RGB = RNG.integers(0, 256, (4, 6, 3), dtype=np.uint8)


def save(image: Image.Image, path: Path, **kwargs) -> Path:
    image.save(path, **kwargs)
    return path


def test_rgb_png_round_trip(tmp_path):
    out = load_image(save(Image.fromarray(RGB), tmp_path / "a.png"))
    assert out.dtype == np.uint8 and out.flags.writeable
    np.testing.assert_array_equal(out, RGB)


def test_grayscale_is_copied_to_three_channels(tmp_path):
    gray = RGB[:, :, 0]
    out = load_image(save(Image.fromarray(gray, "L"), tmp_path / "g.png"))
    np.testing.assert_array_equal(out, np.stack([gray] * 3, axis=2))


def test_one_bit_gives_black_and_white(tmp_path):
    bits = np.array([[True, False, True], [False, False, True]])
    out = load_image(save(Image.fromarray(bits), tmp_path / "b.png"))
    np.testing.assert_array_equal(out[:, :, 1], np.where(bits, 255, 0))
    assert out.shape == (2, 3, 3)


def palette_image(indices: np.ndarray) -> Image.Image:
    image = Image.fromarray(indices, "P")
    # a full 256-colour palette, as VOC's: with a shorter one Pillow renumbers indices on save
    image.putpalette([10, 20, 30, 200, 100, 50, 0, 255, 0] + [128] * (3 * 253))
    return image


def test_palette_gives_palette_colours(tmp_path):
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    out = load_image(save(palette_image(indices), tmp_path / "p.png"))
    expected = np.array([[[10, 20, 30], [200, 100, 50]], [[0, 255, 0], [200, 100, 50]]])
    np.testing.assert_array_equal(out, expected)


def test_palette_transparency_is_black(tmp_path):
    indices = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    out = load_image(save(palette_image(indices), tmp_path / "p.png", transparency=1))
    expected = np.array([[[10, 20, 30], [0, 0, 0]], [[0, 255, 0], [0, 0, 0]]])
    np.testing.assert_array_equal(out, expected)


def test_rgba_is_composited_on_black(tmp_path):
    rgba = np.array([[[200, 100, 50, 255], [200, 100, 50, 0], [200, 100, 50, 128]]], np.uint8)
    out = load_image(save(Image.fromarray(rgba, "RGBA"), tmp_path / "a.png"))
    # 200 * 128 / 255 = 100.39 -> 100; 100 * 128 / 255 = 50.2 -> 50; 50 * 128 / 255 = 25.1 -> 25
    np.testing.assert_array_equal(out, [[[200, 100, 50], [0, 0, 0], [100, 50, 25]]])


def test_gray_alpha_is_composited_on_black(tmp_path):
    la = np.array([[[90, 255], [90, 0], [255, 51]]], np.uint8)
    out = load_image(save(Image.fromarray(la, "LA"), tmp_path / "la.png"))
    np.testing.assert_array_equal(out, [[[90] * 3, [0] * 3, [51] * 3]])


def test_cmyk_is_converted(tmp_path):
    cmyk = np.array([[[0, 0, 0, 0], [255, 0, 0, 0], [0, 255, 0, 0], [0, 0, 0, 255]]], np.uint8)
    out = load_image(save(Image.fromarray(cmyk, "CMYK"), tmp_path / "c.tif"))
    np.testing.assert_array_equal(out, [[[255, 255, 255], [0, 255, 255], [255, 0, 255], [0] * 3]])


def test_cmyk_jpeg_is_converted(tmp_path):
    image = Image.new("CMYK", (8, 8), (0, 0, 0, 0))
    out = load_image(save(image, tmp_path / "c.jpg", quality=100))
    assert out.shape == (8, 8, 3) and out.min() >= 250  # white, up to JPEG rounding


def test_sixteen_bit_is_scaled(tmp_path):
    values = np.array([[0, 128, 129, 257, 32896, 65535]], dtype=np.uint16)
    path = save(Image.fromarray(values), tmp_path / "g16.png")
    assert Image.open(path).mode == "I;16"
    out = load_image(path)
    # round(v * 255 / 65535) = round(v / 257)
    np.testing.assert_array_equal(out[:, :, 0], [[0, 0, 1, 1, 128, 255]])
    np.testing.assert_array_equal(out[:, :, 2], out[:, :, 0])


def test_int32_out_of_range_is_stretched(tmp_path):
    values = np.array([[-100, 0, 155]], dtype=np.int32)
    out = load_image(save(Image.fromarray(values, "I"), tmp_path / "i.tif"))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 100, 255]])  # min..max -> 0..255


def test_float_in_unit_range_is_scaled(tmp_path):
    values = np.array([[0.0, 0.25, 1.0]], dtype=np.float32)
    out = load_image(save(Image.fromarray(values, "F"), tmp_path / "f.tif"))
    np.testing.assert_array_equal(out[:, :, 0], [[0, 64, 255]])


ORIENTATIONS = {
    1: lambda a: a,
    3: lambda a: np.rot90(a, 2),
    6: lambda a: np.rot90(a, -1),  # stored image must turn 90 degrees clockwise
    8: lambda a: np.rot90(a, 1),
    2: lambda a: a[:, ::-1],
}


def with_orientation(path: Path, array: np.ndarray, orientation: int, **kwargs) -> Path:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return save(Image.fromarray(array), path, exif=exif.tobytes(), **kwargs)


@pytest.mark.parametrize("orientation", sorted(ORIENTATIONS))
def test_exif_orientation_is_applied(tmp_path, orientation):
    path = with_orientation(tmp_path / "o.png", RGB, orientation)
    out = load_image(path)
    np.testing.assert_array_equal(out, ORIENTATIONS[orientation](RGB))
    assert image_size(path) == out.shape[:2]


def test_exif_rotation_swaps_header_size_of_jpeg(tmp_path):
    path = with_orientation(tmp_path / "o.jpg", np.zeros((20, 30, 3), np.uint8), 6)
    assert image_size(path) == (30, 20)
    assert load_image(path).shape == (30, 20, 3)


def truncated_jpeg(path: Path) -> Path:
    save(Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)), path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


BAD_FILES = {
    "empty.jpg": (lambda p: p.write_bytes(b""), "empty file"),
    "truncated.jpg": (truncated_jpeg, "truncated"),
    "text.jpg": (lambda p: p.write_text("not an image\n"), "not an image"),
    "missing.png": (lambda p: None, "no such file"),
}


@pytest.mark.parametrize("name", sorted(BAD_FILES))
def test_bad_file_error_names_file_and_reason(tmp_path, name):
    make, reason = BAD_FILES[name]
    path = tmp_path / name
    make(path)
    with pytest.raises(BadImageError) as caught:
        load_image(path)
    assert isinstance(caught.value, ValueError)
    assert caught.value.path == path
    assert reason in caught.value.reason
    assert str(path) in str(caught.value) and reason in str(caught.value)


def test_truncated_jpeg_header_is_still_readable(tmp_path):
    # listing reads headers only; the damage shows when the image is loaded
    assert image_size(truncated_jpeg(tmp_path / "t.jpg")) == (64, 64)


def test_decompression_bomb_is_refused(tmp_path, monkeypatch):
    path = save(Image.new("RGB", (32, 32)), tmp_path / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 100)  # 1024 pixels > 2 * 100
    for read in (load_image, image_size):
        with pytest.raises(BadImageError, match="decompression bomb") as caught:
            read(path)
        assert caught.value.path == path


def test_bad_image_error_pickles():
    error = pickle.loads(pickle.dumps(BadImageError("x/y.jpg", "empty file (0 bytes)")))
    assert error.path == Path("x/y.jpg") and error.reason == "empty file (0 bytes)"
    assert str(error) == "x/y.jpg: cannot read image: empty file (0 bytes)"


def test_skip_mode_collects_exactly_the_bad_files(tmp_path):
    paths = []
    for i in range(3):
        paths.append(save(Image.fromarray(RGB), tmp_path / f"good{i}.png"))
    for name, (make, _) in sorted(BAD_FILES.items()):
        make(tmp_path / name)
        paths.insert(2, tmp_path / name)
    skipped: list[tuple[str, str]] = []
    loaded = [load_or_skip(p, "skip", skipped, name=p.name) for p in paths]
    assert [p.name for p, a in zip(paths, loaded, strict=True) if a is not None] == [
        "good0.png",
        "good1.png",
        "good2.png",
    ]
    assert [name for name, _ in skipped] == [p.name for p in paths if p.name in BAD_FILES]
    for name, reason in skipped:
        assert BAD_FILES[name][1] in reason

    tsv = tmp_path / "out" / "skipped.tsv"
    write_skipped(tsv, skipped)
    assert read_skipped(tsv) == skipped
    assert tsv.read_text().splitlines()[0] == "file\treason"


def test_error_mode_raises_and_bad_mode_is_rejected(tmp_path):
    path = tmp_path / "empty.jpg"
    path.write_bytes(b"")
    skipped: list[tuple[str, str]] = []
    with pytest.raises(BadImageError):
        load_or_skip(path, "error", skipped)
    with pytest.raises(ValueError, match="on_bad_image"):
        load_or_skip(path, "ignore", skipped)
    assert skipped == []
    assert load_or_skip(path, "skip", skipped) is None
    assert skipped == [(str(path), "empty file (0 bytes)")]


def test_skip_list_cells_stay_on_one_line(tmp_path):
    tsv = tmp_path / "s.tsv"
    write_skipped(tsv, [("a\tb.jpg", "line one\nline two")])
    assert read_skipped(tsv) == [("a b.jpg", "line one line two")]
    write_skipped(tsv, [])
    assert tsv.read_text() == "file\treason\n" and read_skipped(tsv) == []


def test_index_png_keeps_indices(tmp_path):
    indices = np.array([[0, 1, 255], [2, 2, 0]], dtype=np.uint8)
    labels = read_label_png(save(palette_image(indices), tmp_path / "l.png"))
    np.testing.assert_array_equal(labels, indices)
    rgb = save(Image.fromarray(RGB), tmp_path / "rgb.png")
    with pytest.raises(BadImageError, match="mode RGB"):
        read_label_png(rgb)
