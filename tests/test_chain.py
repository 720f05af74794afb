"""discover -> cluster -> evaluate through the command line on a tiny demo dataset, and the
evaluate commands on inputs with known answers (CorLoc 1 / 0, an all-background prediction)."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from threadpoolctl import threadpool_limits

from maskdistill.cli import main
from maskdistill.data import open_dataset
from maskdistill.discover.shard_file import write_shard
from maskdistill.masks import label_png_path, mask_annotation, write_label_png
from maskdistill.metrics import box_class

NUM_TRAIN, NUM_VAL = 6, 6
BACKBONE = "random:patch=8,width=32,depth=2,heads=2,seed=0"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("chain") / "demo"
    cli("make-demo-data", "--out", root, "--num-train", NUM_TRAIN, "--num-val", NUM_VAL)
    return root


def cli(*args) -> None:
    """Run ``maskdistill ARGS`` in this process (arguments converted with str)."""
    main([str(a) for a in args])


def dataset_args(root: Path, split: str = "val") -> list:
    return ["--images", root, "--dataset-kind", "voc", "--splits", split]


def read(path: Path) -> dict:
    return json.loads(path.read_text())


def _corloc(shard: Path, root: Path) -> float:
    """CorLoc recomputed here: the share of val images whose discovered box has IoU >= 0.5 with
    a ground-truth box (torchvision's box IoU)."""
    from torchvision.ops import box_iou

    from maskdistill.discover.shard_file import read_shard_table

    table = read_shard_table(shard, ("file_name", "box"))
    boxes = dict(zip((str(n) for n in table["file_name"]), table["box"], strict=True))
    dataset = open_dataset({"kind": "voc", "root": str(root)}, ["val"])
    hits = []
    for record in dataset.records():
        x, y, w, h = boxes[record.file_name]
        gt = [(b.x, b.y, b.x + b.w, b.y + b.h) for b in dataset.boxes(record)]
        iou = box_iou(torch.tensor([[x, y, x + w, y + h]], dtype=torch.float64),
                      torch.tensor(gt, dtype=torch.float64))  # fmt: skip
        hits.append(bool((iou >= 0.5).any()))
    return sum(hits) / len(hits)


def _cluster_labels(pseudo_gt: Path, root: Path) -> tuple[list[int], list[int]]:
    """(ground-truth class, cluster) of each val object that stage 2 labelled: the class of the
    object its mask overlaps most, as the object-level matching pairs them."""
    coco = json.loads(pseudo_gt.read_text())
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    by_name = {names[a["image_id"]]: a for a in coco["annotations"]}
    dataset = open_dataset({"kind": "voc", "root": str(root)}, ["val"])
    truth, found = [], []
    for record in dataset.records():
        if record.file_name not in by_name:
            continue
        ann = by_name[record.file_name]
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        overlaps = [(m & mask).sum() for m, _ in dataset.instance_masks(record)]
        truth.append(dataset.instance_masks(record)[int(np.argmax(overlaps))][1])
        found.append(ann["category_id"])
    return truth, found


def test_discover_cluster_evaluate_chain(demo, tmp_path):
    shard, run = tmp_path / "shard-0-of-1.h5", tmp_path / "run"
    with threadpool_limits(1):
        cli("discover", *dataset_args(demo), "--splits", "train", "val", "--out", shard,
            "--backbone", BACKBONE, "--feature-backbone", "same", "--resize", 64, "--heads", 2,
            "--workers", 0, "--device", "cpu", "--threads", 1)  # fmt: skip
        cli("cluster", "--shards", shard, "--k", 3, "--out", run / "pseudo_gt.json",
            "--stats", run / "stats.json")  # fmt: skip
    cli("evaluate", "discovery", "--shards", shard, *dataset_args(demo),
        "--out", run / "discovery.json")  # fmt: skip
    cli("evaluate", "cluster", "--pseudo-gt", run / "pseudo_gt.json", *dataset_args(demo),
        "--out", run / "cluster.json")  # fmt: skip
    cli("evaluate", "table", "--reports", run / "discovery.json", run / "cluster.json",
        "--out", run / "metrics.md")  # fmt: skip

    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(run / "pseudo_gt.json"))
    stats = read(run / "stats.json")
    assert len(coco.getImgIds()) == NUM_TRAIN + NUM_VAL == stats["num_images"]
    assert (
        len(coco.getAnnIds())
        == stats["num_annotated"]
        == NUM_TRAIN + NUM_VAL - len(stats["empty_images"])
    )
    assert sum(stats["cluster_sizes"]) == stats["num_annotated"]
    assert {ann["category_id"] for ann in coco.dataset["annotations"]} <= {1, 2, 3}

    discovery = read(run / "discovery.json")
    assert discovery["num_images"] == NUM_VAL
    assert discovery["summary"]["CorLoc"] == pytest.approx(_corloc(shard, demo), abs=1e-12)
    assert discovery["missing"] == []

    cluster = read(run / "cluster.json")
    classes = (demo / "classes.txt").read_text().split()
    assert list(cluster["per_class_iou"]) == ["background", *classes]
    assert cluster["num_images"] == cluster["num_with_semantic_labels"] == NUM_VAL
    truth, found = _cluster_labels(run / "pseudo_gt.json", demo)
    assert cluster["summary"]["NMI"] == pytest.approx(normalized_mutual_info_score(truth, found))
    assert cluster["summary"]["ARI"] == pytest.approx(adjusted_rand_score(truth, found))
    assert cluster["objects"]["num_objects"] <= NUM_VAL

    table = (run / "metrics.md").read_text()
    assert "| stage 1: discover | CorLoc |" in table
    assert "| stage 2: cluster | mIoU |" in table
    assert all(f"| {name} |" in table for name in classes)


