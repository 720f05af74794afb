"""Stage 3: train Mask R-CNN on the stage-2 pseudo ground truth, predict scored masks, merge.

Subcommands:
  ``train``: Mask R-CNN with the K clusters as classes, on the pseudo ground truth's images;
  checkpoints every --checkpoint-every iterations into --resume-dir and resumes from there
  after a kill; writes the final network (--out) and its per-iteration metrics (--metrics).
  Under ``torchrun`` it trains data-parallel, one process per GPU.
  ``predict``: up to ``detections_per_image`` scored masks for each image of one shard
  (``crc32(file_name) % num_shards``, as discover), as a COCO results JSON list.
  ``merge``: the shards' predictions as one JSON list.
Defaults: the config schema's ``distill`` section (detectron2's R50-FPN 1x recipe).
"""

from __future__ import annotations

import argparse
import logging

from maskdistill import coco_files
from maskdistill.commands.dataset_args import (
    add_dataset_arguments,
    prediction_run,
    shard_records,
)
from maskdistill.commands.settings_args import (
    add_settings_arguments,
    add_training_arguments,
)
from maskdistill.config import defaults
from maskdistill.io import write_json

log = logging.getLogger(__name__)

EXECUTION = ("checkpoint_every", "device", "precision")  # not settings of the network
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("fp32", "fp16", "bf16")
# the network and training settings: every other key of the config's distill section
SETTINGS = tuple(key for key in defaults("distill") if key not in EXECUTION)
# torch and torchvision load only in the subcommands that need them (merge does not)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    train = sub.add_parser("train", help="train Mask R-CNN on the pseudo ground truth")
    predict = sub.add_parser("predict", help="scored masks for one shard of images")
    merge = sub.add_parser("merge", help="join the shards' predictions")
    predict.add_argument("--out", required=True, help="the shard's predictions (JSON)")
    for command in (train, predict):
        command.add_argument(
            "--pseudo-gt", nargs="+", required=True, help="stage-2 COCO JSONs (shard files)"
        )
        add_dataset_arguments(command)
        command.add_argument("--device", choices=DEVICES, default=defaults("distill")["device"])
        command.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        command.add_argument("--workers", type=int, default=2, help="image-loading processes")
        command.add_argument("--no-progress", dest="progress", action="store_false")
    add_settings_arguments(train, "distill", SETTINGS, "network and schedule (docs/method.md)")
    add_training_arguments(train, "distill", "iteration")
    train.set_defaults(_run="maskdistill.commands.distill_train:run_train")
    predict.add_argument("--model", required=True, help="the trained network (distill train)")
    predict.add_argument("--shard", type=int, default=0)
    predict.add_argument("--num-shards", type=int, default=1)
    predict.add_argument("--batch-size", type=int, default=4)
    predict.add_argument("--precision", choices=PRECISIONS, default="fp32")
    predict.add_argument("--on-bad-image", choices=("error", "skip"), default="error")
    predict.set_defaults(_run=run_predict)
    merge.add_argument("--shards", nargs="+", required=True, help="shard predictions (JSON)")
    merge.add_argument("--out", required=True)
    merge.set_defaults(_run=run_merge)


def _torchvision_predictions(path, payload, run, mine, image_ids):
    from maskdistill.distill.predict import predict_images
    from maskdistill.models.maskrcnn import MaskRCNNSettings, for_prediction, rebuild_maskrcnn

    model = rebuild_maskrcnn(payload["settings"], path)
    model.load_state_dict(payload["model"])
    model = for_prediction(model, MaskRCNNSettings.from_config(payload["settings"])).to(run.device)
    return predict_images(model, mine, image_ids, run)


def _detectron2_predictions(path, payload, run, mine, image_ids):
    from detectron2.config import CfgNode

    from maskdistill.distill import detectron2

    cfg = CfgNode.load_cfg(payload["extra"]["detectron2"])
    model = detectron2.build_predictor(cfg, payload["model"], run.device)
    return detectron2.predict_images(model, cfg, mine, image_ids, run)


def run_predict(args: argparse.Namespace) -> None:
    """Predictions for the images of one shard, as a COCO results JSON list (either backend's
    network: the model file says which)."""
    from maskdistill.distill.detectron2 import INSTALL as DETECTRON2_INSTALL
    from maskdistill.distill.detectron2 import available as detectron2_available
    from maskdistill.images import write_skipped
    from maskdistill.models.model_file import load_weights
    from maskdistill.runtime import resolve_device, set_threads

    device = resolve_device(args.device)
    set_threads(args.threads)
    payload = load_weights(args.model)
    backend = payload["extra"].get("backend", "torchvision")
    if backend == "detectron2" and not detectron2_available():
        raise ValueError(f"{args.model}: a detectron2 model, but detectron2 is not installed: "
                         f"{DETECTRON2_INSTALL}")  # fmt: skip
    from maskdistill.sharding import in_shard

    # the shard's images alone (the workflow passes the shard's own pseudo ground truth file)
    index = coco_files.read_pseudo_gt(args.pseudo_gt, keep=in_shard(args.shard, args.num_shards))
    image_ids = {image["file_name"]: image["id"] for image in index["images"]}
    run = prediction_run(args, device)
    mine = [r for r in shard_records(args, run.skipped) if r.file_name in image_ids]
    log.info("shard %d of %d: %d images on %s", args.shard, args.num_shards, len(mine), device)
    predict = _detectron2_predictions if backend == "detectron2" else _torchvision_predictions
    predictions = [
        entry
        for image_predictions in predict(args.model, payload, run, mine, image_ids)
        for entry in image_predictions
    ]
    write_json(args.out, predictions, compact=True)
    write_skipped(f"{args.out}.skipped.tsv", run.skipped)
    log.info("wrote %s: %d predictions for %d images", args.out, len(predictions), len(mine))


def run_merge(args: argparse.Namespace) -> None:
    """One list of every shard's predictions, in shard order."""
    merged = coco_files.read_results(args.shards)
    write_json(args.out, merged, compact=True)
    log.info("wrote %s: %d predictions from %d shards", args.out, len(merged), len(args.shards))
