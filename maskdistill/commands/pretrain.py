"""Pretrain a ViT backbone with DINO self-distillation; export the teacher for discover.

Views come from the dataset's images (plain DINO multi-crop) or, for the demo, from the demo
generator's paired renderings (``--views paired-demo``: the same objects on two backgrounds, plus
an InfoNCE term between the renderings). The rolling checkpoint (--checkpoint) is written every
--checkpoint-every steps and resumed from automatically; --out receives the teacher backbone as an
fp16 timm-keyed state dict once training has finished.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import numpy as np
import torch
from tqdm import tqdm

from maskdistill import pretrain
from maskdistill.commands.dataset_args import open_dataset_from_args
from maskdistill.data import KINDS
from maskdistill.images import load_or_skip, write_skipped

log = logging.getLogger(__name__)

# Settings whose command-line default differs by view source (None = pick by --views).
_PER_VIEWS = {"infonce_weight": {"paired-demo": 1.0, "dataset": 0.0}}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the pretrain options: inputs, outputs, and one flag per PretrainSettings field."""
    parser.add_argument("--views", choices=["dataset", "paired-demo"], default="dataset")
    # the options of maskdistill.commands.dataset_args, optional here (paired-demo reads none)
    data = parser.add_argument_group("dataset (--views dataset)")
    data.add_argument("--images", help="folder: image folder; voc: VOC dir; coco: image dir")
    data.add_argument("--dataset-kind", choices=KINDS, default="folder")
    data.add_argument("--splits", nargs="+", default=None, help="voc: split names, e.g. val")
    data.add_argument("--imagesets", default="Segmentation", help="voc: ImageSets/<imagesets>")
    data.add_argument("--annotations", help="coco: instances JSON")
    data.add_argument("--image-list", help="coco: list of file names")
    data.add_argument("--on-bad-image", choices=["error", "skip"], default="error")
    data.add_argument("--skipped", help="TSV listing skipped images (with --on-bad-image skip)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--out", required=True, help="exported teacher backbone (.pth, fp16)")
    out.add_argument("--checkpoint", required=True, help="rolling full checkpoint (resumed)")
    out.add_argument("--checkpoint-every", type=int, default=50, help="steps")
    out.add_argument("--metrics", help="JSON-lines file of training metrics (appended)")
    out.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    run = parser.add_argument_group("execution")
    run.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    run.add_argument("--threads", type=int, default=2, help="CPU threads")
    settings = parser.add_argument_group("training settings (see maskdistill/pretrain.py)")
    for field in dataclasses.fields(pretrain.PretrainSettings):
        flag = "--" + field.name.replace("_", "-")
        if field.name in _PER_VIEWS:
            settings.add_argument(flag, type=float, default=None)
        elif isinstance(field.default, tuple):
            settings.add_argument(flag, type=float, nargs=2, default=list(field.default))
        else:
            settings.add_argument(flag, type=type(field.default), default=field.default)


def settings_from_args(args: argparse.Namespace) -> pretrain.PretrainSettings:
    """The PretrainSettings the parsed arguments ask for."""
    values = {}
    for field in dataclasses.fields(pretrain.PretrainSettings):
        value = getattr(args, field.name)
        if value is None:
            value = _PER_VIEWS[field.name][args.views]
        values[field.name] = tuple(value) if isinstance(value, list) else value
    return pretrain.PretrainSettings(**values)


def load_training_images(args: argparse.Namespace, shorter_side: int) -> list[np.ndarray]:
    """The dataset's images, each resized so that its shorter side is ``shorter_side`` pixels."""
    if not args.images:
        raise ValueError("--views dataset needs --images (and --dataset-kind unless folder)")
    records = open_dataset_from_args(args).records()
    images, skipped = [], []
    for record in tqdm(records, desc="loading images", mininterval=30):
        image = load_or_skip(record.path, args.on_bad_image, skipped)
        if image is not None:
            images.append(pretrain.resize_shorter_side(image, shorter_side))
    if args.skipped:
        write_skipped(args.skipped, skipped)
    log.info("%d images loaded, %d skipped", len(images), len(skipped))
    return images


def run(args: argparse.Namespace) -> None:
    """Train (resuming from --checkpoint when present), then export the teacher to --out."""
    settings = settings_from_args(args)
    if args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    elif device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    torch.set_num_threads(args.threads)
    if args.views == "paired-demo":
        views = pretrain.paired_demo_views
    else:
        views = pretrain.image_views(load_training_images(args, 2 * settings.global_size))
    state = pretrain.train(
        settings,
        views,
        args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        resume=not args.no_resume,
        metrics_log=args.metrics,
        device=device,
    )
    pretrain.export_backbone(args.out, state)
    log.info("teacher backbone written to %s", args.out)
