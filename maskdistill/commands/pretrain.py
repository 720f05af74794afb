"""Pretrain a ViT backbone with DINO self-distillation; export the teacher for discover.

Views come from the dataset's images (plain DINO multi-crop) or, for the demo, from the demo
generator's paired renderings (``--views paired-demo``: the same objects on two backgrounds, plus
an InfoNCE term between the renderings). The rolling checkpoint (--checkpoint) is written every
--checkpoint-every steps and resumed from automatically; --out receives the teacher backbone as an
fp16 timm-keyed state dict once training has finished. Defaults: the config schema's
``pretrain`` section.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging

import numpy as np

from maskdistill.commands.dataset_args import add_dataset_arguments, open_dataset_from_args
from maskdistill.config import defaults
from maskdistill.demo import paired_demo_views
from maskdistill.images import ON_BAD_IMAGE, load_or_skip, write_skipped
from maskdistill.pretrain.loop import export_backbone, train
from maskdistill.pretrain.settings import VIEWS, PretrainSettings
from maskdistill.pretrain.views import image_views, resize_shorter_side
from maskdistill.progress import Progress
from maskdistill.runtime import DEVICES, resolve_device, set_threads

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the pretrain options: inputs, outputs, and one flag per PretrainSettings field."""
    default = defaults("pretrain")
    parser.add_argument("--views", choices=VIEWS, default=default["views"])
    add_dataset_arguments(parser, required=False)  # paired-demo views read no dataset
    data = parser.add_argument_group("bad images (--views dataset)")
    data.add_argument("--on-bad-image", choices=ON_BAD_IMAGE, default="error")
    data.add_argument("--skipped", help="TSV listing skipped images (with --on-bad-image skip)")
    out = parser.add_argument_group("outputs")
    out.add_argument("--out", required=True, help="exported teacher backbone (.pth, fp16)")
    out.add_argument("--checkpoint", required=True, help="rolling full checkpoint (resumed)")
    out.add_argument(
        "--checkpoint-every", type=int, default=default["checkpoint_every"], help="steps"
    )
    out.add_argument("--metrics", help="JSON-lines file of training metrics")
    out.add_argument("--no-resume", action="store_true", help="ignore an existing checkpoint")
    run = parser.add_argument_group("execution")
    run.add_argument("--device", choices=DEVICES, default=default["device"])
    run.add_argument("--threads", type=int, default=2, help="CPU threads")
    settings = parser.add_argument_group("training settings (maskdistill/pretrain/settings.py)")
    for field in dataclasses.fields(PretrainSettings):
        flag = "--" + field.name.replace("_", "-")
        value = default.get(field.name, field.default)
        if field.name == "infonce_weight":
            settings.add_argument(flag, type=float, default=None, help="default: by --views")
        elif isinstance(value, tuple):
            settings.add_argument(flag, type=float, nargs=2, default=list(value))
        else:
            settings.add_argument(flag, type=type(value), default=value)


def settings_from_args(args: argparse.Namespace) -> PretrainSettings:
    """The PretrainSettings the parsed arguments ask for."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(PretrainSettings)}
    return PretrainSettings.with_defaults(args.views, **values)


def load_training_images(args: argparse.Namespace, shorter_side: int) -> list[np.ndarray]:
    """The dataset's images, each resized so that its shorter side is ``shorter_side`` pixels."""
    if not args.images:
        raise ValueError("--views dataset needs --images (and --dataset-kind unless folder)")
    images, skipped = [], []
    records = open_dataset_from_args(args).usable_records(args.on_bad_image, skipped)
    with Progress(len(records), "loading images", "images") as bar:
        for record in records:
            image = load_or_skip(record.path, args.on_bad_image, skipped)
            if image is not None:
                images.append(resize_shorter_side(image, shorter_side))
            bar.update()
    if args.skipped:
        write_skipped(args.skipped, skipped)
    log.info("%d images loaded, %d skipped", len(images), len(skipped))
    return images


def run(args: argparse.Namespace) -> None:
    """Train (resuming from --checkpoint when present), then export the teacher to --out."""
    settings = settings_from_args(args)
    if args.checkpoint_every < 1:
        raise ValueError(f"--checkpoint-every must be >= 1, got {args.checkpoint_every}")
    device = resolve_device(args.device)
    set_threads(args.threads)
    if args.views == "paired-demo":
        views = paired_demo_views
    else:
        views = image_views(load_training_images(args, 2 * settings.global_size))
    state = train(
        settings,
        views,
        args.checkpoint,
        checkpoint_every=args.checkpoint_every,
        resume=not args.no_resume,
        metrics_log=args.metrics,
        device=device,
    )
    export_backbone(args.out, state)
    log.info("teacher backbone written to %s", args.out)
