"""The batched discover step and ``maskdistill discover``: shards, sharding, edge cases.

A tiny random ViT (patch 8, width 48, depth 2, 3 heads) on tiny generated images keeps every
test fast; the algorithm itself is tested in test_object_mask.py.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zlib
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from workflow_helpers import no_slurm_client

from maskdistill import cli
from maskdistill.config import defaults
from maskdistill.data import open_dataset
from maskdistill.discover import batch
from maskdistill.discover.shard_file import full_resolution_mask, read_shard, read_shard_attrs
from maskdistill.images import read_skipped
from maskdistill.loader import PredictionRun, bucket_batches
from maskdistill.masks import mask_box
from maskdistill.models import vit
from maskdistill.models.norm import IMAGENET
from maskdistill.sharding import select_shard, shard_of

BACKBONE = "random:patch=8,width=48,depth=2,heads=3,seed=0"
KEYS = {
    "id",
    "file_name",
    "image_size",
    "resized_size",
    "patch_size",
    "grid_shape",
    "source",
    "grid_mask",
    "box",
    "empty",
    "feature",
    "attention",
}
# (height, width) of the generated images: repeated shapes share buckets
SIZES = [(40, 56), (56, 40), (40, 56), (48, 48), (40, 56), (48, 48)]


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny models: one thread is fastest, and much faster on a busy machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _write_images(folder: Path, sizes, seed: int = 0) -> list[str]:
    """Random-colour blobs on noise, as PNGs named img<i>.png; returns the file names."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for i, (h, w) in enumerate(sizes):
        pixels = rng.integers(0, 60, (h, w, 3), dtype=np.uint8)
        pixels[h // 4 : 3 * h // 4, w // 4 : 3 * w // 4] = rng.integers(100, 255, 3)
        names.append(f"img{i}.png")
        Image.fromarray(pixels).save(folder / names[-1])
    return names


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> tuple[Path, list[str]]:
    folder = tmp_path_factory.mktemp("images")
    return folder, _write_images(folder, SIZES)


def _discover(images_dir: Path, out: Path, *extra: str) -> None:
    cli.main(
        [
            "discover",
            "--images",
            str(images_dir),
            "--backbone",
            BACKBONE,
            "--feature-backbone",
            "same",
            "--resize",
            "32",
            "--heads",
            "3",
            "--workers",
            "0",
            "--batch-size",
            "4",
            "--device",
            "cpu",
            "--no-progress",
            "--threads",
            "1",
            "--out",
            str(out),
            *extra,
        ]
    )


def _datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        return {name: f[name][()] for name in f}


@pytest.fixture(scope="module")
def shard(images, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("shard") / "all.h5"
    _discover(images[0], out)
    return out


def test_cli_writes_a_complete_shard(images, shard):
    _, names = images
    records = list(read_shard(shard))
    assert sorted(r["file_name"] for r in records) == sorted(names)
    for record in records:
        assert set(record) == KEYS
        h, w = SIZES[names.index(record["file_name"])]
        assert record["image_size"] == (h, w)
        assert min(record["resized_size"]) == 32
        assert record["patch_size"] == 8
        assert record["grid_shape"] == tuple(-(-s // 8) for s in record["resized_size"])
        assert record["grid_mask"].shape == record["attention"].shape == record["grid_shape"]
        assert record["attention"].dtype == np.float16
        assert record["feature"].shape == (48,) and record["feature"].dtype == np.float32
        assert record["grid_mask"].reshape(-1)[record["source"]]  # the source is in its mask
        assert record["box"] == mask_box(full_resolution_mask(record))
        assert not record["empty"]
    attrs = read_shard_attrs(shard)
    assert attrs["backbone"] == attrs["feature_backbone"] == BACKBONE
    assert attrs["weights"] == attrs["feature_weights"] == "random"
    assert attrs["settings"] == {
        "resize": 32,
        "heads": 3,
        "topk": 0.4,
        "mass": 0.5,
        "center_keys": False,
        "feature": "crop",
        "feature_max_side": 640,
    }
    assert attrs["skipped"] == [] and attrs["num_images"] == len(names)
    assert read_skipped(f"{shard}.skipped.tsv") == []


def test_records_come_in_bucket_order(shard):
    """Ordered by (padded input shape, file name): independent of batch size and workers."""
    keys = [
        (tuple(-(-s // 8) * 8 for s in r["resized_size"]), r["file_name"])
        for r in read_shard(shard)
    ]
    assert keys == sorted(keys)


def test_two_runs_write_identical_datasets(images, shard, tmp_path):
    again = tmp_path / "again.h5"
    _discover(images[0], again, "--workers", "1", "--batch-size", "3")
    first, second = _datasets(shard), _datasets(again)
    assert first.keys() == second.keys()
    for name in first:
        np.testing.assert_array_equal(first[name], second[name], err_msg=name)


def test_shards_partition_the_images(images, shard, tmp_path):
    folder, names = images
    parts = []
    for i in range(3):
        out = tmp_path / f"shard-{i}-of-3.h5"
        _discover(folder, out, "--shard", str(i), "--num-shards", "3")
        parts.append({r["file_name"]: r for r in read_shard(out)})
        assert set(parts[-1]) == {n for n in names if zlib.crc32(n.encode()) % 3 == i}
        assert read_shard_attrs(out)["shard"] == i
    assert sum(len(p) for p in parts) == len(names)
    assert set().union(*parts) == set(names)
    whole = {r["file_name"]: r for r in read_shard(shard)}
    for part in parts:  # an image's record does not depend on its shard mates
        for name, record in part.items():
            np.testing.assert_array_equal(record["grid_mask"], whole[name]["grid_mask"])
            np.testing.assert_allclose(record["feature"], whole[name]["feature"], atol=1e-5)


def test_shard_of_is_crc32_and_stable_when_images_are_added():
    assert shard_of("2007_000032.jpg", 4) == zlib.crc32(b"2007_000032.jpg") % 4
    before = {f"a{i}.jpg": shard_of(f"a{i}.jpg", 5) for i in range(50)}
    after = {f"a{i}.jpg": shard_of(f"a{i}.jpg", 5) for i in range(80)}
    assert all(after[name] == shard for name, shard in before.items())
    assert set(before.values()) == set(range(5))
    with pytest.raises(ValueError, match="shard 2 of 2"):
        select_shard([], 2, 2)


def test_abort_mid_run_leaves_no_file(images, tmp_path, monkeypatch):
    calls = []
    real = batch.discover_batch

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as a killed job: not an error the CLI handles
        return real(*args, **kwargs)

    monkeypatch.setattr(batch, "discover_batch", failing)
    out = tmp_path / "out" / "shard.h5"
    with pytest.raises(KeyboardInterrupt):
        _discover(images[0], out)
    assert len(calls) == 2
    assert list(out.parent.iterdir()) == []  # neither the shard nor a temporary file


def test_bad_image_skip_is_recorded_and_error_fails(images, tmp_path):
    folder = tmp_path / "images"
    _write_images(folder, SIZES[:2])
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    out = tmp_path / "skip.h5"
    _discover(folder, out, "--on-bad-image", "skip")
    assert sorted(r["file_name"] for r in read_shard(out)) == ["img0.png", "img1.png"]
    skipped = read_shard_attrs(out)["skipped"]
    assert [name for name, _ in skipped] == ["broken.png"]
    assert read_skipped(f"{out}.skipped.tsv") == [tuple(row) for row in skipped]
    failed = tmp_path / "error.h5"
    with pytest.raises(SystemExit) as exit_info:
        _discover(folder, failed)
    assert exit_info.value.code == 1
    assert not failed.exists()


def _records(folder: Path, sizes, **kwargs) -> list[dict]:
    _write_images(folder, sizes)
    records = open_dataset({"kind": "folder", "root": str(folder)}).records()
    model = vit.load_backbone(BACKBONE)
    models = vit.Backbones(model, model)
    settings = batch.DiscoverSettings.from_config(
        defaults("discover")
        | {"resize": kwargs.pop("resize", 32), "heads": 3, "feature": kwargs.pop("feature", "crop")}
        | {"feature_max_side": kwargs.pop("feature_max_side", 640)}
    )
    run = PredictionRun(device=torch.device("cpu"), progress=False, **kwargs)
    return list(batch.discover_records(records, models, settings, run))


def test_edge_cases_tiny_image_one_patch_and_extreme_aspect(tmp_path):
    # resize 4 with patch 8: a 5x5 image is smaller than a patch -> one-patch grid
    tiny, thin = _records(tmp_path, [(5, 5), (8, 300)], resize=4)
    assert tiny["resized_size"] == (4, 4) and tiny["grid_shape"] == (1, 1)
    assert tiny["source"] == 0 and tiny["grid_mask"].tolist() == [[True]]
    assert tiny["box"] == (0, 0, 5, 5) and not tiny["empty"]
    assert thin["resized_size"] == (4, 150) and thin["grid_shape"] == (1, 19)
    mask = full_resolution_mask(thin)
    assert mask.shape == (8, 300) and thin["box"] == mask_box(mask)
    assert np.isfinite(tiny["feature"]).all() and np.isfinite(thin["feature"]).all()


def test_empty_mask_is_flagged_with_a_whole_image_feature(tmp_path, monkeypatch):
    def nothing(q, k, grid_shape, **settings):
        return np.zeros(grid_shape, dtype=bool), 0

    monkeypatch.setattr(batch, "object_mask", nothing)
    (record,) = _records(tmp_path / "a", [(40, 56)])
    assert record["empty"] and record["box"] == (0, 0, 0, 0) and record["source"] == 0
    model = vit.load_backbone(BACKBONE)
    image = np.asarray(Image.open(tmp_path / "a" / "img0.png"))
    with torch.inference_mode():
        whole = vit.cls_features(model, vit.preprocess_full(image, 8, IMAGENET)[None])[0]
    np.testing.assert_allclose(record["feature"], whole.numpy(), atol=1e-5)


def test_feature_bound_leaves_smaller_images_exactly_as_the_reference(tmp_path):
    sizes = [(40, 56), (64, 40)]
    bounded = _records(tmp_path / "a", sizes, feature_max_side=64)
    reference = _records(tmp_path / "b", sizes, feature_max_side=0)
    for a, b in zip(bounded, reference, strict=True):
        assert np.array_equal(a["feature"], b["feature"])  # bit for bit


def test_a_large_image_is_featured_at_the_bound_and_masked_at_full_size(tmp_path, monkeypatch):
    seen = []
    original = batch.feature_inputs

    def spy(images, masks, boxes, feature, patch):
        shapes = [(tuple(i.shape), m.shape) for i, m in zip(images, masks, strict=True)]
        seen.extend((*shape, box) for shape, box in zip(shapes, boxes, strict=True))
        return original(images, masks, boxes, feature, patch)

    monkeypatch.setattr(batch, "feature_inputs", spy)
    (record,) = _records(tmp_path, [(600, 800)], feature_max_side=100)
    (image_shape, mask_shape, box), *_ = seen
    assert image_shape == (3, 80, 104) and mask_shape == (75, 100)  # 800 -> 100, padded to P
    x, y, w, h = record["box"]
    assert box == (x // 8, y // 8, -(-(x + w) // 8) - x // 8, -(-(y + h) // 8) - y // 8)
    assert full_resolution_mask(record).shape == (600, 800)  # the record keeps the full size


def test_scale_to_feature_keeps_the_object_covered():
    mask = np.zeros((40, 80), bool)
    mask[10:21, 30:33] = True  # 3 pixels wide: a thin object
    scaled, box = batch.scale_to_feature(mask, (30, 10, 3, 11), (10, 20))
    assert scaled.shape == (10, 20) and box == (7, 2, 2, 4)  # x 7.5..8.25, y 2.5..5.25
    thin = np.zeros((40, 80), bool)
    thin[0, 1] = True  # vanishes under nearest-neighbour scaling
    scaled, box = batch.scale_to_feature(thin, (1, 0, 1, 1), (10, 20))
    assert box == (0, 0, 1, 1) and scaled.sum() == 1 and scaled[0, 0]
    assert batch.scale_to_feature(mask, (30, 10, 3, 11), (40, 80))[1] == (30, 10, 3, 11)


def test_an_image_that_runs_out_of_memory_loses_nothing_else_of_its_shard(tmp_path, monkeypatch):
    real = batch.discover_batch

    def short_of_memory(items, *args, **kwargs):
        if any(item.record.file_name == "img1.png" for item in items):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9 GiB")
        return real(items, *args, **kwargs)

    monkeypatch.setattr(batch, "discover_batch", short_of_memory)
    sizes = [(40, 56)] * 4  # one bucket: img1 fails its batch, the others are retried alone
    skipped: list[tuple[str, str]] = []
    records = _records(tmp_path / "a", sizes, batch_size=4, on_bad_image="skip", skipped=skipped)
    assert [r["file_name"] for r in records] == ["img0.png", "img2.png", "img3.png"]
    assert skipped == [("img1.png", "out of memory in discover at 56 x 40 px")]
    with pytest.raises(MemoryError, match=r"img1.png: out of memory .* on_bad_image: skip"):
        _records(tmp_path / "b", sizes, batch_size=4, on_bad_image="error")


def test_batched_equals_one_image_at_a_time(tmp_path):
    sizes = SIZES + [(64, 40), (40, 56)]
    one = _records(tmp_path / "one", sizes, batch_size=1, feature="masked")
    many = _records(tmp_path / "many", sizes, batch_size=4, workers=1, feature="masked")
    assert [r["file_name"] for r in one] == [r["file_name"] for r in many]
    for a, b in zip(one, many, strict=True):
        for key in ("grid_mask", "source", "box", "empty", "grid_shape", "resized_size"):
            np.testing.assert_array_equal(a[key], b[key], err_msg=key)
        np.testing.assert_allclose(a["attention"], b["attention"], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(a["feature"], b["feature"], rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize(
    "size, resize, patch",
    [
        ((5, 5), 4, 8),
        ((8, 300), 4, 8),
        ((8, 300), 32, 8),
        ((1, 7), 32, 16),
        ((375, 500), 640, 16),
        ((333, 500), 640, 16),
        ((500, 281), 640, 8),
        ((281, 500), 37, 8),
    ],
)
def test_predicted_bucket_shape_is_the_real_input_shape(size, resize, patch):
    tensor, _ = vit.preprocess(np.zeros((*size, 3), dtype=np.uint8), resize, patch, IMAGENET)
    assert batch.padded_shape(size, resize, patch) == tuple(tensor.shape[1:])


def test_bucket_batches_group_equal_shapes_in_name_order():
    shapes = [(16, 24), (24, 16), (16, 24), (16, 24), (24, 16)]
    names = ["e", "d", "c", "b", "a"]
    assert bucket_batches(shapes, names, 2) == [[3, 2], [0], [4, 1]]
    flat = [i for batch in bucket_batches(shapes, names, 1) for i in batch]
    assert flat == [3, 2, 0, 4, 1]


def test_bad_settings_fail_before_any_work(images, tmp_path):
    with pytest.raises(ValueError, match="topk"):
        batch.DiscoverSettings.from_config(defaults("discover") | {"topk": 0})
    with pytest.raises(SystemExit):
        _discover(images[0], tmp_path / "x.h5", "--shard", "3", "--num-shards", "2")
    with pytest.raises(SystemExit):
        _discover(images[0], tmp_path / "x.h5", "--heads", "4")  # the model has 3
    assert not (tmp_path / "x.h5").exists()


@pytest.mark.slow  # over 10 s: make test-fast leaves it out
def test_workflow_reruns_only_a_missing_shard(repo, images, tmp_path):
    """Snakemake dry runs: one job per shard; with one shard present only the other runs."""
    config = yaml.safe_load((repo / "config.yaml").read_text())
    config["demo_data"]["generate"] = False
    config["dataset"] = {"kind": "folder", "root": str(images[0])}
    # the demo's checkpoint paths are relative to the checkout; this run's directory is tmp_path
    config["discover"]["backbone"] = str(repo / config["discover"]["backbone"])
    for section in ("distill", "segment"):
        config[section]["init"] = str(repo / config[section]["init"])
        config[section]["batch_size"] = len(SIZES)  # no larger than the folder

    fast_path = f"{no_slurm_client(tmp_path / '.no-slurm')}{os.pathsep}{os.environ['PATH']}"

    def scheduled() -> list[str]:
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        result = subprocess.run(
            [sys.executable, "-m", "snakemake", "--snakefile", str(repo / "Snakefile")]
            + ["--directory", str(tmp_path), "--cores", "1", "-n", "-p"],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "PATH": fast_path},
        )
        assert result.returncode == 0, result.stderr
        return re.findall(r"output: (\S+shard-\d+-of-\d+\.h5)", result.stdout + result.stderr)

    outputs = sorted(scheduled())
    folder = Path(outputs[0]).parent
    assert [Path(o).name for o in outputs] == ["shard-0-of-2.h5", "shard-1-of-2.h5"]
    assert folder.parent == Path(config["results_dir"]) / "cache" / "discover"
    (tmp_path / outputs[0]).parent.mkdir(parents=True)
    (tmp_path / outputs[0]).touch()
    assert scheduled() == [outputs[1]]
