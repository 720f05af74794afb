"""Stage 2: whitening, K-means on synthetic features with known groups, the COCO pseudo ground
truth written by ``maskdistill cluster`` (pycocotools round trip, COCOeval AP 1.0), support sets."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from scipy.cluster.vq import whiten as scipy_whiten
from sklearn.metrics import adjusted_rand_score
from threadpoolctl import threadpool_limits

from maskdistill.cli import main
from maskdistill.cluster.kmeans import cluster_features, l2_normalize, whiten
from maskdistill.cluster.pseudo_gt import coco_categories
from maskdistill.coco_files import read_pseudo_gt
from maskdistill.discover.shard_file import full_resolution_mask, write_shard
from maskdistill.masks import mask_annotation

DIMS = 6
EYE = np.eye(DIMS, dtype=np.float32)
# Three target groups (the first two close together) and a far support group.
CENTRES = {"a": 2 * EYE[0] + 1, "b": 2 * EYE[0] + 0.6 * EYE[1] + 1, "c": 2 * EYE[2] + 1}
SUPPORT_CENTRE = 2 * EYE[3] + 1


@pytest.fixture(autouse=True)
def one_thread():
    """K-means with one OpenMP thread: fast and steady on a shared CI machine."""
    with threadpool_limits(1):
        yield


def group(centre: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (centre + rng.normal(scale=0.05, size=(count, len(centre)))).astype(np.float32)


def target_features(count: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(3 count, DIMS) features of the three target groups and their group index."""
    features = np.concatenate([group(c, count, i) for i, c in enumerate(CENTRES.values())])
    return features, np.repeat(np.arange(3), count)


def test_whiten_matches_scipy_and_l2_normalize_gives_unit_rows():
    features = np.random.default_rng(0).normal(size=(50, 4)).astype(np.float32) * [1, 2, 3, 4]
    np.testing.assert_allclose(whiten(features), scipy_whiten(features), rtol=1e-5)
    constant = np.ones((5, 2), np.float32)
    np.testing.assert_array_equal(whiten(constant), constant)  # zero deviation: unscaled
    norms = np.linalg.norm(l2_normalize(features), axis=1)
    np.testing.assert_allclose(norms, 1.0, rtol=1e-6)
    np.testing.assert_array_equal(l2_normalize(np.zeros((1, 3), np.float32)), 0.0)


@pytest.mark.parametrize("method", ["minibatch", "full"])
def test_well_separated_groups_are_recovered_exactly(method):
    features, groups = target_features()
    result = cluster_features(features, k=3, method=method, seed=0)
    assert adjusted_rand_score(groups, result.labels) == 1.0
    assert sorted(result.sizes.tolist()) == [20, 20, 20]
    assert result.num_clusters == 3
    assert result.inertia > 0


def test_same_seed_same_labels_and_overclustering_multiplies_k():
    features, _ = target_features()
    first = cluster_features(features, k=3, overcluster=2, seed=7)
    second = cluster_features(features, k=3, overcluster=2, seed=7)
    np.testing.assert_array_equal(first.labels, second.labels)
    assert first.num_clusters == 6
    assert first.labels.max() < 6


def test_support_set_changes_the_clusters_but_only_target_labels_come_back():
    features, groups = target_features()
    alone = cluster_features(features, k=3, seed=1)
    assert len(set(alone.labels[groups == 0]) | set(alone.labels[groups == 1])) == 2
    support = group(SUPPORT_CENTRE, 100, seed=9)
    joint = cluster_features(features, support, k=3, seed=1)
    assert joint.labels.shape == (60,)
    # the big support group takes a cluster of its own, so the two close target groups merge
    assert len(set(joint.labels[groups == 0]) | set(joint.labels[groups == 1])) == 1
    assert joint.support_sizes.sum() == 100
    assert joint.sizes.sum() == 60


def test_too_few_masks_and_bad_method_are_errors():
    features, _ = target_features(2)
    with pytest.raises(ValueError, match="cannot make 10 clusters from 6"):
        cluster_features(features, k=10)
    with pytest.raises(ValueError, match="kmeans method"):
        cluster_features(features, k=2, method="spectral")


