"""The training job of stage 3 (``distill train``, either backend; arguments: commands.distill).

Kept apart from the prediction jobs so that their code fingerprints do not hold the training
loop (editing the loop reruns training jobs only).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import shutil
from pathlib import Path

from maskdistill.coco_files import files_named, read_pseudo_gt
from maskdistill.commands.dataset_args import (
    open_dataset_from_args,
)
from maskdistill.commands.distill import SETTINGS
from maskdistill.commands.settings_args import (
    settings_from_args,
)
from maskdistill.commands.training_job import finish_training, start_training, weights_saver

log = logging.getLogger(__name__)


def _run_settings(args: argparse.Namespace, num_classes: int) -> dict:
    """Everything that decides the trained network: settings, classes, the training data."""
    digest = hashlib.sha256()
    for path in args.pseudo_gt:
        digest.update(Path(path).read_bytes())
    return {
        **settings_from_args(args, SETTINGS),
        "num_classes": num_classes,
        "pseudo_gt_sha256": digest.hexdigest(),
    }


def run_train(args: argparse.Namespace) -> None:
    """Train (resuming when a checkpoint of the same run exists), write the final network."""
    if args.backend == "detectron2":
        run_train_detectron2(args)
        return
    from maskdistill import distributed
    from maskdistill.distill.data import DistillDataset
    from maskdistill.distill.train import DistillTrainSettings, train_maskrcnn
    from maskdistill.models.maskrcnn import MaskRCNNSettings, build_maskrcnn
    from maskdistill.provenance import provenance
    from maskdistill.runtime import resolve_device, set_threads
    from maskdistill.training.rng import seeded

    device = resolve_device(args.device)
    world = distributed.init(device)
    device = world.device(device)
    set_threads(args.threads)
    data = _training_data(args)
    settings = DistillTrainSettings.from_config(vars(args))
    with seeded(settings.seed):
        model, _ = build_maskrcnn(data.num_categories, MaskRCNNSettings.from_config(vars(args)))
    run_settings = _run_settings(args, data.num_categories)
    run_settings["backbone"] = model.backbone_description  # the model file rebuilds alone
    run = start_training(args, run_settings, world, device)
    dataset = DistillDataset(data.images, settings.seed, flip=settings.flip)
    trained = train_maskrcnn(model.to(device), dataset, settings, run)
    if world.main:
        saver = weights_saver(trained.state_dict(), run_settings, {"provenance": provenance()})
        finish_training(args, saver, run.metrics_log)
    distributed.close(world)


def _training_data(args: argparse.Namespace):
    from maskdistill.distill.data import training_set

    coco = read_pseudo_gt(args.pseudo_gt)
    source = files_named(args.pseudo_gt)
    data = training_set(coco, open_dataset_from_args(args).image_root, source=source)
    log.info(
        "%d training images (%d without a usable mask left out), %d degenerate masks dropped",
        len(data.images),
        len(data.without_annotations),
        data.dropped_masks,
    )
    if not data.images:
        raise ValueError(f"{source}: no image with a usable mask to train on")
    return data


def run_train_detectron2(args: argparse.Namespace) -> None:
    """The detectron2 backend's training: its trainer and checkpointer, the same output files."""
    import torch

    from maskdistill.distill import detectron2
    from maskdistill.provenance import provenance
    from maskdistill.runtime import resolve_device, set_threads
    from maskdistill.training.checkpoints import resume_files
    from maskdistill.training.metrics_log import MetricsLog

    if not detectron2.available():
        raise ValueError(f"distill.backend: detectron2 is not installed: {detectron2.INSTALL}")
    device = resolve_device(args.device)
    set_threads(args.threads)
    data = _training_data(args)
    run_settings = _run_settings(args, data.num_categories)
    checkpoint, metrics = resume_files(args.resume_dir, run_settings)
    output_dir = checkpoint.with_suffix("")  # detectron2's own checkpoints, keyed as ours
    if args.no_resume and output_dir.exists():
        shutil.rmtree(output_dir)
    cfg = detectron2.build_config(
        vars(args), data.num_categories, output_dir, device.type, args.workers,
        args.checkpoint_every,
    )  # fmt: skip
    gpus = torch.cuda.device_count() if device.type == "cuda" else 1
    if gpus > 1:  # detectron2's own launcher: one process per visible GPU
        detectron2.train_on_gpus(cfg, data.images, not args.no_resume, gpus)
        state = detectron2.final_weights(cfg)
    else:
        state = detectron2.train(cfg, data.images, resume=not args.no_resume).state_dict()
    extra = {"provenance": provenance(), "backend": "detectron2", "detectron2": cfg.dump()}
    log_file = MetricsLog(args.metrics)
    for record in detectron2.metrics_records(output_dir / "metrics.json"):
        log_file.write(record)
    finish_training(args, weights_saver(state, run_settings, extra), None)
