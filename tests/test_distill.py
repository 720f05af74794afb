"""Stage 3 (distill): training data, batching, the tiny Mask R-CNN learning known masks, exact
resume, prediction files, AP50 with known answers, and the command line."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest
import torch
from model_file_checks import copy_alone, undescribed_copy
from PIL import Image
from prediction_checks import check_predictions

from maskdistill import cli, coco_files, evaluation
from maskdistill.config import defaults
from maskdistill.data import open_dataset
from maskdistill.distill.data import (
    DistillDataset,
    epoch_batches,
    flip_target,
    step_batches,
    target_of,
    training_set,
)
from maskdistill.distill.predict import predict_images
from maskdistill.distill.train import DistillTrainSettings, train_maskrcnn
from maskdistill.distributed import World
from maskdistill.loader import PredictionRun
from maskdistill.masks import encode_rle, mask_annotation, mask_box
from maskdistill.models.maskrcnn import (
    MaskRCNNSettings,
    build_maskrcnn,
    for_prediction,
    rebuild_maskrcnn,
)
from maskdistill.training.loop import TrainingRun
from maskdistill.training.rng import seeded
from maskdistill.workflow import cli_flags

# a tiny ViT-backed Mask R-CNN that trains in seconds on 64 x 80 images
TINY = {
    "arch": "vit",
    "init": "random:patch=8,width=32,depth=1,heads=2,img=64,seed=0",
    "trainable_layers": 1,
    "fpn_channels": 32,
    "box_head_dim": 64,
    "mask_head_convs": 1,
    "train_sizes": [64],
    "test_size": 64,
    "max_size": 128,
    "proposals_train": 100,
    "proposals_test": 50,
    "rpn_batch_size": 64,
    "roi_batch_size": 32,
    "score_floor": 0.0,
    "detections_per_image": 10,
    "iterations": 6,
    "batch_size": 2,
    "lr": 0.16,
    "warmup_iterations": 5,
    "warmup_factor": 0.1,
    "lr_steps": [0.8],
}
COLOURS = {1: (230, 40, 40), 2: (40, 80, 230)}  # category -> RGB of its squares


def settings(**overrides) -> dict:
    return defaults("distill") | TINY | overrides


def settings_flags(values: dict) -> list[str]:
    """The command-line flags of the network and training settings among ``values``."""
    names = [f.name for cls in (MaskRCNNSettings, DistillTrainSettings) for f in fields(cls)]
    return shlex.split(cli_flags({name: values[name] for name in names}))


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _scene(rng: np.random.Generator, height: int, width: int) -> tuple[np.ndarray, list]:
    """Dark noise with one red and one blue square; returns the image and (mask, category)."""
    image = rng.integers(0, 50, (height, width, 3), dtype=np.uint8)
    objects = []
    for category, left in ((1, 4), (2, width // 2 + 2)):
        top, side = int(rng.integers(4, height - 28)), int(rng.integers(18, 24))
        mask = np.zeros((height, width), bool)
        mask[top : top + side, left : left + side] = True
        image[mask] = COLOURS[category]
        objects.append((mask, category))
    return image, objects


@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> tuple[Path, dict]:
    """6 generated images (4 landscape, 2 portrait) and their exact masks as a COCO dict."""
    root = tmp_path_factory.mktemp("scenes")
    rng = np.random.default_rng(0)
    coco = {"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 2}]}
    for i, (height, width) in enumerate([(64, 80)] * 4 + [(80, 64)] * 2):
        image, objects = _scene(rng, height, width)
        name = f"scene{i}.png"
        Image.fromarray(image).save(root / name)
        coco["images"].append({"id": i, "file_name": name, "height": height, "width": width})
        for mask, category in objects:
            ann_id = len(coco["annotations"]) + 1
            coco["annotations"].append(
                mask_annotation(mask, annotation_id=ann_id, image_id=i, category_id=category)
            )
    (root / "pseudo_gt.json").write_text(json.dumps(coco))
    return root, coco


# ---------------------------------------------------------------- training data


def test_boxes_come_from_masks_with_exclusive_ends():
    masks = np.zeros((2, 6, 8), bool)
    masks[0, 1:3, 2:5] = True
    masks[1, 4:6, 0:1] = True
    target = target_of(masks, [3, 1])
    assert target["boxes"].tolist() == [[2, 1, 5, 3], [0, 4, 1, 6]]
    assert target["labels"].tolist() == [3, 1] and target["masks"].dtype == torch.uint8


def test_a_flip_keeps_masks_and_boxes_aligned():
    masks = np.zeros((1, 6, 8), bool)
    masks[0, 1:3, 2:5] = True
    flipped = flip_target(target_of(masks, [1]), width=8)
    x, y, w, h = mask_box(flipped["masks"][0].numpy().astype(bool))
    assert flipped["boxes"].tolist() == [[x, y, x + w, y + h]] == [[3, 1, 6, 3]]


def test_degenerate_masks_and_images_without_annotations_are_counted_and_left_out(tmp_path):
    thin = np.zeros((10, 10), bool)
    thin[2:8, 4] = True  # one pixel wide
    good = np.zeros((10, 10), bool)
    good[2:6, 2:6] = True
    coco = {
        "images": [{"id": i, "file_name": f"{i}.png", "height": 10, "width": 10} for i in range(3)],
        "annotations": [
            {"id": 1, "image_id": 0, "category_id": 1, "segmentation": encode_rle(good)},
            {"id": 2, "image_id": 0, "category_id": 2, "segmentation": encode_rle(thin)},
            {"id": 3, "image_id": 1, "category_id": 1, "segmentation": encode_rle(thin)},
        ],
        "categories": [{"id": 1}, {"id": 2}],
    }
    data = training_set(coco, tmp_path)
    assert [image.file_name for image in data.images] == ["0.png"]
    assert data.images[0].labels == (1,) and data.dropped_masks == 2
    assert data.without_annotations == ["1.png", "2.png"]
    coco["annotations"][0]["category_id"] = 3
    with pytest.raises(ValueError, match="category id 3 outside 1..2"):
        training_set(coco, tmp_path)


def test_batches_hold_one_orientation_and_resume_where_they_stopped():
    groups = [True, False, True, True, False, True, False, True]
    batches = epoch_batches(groups, 2, seed=0, epoch=0)
    assert all(len({groups[i] for i in batch}) == 1 for batch in batches)
    assert all(len(batch) == 2 for batch in batches)
    assert epoch_batches(groups, 2, seed=0, epoch=0) == batches
    assert epoch_batches(groups, 2, seed=0, epoch=1) != batches
    whole = list(step_batches(groups, 2, seed=0, start=0, stop=20))
    assert [step for step, _ in whole] == list(range(20))
    assert list(step_batches(groups, 2, seed=0, start=13, stop=20)) == whole[13:]
    with pytest.raises(ValueError, match="no 6 training images of one orientation"):
        list(step_batches(groups, 6, seed=0, start=0, stop=1))


def test_the_dataset_flips_by_image_and_step(scenes):
    root, coco = scenes
    data = training_set(coco, root)
    dataset = DistillDataset(data.images, seed=3)
    flips = []
    for step in range(8):
        image, target = dataset[(0, step)]
        plain, _ = DistillDataset(data.images, seed=3, flip=False)[(0, step)]
        flips.append(not torch.equal(image, plain))
        if flips[-1]:
            assert torch.equal(image, plain.flip(-1))
        assert target["masks"].shape[1:] == image.shape[1:]
    assert any(flips) and not all(flips)
    assert dataset[(0, 5)][0].equal(dataset[(0, 5)][0])


# ---------------------------------------------------------------- training, resume, prediction


def _train(scenes, tmp_path: Path, stop_after=None, **overrides) -> torch.nn.Module:
    root, coco = scenes
    values = settings(**overrides)
    data = training_set(coco, root)
    train = DistillTrainSettings.from_config(values)
    with seeded(train.seed):
        model, _ = build_maskrcnn(2, MaskRCNNSettings.from_config(values))
    run = TrainingRun(
        run_settings=values,
        checkpoint=tmp_path / "checkpoint.pth",
        checkpoint_every=2,
        resume=True,
        metrics_log=tmp_path / "metrics.jsonl",
        device=torch.device("cpu"),
        world=World(),
        progress=False,
        stop_after=stop_after,
    )
    return train_maskrcnn(model, DistillDataset(data.images, train.seed), train, run)


def _predict(model, scenes) -> list[dict]:
    root, coco = scenes
    records = open_dataset({"kind": "folder", "root": str(root)}).records()
    ids = {image["file_name"]: image["id"] for image in coco["images"]}
    model = for_prediction(model, MaskRCNNSettings.from_config(settings()))
    return [
        p
        for image in predict_images(
            model, records, ids, PredictionRun(torch.device("cpu"), progress=False)
        )
        for p in image
    ]


def test_resume_after_a_stop_gives_the_uninterrupted_weights(scenes, tmp_path):
    straight = _train(scenes, tmp_path / "straight")
    _train(scenes, tmp_path / "sliced", stop_after=3)
    payload = torch.load(tmp_path / "sliced" / "checkpoint.pth", weights_only=True)
    assert payload["step"] == 3
    resumed = _train(scenes, tmp_path / "sliced")
    for (name, a), b in zip(
        straight.state_dict().items(), resumed.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name
    steps = [json.loads(line)["step"] for line in (tmp_path / "sliced" / "metrics.jsonl").open()]
    assert steps == list(range(1, 7))  # every iteration once, none repeated after the resume


def test_a_tiny_mask_rcnn_learns_known_masks(scenes, tmp_path):
    root, coco = scenes
    ground_truth = {**coco, "categories": [{"id": 1, "name": "object"}]}
    ground_truth["annotations"] = [{**a, "category_id": 1} for a in coco["annotations"]]
    untrained = _train(scenes, tmp_path / "untrained", iterations=1, lr=1e-6)
    before = evaluation.mask_ap50(ground_truth, _predict(untrained, scenes))
    trained = _train(scenes, tmp_path / "trained", iterations=80)
    predictions = _predict(trained, scenes)
    after = evaluation.mask_ap50(ground_truth, predictions)
    assert before < 0.2 < 0.7 < after, (before, after)
    check_predictions(predictions, coco)  # the format every backend's files have


# ---------------------------------------------------------------- AP50 with known answers


def test_predictions_equal_to_the_ground_truth_give_ap50_one(scenes):
    _, coco = scenes
    ground_truth = {**coco, "categories": [{"id": 1, "name": "object"}]}  # class-agnostic
    ground_truth["annotations"] = [{**a, "category_id": 1} for a in coco["annotations"]]
    names = {image["id"]: image["file_name"] for image in coco["images"]}
    perfect = [{**a, "file_name": names[a["image_id"]], "score": 0.9} for a in coco["annotations"]]
    assert evaluation.mask_ap50(ground_truth, perfect) == pytest.approx(1.0)
    single = coco_files.most_confident(
        [{**p, "score": 0.9 - 0.1 * (i % 2)} for i, p in enumerate(perfect)]
    )
    assert len(single) == len(coco["images"])
    assert {p["file_name"] for p in single} == set(names.values())
    assert all(p["score"] == 0.9 for p in single)
    # one of the two objects per image found: recall 0.5, precision 1 -> AP50 about 0.5
    assert evaluation.mask_ap50(ground_truth, single) == pytest.approx(0.5, abs=0.02)
    assert evaluation.mask_ap50(ground_truth, []) == 0.0


# ---------------------------------------------------------------- the command line


def test_cli_trains_predicts_merges_and_evaluates(tmp_path):
    data = tmp_path / "demo"
    cli.main(["make-demo-data", "--out", str(data), "--num-train", "4", "--num-val", "2"])
    dataset = open_dataset({"kind": "voc", "root": str(data)}, ["train", "val"])
    coco = {"images": [], "annotations": [], "categories": [{"id": k} for k in (1, 2)]}
    for i, record in enumerate(dataset.records()):
        coco["images"].append(
            {"id": i, "file_name": record.file_name, "height": record.height, "width": record.width}
        )
        mask, label = dataset.instance_masks(record)[0]
        coco["annotations"].append(
            mask_annotation(mask, annotation_id=i + 1, image_id=i, category_id=1 + label % 2)
        )
    (tmp_path / "pgt.json").write_text(json.dumps(coco))
    voc = ["--images", str(data), "--dataset-kind", "voc"]
    tiny = settings_flags(settings(iterations=2, train_sizes=[64, 80]))
    cli.main(["distill", "train", "--pseudo-gt", str(tmp_path / "pgt.json"), *voc,
              "--splits", "train", "val", *tiny, "--resume-dir", str(tmp_path / "resume"),
              "--out", str(tmp_path / "model.pth"), "--metrics", str(tmp_path / "m.jsonl"),
              "--workers", "0", "--device", "cpu", "--keep-checkpoints"])  # fmt: skip
    assert len((tmp_path / "m.jsonl").read_text().splitlines()) == 2
    (kept,) = (tmp_path / "resume").glob("checkpoint-*.pth")
    for shard in (0, 1):
        cli.main(["distill", "predict", "--model", str(tmp_path / "model.pth"),
                  "--pseudo-gt", str(tmp_path / "pgt.json"), *voc, "--splits", "train", "val",
                  "--shard", str(shard), "--num-shards", "2", "--workers", "0", "--device", "cpu",
                  "--out", str(tmp_path / f"shard{shard}.json")])  # fmt: skip
    shard_files = [str(tmp_path / f"shard{shard}.json") for shard in (0, 1)]
    cli.main(["distill", "merge", "--shards", *shard_files,
              "--out", str(tmp_path / "predictions.json")])  # fmt: skip
    merged = json.loads((tmp_path / "predictions.json").read_text())
    shards = [json.loads((tmp_path / f"shard{s}.json").read_text()) for s in (0, 1)]
    assert merged == shards[0] + shards[1]
    names = {p["file_name"] for p in merged}
    assert names <= {image["file_name"] for image in coco["images"]}
    cli.main(["evaluate", "distill", "--predictions", str(tmp_path / "predictions.json"),
              "--pseudo-gt", str(tmp_path / "pgt.json"), *voc, "--splits", "val",
              "--out", str(tmp_path / "distill.json")])  # fmt: skip
    report = json.loads((tmp_path / "distill.json").read_text())
    assert set(report["summary"]) == {"mask AP50 (multi)", "mask AP50 (single)", "mIoU"}
    assert report["num_images"] == 2
    # the workflow scores the shard files themselves: the same metrics as the merged list
    cli.main(["evaluate", "distill", "--predictions", *shard_files,
              "--pseudo-gt", str(tmp_path / "pgt.json"), *voc, "--splits", "val",
              "--out", str(tmp_path / "by_shard.json")])  # fmt: skip
    by_shard = json.loads((tmp_path / "by_shard.json").read_text())
    assert by_shard["summary"] == report["summary"]
    assert by_shard["num_predictions"] == report["num_predictions"]
    # a changed pseudo ground truth starts over: the old checkpoint is removed
    coco["annotations"] = coco["annotations"][1:]
    (tmp_path / "pgt.json").write_text(json.dumps(coco))
    cli.main(["distill", "train", "--pseudo-gt", str(tmp_path / "pgt.json"), *voc,
              "--splits", "train", "val", *tiny, "--resume-dir", str(tmp_path / "resume"),
              "--out", str(tmp_path / "model.pth"), "--metrics", str(tmp_path / "m.jsonl"),
              "--workers", "0", "--device", "cpu"])  # fmt: skip
    # the old key's checkpoint went when the new run started, the new one when it finished
    assert not kept.exists() and not (tmp_path / "resume").exists()


def test_a_model_file_alone_predicts_as_with_its_init_weights(scenes, tmp_path, monkeypatch):
    """Trained from a ViT weight file, the model file copied alone into an empty folder with the
    weight file gone predicts the same detections (it rebuilds from its own description)."""
    from maskdistill.models import vit
    from maskdistill.models.model_file import load_weights

    root, _ = scenes
    init = tmp_path / "init" / "vit.pth"
    init.parent.mkdir()
    file_vit = "random:patch=8,width=192,depth=1,img=64,seed=0"  # 3 heads: inferred from a file
    torch.save(vit.load_backbone(file_vit).state_dict(), init)
    values = settings(iterations=2, init=str(init))
    command = ["--pseudo-gt", str(root / "pseudo_gt.json"), "--images", str(root),
               "--workers", "0", "--device", "cpu", "--no-progress"]  # fmt: skip
    cli.main(["distill", "train", *command, *settings_flags(values),
              "--resume-dir", str(tmp_path / "resume"), "--out", str(tmp_path / "model.pth"),
              "--metrics", str(tmp_path / "m.jsonl")])  # fmt: skip
    predict = ["distill", "predict", *command]
    cli.main([*predict, "--model", str(tmp_path / "model.pth"), "--out", str(tmp_path / "p.json")])
    alone = copy_alone(tmp_path / "model.pth", init, monkeypatch)
    cli.main([*predict, "--model", "model.pth", "--out", "p.json"])
    ours = json.loads((tmp_path / "p.json").read_text())
    assert ours and json.loads((alone / "p.json").read_text()) == ours
    assert load_weights(alone / "model.pth")["settings"]["backbone"]["vit"]["embed_dim"] == 192
    undescribed_copy(alone / "model.pth")
    with pytest.raises(SystemExit):
        cli.main([*predict, "--model", "old.pth", "--out", "old.json"])
    assert not (alone / "old.json").exists()


def test_a_resnet_trained_from_scratch_rebuilds_with_group_norm_from_its_description():
    values = settings(arch="resnet18", init="none", train_sizes=[64], test_size=64)
    with seeded(0):
        model, norm = build_maskrcnn(2, MaskRCNNSettings.from_config(values))
    assert model.backbone_description == {**norm.describe(), "scratch": True}
    described = {**values, "num_classes": 2, "backbone": model.backbone_description}
    rebuilt = rebuild_maskrcnn(described, "model.pth")
    rebuilt.load_state_dict(model.state_dict())  # strict: the same architecture (GroupNorm)
    assert isinstance(rebuilt.backbone.body.bn1, torch.nn.GroupNorm)
    image = torch.rand(3, 64, 64)
    model.eval(), rebuilt.eval()
    with torch.no_grad():
        expected, got = model([image])[0], rebuilt([image])[0]
    assert all(torch.equal(expected[key], got[key]) for key in expected)


def _train_command(scenes, out: Path, processes: int) -> list[str]:
    root, _ = scenes
    values = settings(iterations=3, batch_size=4, rpn_batch_size=100000, roi_batch_size=100000)
    launcher = [sys.executable, "-m"]
    if processes > 1:
        launcher += ["torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", "-m"]
    return [*launcher, "maskdistill", "distill", "train",
            "--pseudo-gt", str(root / "pseudo_gt.json"), "--images", str(root),
            *settings_flags(values), "--resume-dir", str(out / "resume"), "--workers", "0",
            "--device", "cpu", "--threads", "1", "--no-progress",
            "--out", str(out / "model.pth"), "--metrics", str(out / "m.jsonl")]  # fmt: skip


@pytest.mark.slow  # over 10 s: make test-fast leaves it out
def test_two_gloo_processes_match_one_process_with_the_same_total_batch(scenes, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for processes in (1, 2):
        out = tmp_path / f"p{processes}"
        result = subprocess.run(
            _train_command(scenes, out, processes), env=env, capture_output=True, text=True
        )
        assert result.returncode == 0, result.stderr[-3000:]
    one = torch.load(tmp_path / "p1" / "model.pth", weights_only=True)["model"]
    two = torch.load(tmp_path / "p2" / "model.pth", weights_only=True)["model"]
    with seeded(0):
        start = build_maskrcnn(2, MaskRCNNSettings.from_config(settings()))[0].state_dict()
    moved = sum(float((one[k] - start[k]).norm() ** 2) for k in one if one[k].is_floating_point())
    apart = sum(float((one[k] - two[k]).norm() ** 2) for k in one if one[k].is_floating_point())
    # the same batches and samples; only each process's loss normalisation differs (the mask
    # and box losses average over that process's RoIs), so the two runs' updates agree to a
    # few percent of their size
    assert moved > 0 and (apart / moved) ** 0.5 < 0.1, (apart / moved) ** 0.5


def test_the_commands_flags_are_the_settings_classes_fields():
    from maskdistill.commands.distill import SETTINGS

    names = {f.name for cls in (MaskRCNNSettings, DistillTrainSettings) for f in fields(cls)}
    # every schema setting reaches the network or the schedule, but the backend's choice
    assert set(SETTINGS) == names | {"backend", "detectron2_config", "trust_pickle"}