def test_mask_annotation_area_bbox_and_rle_round_trip():
    mask = np.zeros((7, 9), bool)
    mask[2:5, 3:8] = True
    mask[6, 0] = True
    ann = mask_annotation(mask, annotation_id=4, image_id=11, category_id=3)
    assert ann["area"] == 16
    assert ann["bbox"] == [0, 2, 8, 5]
    assert isinstance(ann["segmentation"]["counts"], str)
    assert ann["segmentation"]["size"] == [7, 9]
    np.testing.assert_array_equal(mask_utils.decode(ann["segmentation"]).astype(bool), mask)
    assert (ann["id"], ann["image_id"], ann["category_id"], ann["iscrowd"]) == (4, 11, 3, 0)
    assert coco_categories(2) == [
        {"id": 1, "name": "cluster_00", "supercategory": "object"},
        {"id": 2, "name": "cluster_01", "supercategory": "object"},
    ]


def shard_record(index: int, name: str, feature: np.ndarray, empty: bool = False) -> dict:
    """A discover record on a 4 x 5 grid (patch 8) of a 30 x 44 image with a random mask."""
    rng = np.random.default_rng(index)
    grid_mask = np.zeros((4, 5), bool) if empty else rng.random((4, 5)) > 0.4
    grid_mask[index % 4, index % 5] = not empty
    return {
        "id": index,
        "file_name": name,
        "image_size": (30, 44),
        "resized_size": (30, 40),
        "patch_size": 8,
        "grid_shape": (4, 5),
        "source": -1 if empty else (index % 4) * 5 + index % 5,
        "grid_mask": grid_mask,
        "box": (0, 0, 0, 0),
        "empty": empty,
        "feature": feature,
        "attention": np.zeros((4, 5), np.float16),
    }


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Two target shards (60 images, groups a/b/c, 2 empty masks) and one support shard."""
    features, groups = target_features()
    records = [
        shard_record(i, f"img_{i:03d}.jpg", f, empty=i in (5, 33)) for i, f in enumerate(features)
    ]
    tmp_path = tmp_path_factory.mktemp("shards")
    paths = [tmp_path / "shard-0-of-2.h5", tmp_path / "shard-1-of-2.h5"]
    write_shard(paths[0], records[:25], {"skipped": [["broken.jpg", "truncated"]]})
    write_shard(paths[1], records[25:], {"skipped": []})
    support = [
        shard_record(100 + i, f"support_{i}.jpg", f)
        for i, f in enumerate(group(SUPPORT_CENTRE, 100, 9))
    ]
    support_path = tmp_path / "support.h5"
    write_shard(support_path, support, {})
    return {"target": paths, "support": support_path, "records": records, "groups": groups}


def pseudo_gt_files(tmp_path, count: int) -> list[str]:
    return [
        str(tmp_path / "out" / "pseudo_gt" / f"shard-{i}-of-{count}.json") for i in range(count)
    ]


def run_cluster(tmp_path, target, support=(), *extra) -> tuple[dict, dict]:
    """Cluster ``target``, one pseudo ground truth file per shard; the files read as one COCO
    dict, and the stats."""
    out, stats = pseudo_gt_files(tmp_path, len(target)), tmp_path / "out" / "stats.json"
    argv = ["cluster", "--shards", *map(str, target), "--k", "3", "--seed", "1"]
    if support:
        argv += ["--support-shards", *map(str, support)]
    main([*argv, *extra, "--out", *out, "--stats", str(stats)])
    return read_pseudo_gt(out), json.loads(stats.read_text())


def test_cluster_command_writes_coco_pseudo_ground_truth(tmp_path, shards):
    coco, stats = run_cluster(tmp_path, shards["target"])
    records, groups = shards["records"], shards["groups"]
    assert [im["file_name"] for im in coco["images"]] == [r["file_name"] for r in records]
    assert coco["images"][0] == {"id": 0, "file_name": "img_000.jpg", "height": 30, "width": 44}
    assert [c["name"] for c in coco["categories"]] == ["cluster_00", "cluster_01", "cluster_02"]
    by_image = {a["image_id"]: a for a in coco["annotations"]}
    assert sorted(by_image) == [i for i in range(60) if i not in (5, 33)]
    assert [a["id"] for a in coco["annotations"]] == list(range(1, 59))
    # the three feature groups are the three categories
    kept = [i for i in range(60) if i not in (5, 33)]
    categories = [by_image[i]["category_id"] for i in kept]
    assert adjusted_rand_score(groups[kept], categories) == 1.0
    # the mask is the full-resolution discover mask
    for i in (0, 26, 59):
        np.testing.assert_array_equal(
            mask_utils.decode(by_image[i]["segmentation"]).astype(bool),
            full_resolution_mask(records[i]),
        )
    assert stats["empty_images"] == ["img_005.jpg", "img_033.jpg"]
    assert stats["skipped_images"] == [["broken.jpg", "truncated"]]
    assert (stats["num_images"], stats["num_annotated"], stats["num_support"]) == (60, 58, 0)
    assert sorted(stats["cluster_sizes"]) == [19, 19, 20]
    assert (stats["k"], stats["num_clusters"], stats["seed"], stats["kmeans"]) == (
        3,
        3,
        1,
        "minibatch",
    )
    assert stats["provenance"]["version"]


def test_each_shard_file_holds_its_shards_images_and_pycocotools_loads_it(tmp_path, shards):
    """Shard i's file: the images of discover shard i, ids continuing from the shard before;
    each one a COCO file that cocoeval scores against itself with AP 1."""
    run_cluster(tmp_path, shards["target"])
    images = []
    for path, first in zip(pseudo_gt_files(tmp_path, 2), (0, 25), strict=True):
        with contextlib.redirect_stdout(io.StringIO()):
            gt = COCO(path)
            # copies: loadRes renumbers the annotations it is given
            detections = gt.loadRes([dict(a) for a in gt.loadAnns(gt.getAnnIds())])
            evaluation = COCOeval(gt, detections, iouType="segm")
            evaluation.evaluate()
            evaluation.accumulate()
            evaluation.summarize()
        assert sorted(gt.getImgIds()) == list(range(first, first + (25 if first == 0 else 35)))
        assert evaluation.stats[0] == pytest.approx(1.0)  # AP @ IoU 0.5:0.95
        assert evaluation.stats[1] == pytest.approx(1.0)  # AP @ IoU 0.5
        images += [image["file_name"] for image in gt.dataset["images"]]
    assert images == [r["file_name"] for r in shards["records"]]


def test_one_output_file_per_target_shard_is_required(tmp_path, shards, caplog):
    with pytest.raises(SystemExit):
        main(["cluster", "--shards", *map(str, shards["target"]), "--k", "3", "--out",
              str(tmp_path / "one.json"), "--stats", str(tmp_path / "stats.json")])  # fmt: skip
    assert "--out names 1 files for 2 --shards" in caplog.text
    assert not (tmp_path / "one.json").exists()


def test_support_shards_change_clusters_but_only_target_images_are_written(tmp_path, shards):
    coco, stats = run_cluster(tmp_path, shards["target"], [shards["support"]])
    names = {im["file_name"] for im in coco["images"]}
    assert names == {r["file_name"] for r in shards["records"]}
    assert len(coco["annotations"]) == 58
    assert stats["num_support"] == 100
    assert sorted(stats["support_cluster_sizes"]) == [0, 0, 100]
    by_image = {a["image_id"]: a["category_id"] for a in coco["annotations"]}
    # groups a (images 0-19) and b (20-39) merge once the support group takes a cluster
    assert len({by_image[i] for i in range(40) if i not in (5, 33)}) == 1


def test_repeated_image_and_missing_shard_are_one_line_errors(tmp_path, shards, caplog):
    with pytest.raises(SystemExit) as exit_info:
        run_cluster(tmp_path, [shards["target"][0], shards["target"][0]])
    assert exit_info.value.code == 1
    assert "img_000.jpg" in caplog.text and "also in another shard" in caplog.text
    with pytest.raises(SystemExit):
        run_cluster(tmp_path, [tmp_path / "missing.h5"])
    assert "missing.h5" in caplog.text
    assert not (tmp_path / "out" / "pseudo_gt").exists()


def test_reading_shard_files_keeps_only_the_asked_images_and_checks_categories(tmp_path, shards):
    run_cluster(tmp_path, shards["target"])
    files = pseudo_gt_files(tmp_path, 2)
    wanted = {"img_004.jpg", "img_005.jpg", "img_040.jpg"}  # img_005's mask is empty
    coco = read_pseudo_gt(files, keep=wanted.__contains__)
    assert [image["file_name"] for image in coco["images"]] == sorted(wanted)
    assert [a["image_id"] for a in coco["annotations"]] == [4, 40]
    assert [c["id"] for c in coco["categories"]] == [1, 2, 3]
    other = json.loads(Path(files[1]).read_text())
    other["categories"] = other["categories"][:2]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="other.json: "):  # its annotations' category 3
        read_pseudo_gt([files[0], str(tmp_path / "other.json")])
    other["annotations"] = [a for a in other["annotations"] if a["category_id"] < 3]
    (tmp_path / "other.json").write_text(json.dumps(other))
    with pytest.raises(ValueError, match="other.json: other categories than"):
        read_pseudo_gt([files[0], str(tmp_path / "other.json")])