def discover_record(index: int, file_name: str, size: tuple[int, int], box) -> dict:
    """A shard record with the given box (the mask itself is not read by CorLoc)."""
    return {
        "id": index,
        "file_name": file_name,
        "image_size": size,
        "resized_size": size,
        "patch_size": 8,
        "grid_shape": (1, 1),
        "source": 0,
        "grid_mask": np.ones((1, 1), bool),
        "box": box,
        "empty": False,
        "feature": np.zeros(4, np.float32),
        "attention": np.zeros((1, 1), np.float16),
    }


def test_corloc_is_one_for_ground_truth_boxes_and_zero_for_far_boxes(demo, tmp_path):
    dataset = open_dataset({"kind": "voc", "root": str(demo)}, ["val"])
    records = dataset.records()
    hits, misses = [], []
    for r in records:
        b = dataset.boxes(r)[-1]
        size = (r.height, r.width)
        hits.append(discover_record(r.id, r.file_name, size, (b.x, b.y, b.w, b.h)))
        misses.append(discover_record(r.id, r.file_name, size, (b.x + b.w, b.y + b.h, 2, 2)))
    for name, shard_records, expected in (("hit", hits, 1.0), ("miss", misses, 0.0)):
        shard = tmp_path / f"{name}.h5"
        write_shard(shard, shard_records[1:], {})  # the first image is missing: a miss
        cli("evaluate", "discovery", "--shards", shard, *dataset_args(demo),
            "--out", tmp_path / f"{name}.json")  # fmt: skip
        report = read(tmp_path / f"{name}.json")
        assert report["missing"] == [records[0].file_name]
        assert report["summary"]["CorLoc"] == pytest.approx(expected * (NUM_VAL - 1) / NUM_VAL)


def test_all_background_prediction_scores_background_iou_only(demo, tmp_path):
    dataset = open_dataset({"kind": "voc", "root": str(demo)}, ["val"])
    images = [
        {"id": r.id, "file_name": r.file_name, "height": r.height, "width": r.width}
        for r in dataset.records()
    ]
    categories = [{"id": i + 1, "name": f"cluster_{i:02d}"} for i in range(3)]
    pseudo_gt = tmp_path / "empty.json"
    pseudo_gt.write_text(
        json.dumps({"images": images, "annotations": [], "categories": categories})
    )
    cli("evaluate", "cluster", "--pseudo-gt", pseudo_gt, *dataset_args(demo),
        "--out", tmp_path / "cluster.json")  # fmt: skip
    report = read(tmp_path / "cluster.json")
    # expected from the label PNGs: background IoU = background pixels / valid pixels
    pngs = [demo / "SegmentationClass" / f"{Path(im['file_name']).stem}.png" for im in images]
    labels = np.concatenate([np.asarray(Image.open(png)).ravel() for png in pngs])
    valid = labels[labels != 255]
    present = set(np.unique(valid).tolist()) - {0}
    background = float(np.mean(valid == 0))
    iou = report["per_class_iou"]
    assert iou["background"] == pytest.approx(background)
    assert all(v == 0.0 for k, v in iou.items() if k != "background" and v is not None)
    assert sum(v is not None for v in iou.values()) == 1 + len(present)
    assert report["summary"]["mIoU"] == pytest.approx(background / (1 + len(present)))
    assert report["summary"]["cluster accuracy"] is None
    assert report["num_unannotated"] == NUM_VAL


def test_pseudo_gt_with_an_unknown_category_is_a_one_line_error(demo, tmp_path, caplog):
    record = open_dataset({"kind": "voc", "root": str(demo)}, ["val"]).records()[0]
    image = {"id": 1, "file_name": record.file_name, "height": record.height, "width": 1}
    annotation = {"id": 7, "image_id": 1, "category_id": 9, "segmentation": {}, "bbox": [0] * 4}
    pseudo_gt = tmp_path / "bad.json"
    pseudo_gt.write_text(
        json.dumps({"images": [image], "annotations": [annotation], "categories": [{"id": 1}]})
    )
    with pytest.raises(SystemExit):
        cli("evaluate", "cluster", "--pseudo-gt", pseudo_gt, *dataset_args(demo),
            "--out", tmp_path / "cluster.json")  # fmt: skip
    assert "bad.json: annotation 7 has category_id 9, expected 1..1" in caplog.text
    assert not (tmp_path / "cluster.json").exists()


