"""The detectron2 backend of stage 3: config translation, train / resume / predict, the same
files as the torchvision backend, and the error without detectron2."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch
from prediction_checks import check_predictions

from maskdistill import cli, preflight
from maskdistill.config import defaults
from maskdistill.distill import detectron2
from maskdistill.masks import encode_rle
from maskdistill.runtime import available_cpus

needs_detectron2 = pytest.mark.skipif(
    not detectron2.available(),
    reason=f"detectron2 is not installed (optional backend: {detectron2.INSTALL})",
)


def test_without_detectron2_the_backend_fails_at_workflow_start():
    distill = defaults("distill") | {"backend": "detectron2"}
    with pytest.raises(ValueError, match=r"'distill.backend': detectron2 is not installed"):
        preflight.check_distill_backend(distill, installed=False)
    with pytest.raises(ValueError, match=r"'distill.arch': 'vit' is a torchvision-backend"):
        preflight.check_distill_backend(distill | {"arch": "vit"}, installed=True)
    preflight.check_distill_backend(defaults("distill"), installed=False)  # torchvision: fine


@needs_detectron2
def test_pipeline_settings_become_detectron2_config_values(tmp_path):
    settings = defaults("distill") | {
        "iterations": 1000, "lr_steps": [0.6, 0.9], "batch_size": 4, "lr": 0.01,
        "train_sizes": [480, 512], "test_size": 500, "max_size": 700, "init": "none",
        "trainable_layers": 5, "clip_grad": 2.0, "flip": False, "seed": 7,
        "detections_per_image": 20, "score_floor": 0.1, "proposals_train": 300,
    }  # fmt: skip
    cfg = detectron2.build_config(settings, 21, tmp_path, "cpu", workers=3, checkpoint_every=50)
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 21
    assert cfg.SOLVER.MAX_ITER == 1000 and cfg.SOLVER.STEPS == (600, 900)
    assert (cfg.SOLVER.IMS_PER_BATCH, cfg.SOLVER.BASE_LR, cfg.SOLVER.GAMMA) == (4, 0.01, 0.1)
    assert (cfg.SOLVER.WARMUP_ITERS, cfg.SOLVER.WARMUP_FACTOR) == (1000, 0.001)
    assert cfg.SOLVER.CLIP_GRADIENTS.ENABLED and cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE == 2.0
    assert cfg.INPUT.MIN_SIZE_TRAIN == (480, 512) and cfg.INPUT.MIN_SIZE_TEST == 500
    assert cfg.INPUT.MAX_SIZE_TRAIN == cfg.INPUT.MAX_SIZE_TEST == 700
    assert cfg.INPUT.RANDOM_FLIP == "none" and cfg.INPUT.MASK_FORMAT == "bitmask"
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.RESNETS.NORM == "GN"  # from scratch
    assert cfg.MODEL.BACKBONE.FREEZE_AT == 0 and cfg.SEED == 7
    assert (cfg.TEST.DETECTIONS_PER_IMAGE, cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST) == (20, 0.1)
    assert cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN == 300 and cfg.SOLVER.CHECKPOINT_PERIOD == 50
    assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.MODEL.MASK_ON  # the model-zoo R50-FPN
    assert str(tmp_path) == cfg.OUTPUT_DIR
    assert min(3, available_cpus()) == cfg.DATALOADER.NUM_WORKERS  # no more than the CPUs
    weights = tmp_path / "r50.pth"
    torch.save({"model": {}, "__author__": "someone"}, weights)  # detectron2's own format
    cfg = detectron2.build_config(settings | {"init": str(weights)}, 2, tmp_path, "cpu")
    assert str(weights) == cfg.MODEL.WEIGHTS and cfg.MODEL.RESNETS.NORM == "FrozenBN"
    with pytest.raises(ValueError, match="torchvision backend"):
        detectron2.build_config(
            settings | {"init": "torchvision:IMAGENET1K_V1"}, 2, tmp_path, "cpu"
        )
    with pytest.raises(ValueError, match="model zoo"):
        detectron2.build_config(settings | {"detectron2_config": "nope.yaml"}, 2, tmp_path, "cpu")


def _demo(tmp_path: Path) -> tuple[list[str], Path]:
    """A tiny demo dataset and its ground-truth masks as a 2-class pseudo ground truth."""
    data = tmp_path / "demo"
    cli.main(["make-demo-data", "--out", str(data), "--num-train", "4", "--num-val", "2"])
    from maskdistill.data import open_dataset

    dataset = open_dataset({"kind": "voc", "root": str(data)}, ["train", "val"])
    coco = {"images": [], "annotations": [], "categories": [{"id": 1}, {"id": 2}]}
    for i, record in enumerate(dataset.records()):
        coco["images"].append({"id": i, "file_name": record.file_name,
                               "height": record.height, "width": record.width})  # fmt: skip
        mask, label = dataset.instance_masks(record)[0]
        coco["annotations"].append({"id": i, "image_id": i, "category_id": 1 + label % 2,
                                    "segmentation": encode_rle(mask), "area": int(mask.sum()),
                                    "bbox": [0, 0, 1, 1], "iscrowd": 0})  # fmt: skip
    (tmp_path / "pseudo.json").write_text(json.dumps(coco))
    return ["--images", str(data), "--dataset-kind", "voc", "--splits", "train", "val"], coco


@pytest.mark.slow  # over 10 s: make test-fast leaves it out
@needs_detectron2
def test_a_tiny_detectron2_mask_rcnn_trains_resumes_and_predicts_valid_files(tmp_path, caplog):

    dataset, coco = _demo(tmp_path)
    resume = tmp_path / "resume"
    train = ["distill", "train", "--backend", "detectron2", "--arch", "resnet50", "--init",
             "none", "--pseudo-gt", str(tmp_path / "pseudo.json"), *dataset,
             "--iterations", "4", "--batch-size", "2", "--train-sizes", "64", "--test-size", "64",
             "--max-size", "96", "--warmup-iterations", "1", "--lr", "0.001",
             "--checkpoint-every", "2", "--device", "cpu", "--workers", "0", "--threads", "2",
             "--resume-dir", str(resume), "--out", str(tmp_path / "model.pth"),
             "--metrics", str(tmp_path / "metrics.jsonl"), "--keep-checkpoints"]  # fmt: skip
    cli.main(train)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records]
    assert steps[-1] == 4 and steps == sorted(set(steps))  # detectron2 logs every 20 and last
    assert all(np.isfinite(r["loss"]) and r["lr"] > 0 for r in records)
    first = torch.load(tmp_path / "model.pth", weights_only=True)
    assert first["extra"]["backend"] == "detectron2" and "ROI_HEADS" in first["extra"]["detectron2"]
    # a kill after the checkpoint of iteration 2: detectron2 resumes from it, not from 0
    (output,) = resume.glob("checkpoint-*")
    (output / "model_final.pth").unlink()
    (output / "last_checkpoint").write_text("model_0000001.pth")
    caplog.clear()
    with caplog.at_level(logging.INFO):
        cli.main(train)
    assert "at iteration 2" in caplog.text
    resumed = torch.load(tmp_path / "model.pth", weights_only=True)
    assert resumed["model"].keys() == first["model"].keys()

    out = tmp_path / "shard.json"
    cli.main(["distill", "predict", "--model", str(tmp_path / "model.pth"), "--pseudo-gt",
              str(tmp_path / "pseudo.json"), *dataset, "--device", "cpu", "--workers", "0",
              "--out", str(out)])  # fmt: skip
    check_predictions(json.loads(out.read_text()), coco)  # the torchvision backend's format


@needs_detectron2
def test_the_voc12_preset_converts_a_moco_checkpoint_and_reads_rgb_with_imagenet_statistics(
    tmp_path, repo
):
    """A MoCo v2 ResNet-50 file becomes detectron2 weights that fill the whole backbone."""
    import yaml
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.modeling import build_model

    from maskdistill.models.resnet import build_resnet

    torch.manual_seed(0)
    resnet = build_resnet("resnet50")
    with torch.no_grad():
        for buffer in resnet.buffers():  # statistics that a fresh network would not have
            if buffer.dtype.is_floating_point:
                buffer.uniform_(0.5, 1.5)
    moco = {"state_dict": {f"module.encoder_q.{k}": v for k, v in resnet.state_dict().items()}}
    torch.save(moco, tmp_path / "moco_v2.pth.tar")
    preset = yaml.safe_load((repo / "configs" / "voc12-detectron2.yaml").read_text())["distill"]
    settings = defaults("distill") | preset | {"init": str(tmp_path / "moco_v2.pth.tar")}
    settings["detectron2_config"] = str(repo / settings["detectron2_config"])
    cfg = detectron2.build_config(settings, 20, tmp_path / "out", "cpu")
    assert cfg.INPUT.FORMAT == "RGB" and not cfg.MODEL.RESNETS.STRIDE_IN_1X1
    assert list(cfg.MODEL.PIXEL_MEAN) == [123.675, 116.28, 103.53]
    assert list(cfg.MODEL.PIXEL_STD) == [58.395, 57.12, 57.375]
    assert str(tmp_path / "out" / "init-detectron2.pth") == cfg.MODEL.WEIGHTS
    model = build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    loaded = model.backbone.bottom_up.state_dict()
    expected = {
        detectron2.detectron2_key(k): v
        for k, v in resnet.state_dict().items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    assert set(loaded) == set(expected)  # every backbone tensor comes from the file
    assert all(torch.equal(loaded[k], v) for k, v in expected.items())