def test_object_matching_maps_each_cluster_to_the_class_of_its_objects(demo, tmp_path):
    dataset = open_dataset({"kind": "voc", "root": str(demo)}, ["val"])
    permutation = [3, 5, 0, 1, 4, 2]  # class index c (0-based) -> cluster permutation[c]
    images, annotations, voted = [], [], {}
    for record in dataset.records():
        images.append({"id": record.id, "file_name": record.file_name,
                       "height": record.height, "width": record.width})  # fmt: skip
        mask, _ = dataset.instance_masks(record)[0]
        boxes = dataset.boxes(record)
        ann = mask_annotation(mask, annotation_id=record.id + 1, image_id=record.id, category_id=1)
        gt = np.array([(b.x, b.y, b.w, b.h) for b in boxes])
        c = box_class(ann["bbox"], gt, [b.label for b in boxes]) - 1
        ann["category_id"] = permutation[c] + 1
        annotations.append(ann)
        voted[str(permutation[c] + 1)] = dataset.class_names[c]
    categories = [{"id": i + 1, "name": f"cluster_{i:02d}"} for i in range(6)]
    pseudo_gt = tmp_path / "permuted.json"
    pseudo_gt.write_text(
        json.dumps({"images": images, "annotations": annotations, "categories": categories})
    )
    cli("evaluate", "cluster", "--pseudo-gt", pseudo_gt, *dataset_args(demo),
        "--matching", "objects", "--out", tmp_path / "cluster.json")  # fmt: skip
    report = read(tmp_path / "cluster.json")
    matching = report["semantic"]["matching"]
    assert matching["0"] == "background"
    assert {label: matching[label] for label in voted} == voted
    assert report["summary"]["cluster accuracy"] == 1.0
    assert report["matching"] == "objects"


def test_objects_protocol_names_later_stages_with_stage_2s_naming(demo, tmp_path):
    """A hand-made naming applied to hand-made stage-5 maps gives the hand-computed mIoU."""
    dataset = open_dataset({"kind": "voc", "root": str(demo)}, ["val"])
    records = dataset.records()
    names = ("background", *dataset.class_names)
    # label k+1 of the maps is class (k+1) itself except labels 1 and 2, which are swapped by
    # the naming: the maps paint every object with the label of its class, so with the naming
    # classes 1 and 2 come out wrong and every other class exactly right
    naming = list(range(len(names)))
    naming[1], naming[2] = 2, 1
    (tmp_path / "cluster.json").write_text(json.dumps({"matching": "objects", "naming": naming}))
    folder = tmp_path / "maps"
    gts = []
    for record in records:
        gt = dataset.semantic_labels(record)
        gts.append(gt)
        write_label_png(label_png_path(folder, record.file_name), np.where(gt == 255, 0, gt))
    categories = [{"id": i + 1, "name": f"cluster_{i:02d}"} for i in range(len(names) - 1)]
    pseudo_gt = tmp_path / "pgt.json"
    images = [{"id": r.id, "file_name": r.file_name, "height": r.height, "width": r.width}
              for r in records]  # fmt: skip
    pseudo_gt.write_text(
        json.dumps({"images": images, "annotations": [], "categories": categories})
    )
    cli("evaluate", "labels", "--labels", folder, "--pseudo-gt", pseudo_gt, "--title", "s5",
        *dataset_args(demo), "--naming", tmp_path / "cluster.json",
        "--out", tmp_path / "named.json")  # fmt: skip
    report = read(tmp_path / "named.json")
    # by hand: a confusion matrix of the maps against the ground truth, labels renamed
    valid = np.concatenate([g[g != 255] for g in gts]).astype(int)
    predicted = np.array(naming)[valid]
    ious = []
    for c in range(len(names)):
        tp = np.sum((valid == c) & (predicted == c))
        union = np.sum((valid == c) | (predicted == c))
        ious.append(tp / union if union else None)
    expected = np.mean([v for v in ious if v is not None])
    assert report["matching"] == "objects"
    assert report["summary"]["mIoU"] == pytest.approx(expected)
    assert report["per_class_iou"]["background"] == pytest.approx(1.0)
    assert report["per_class_iou"][names[1]] == 0.0  # renamed away
    cli("evaluate", "labels", "--labels", folder, "--pseudo-gt", pseudo_gt, "--title", "s5",
        *dataset_args(demo), "--out", tmp_path / "pixels.json")  # fmt: skip
    assert read(tmp_path / "pixels.json")["summary"]["mIoU"] == pytest.approx(1.0)
