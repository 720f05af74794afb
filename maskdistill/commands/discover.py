"""Stage 1: one object mask per image from a ViT's last-layer attention -> one HDF5 shard.

Usable without a config file, e.g.
``maskdistill discover --images DIR --backbone vit_small_patch16_224.dino --out shard.h5``.
``--shard I --num-shards S`` processes only the images with ``crc32(file_name) % S == I``.
The shard (data/README.md, "Discover shards") is written atomically; skipped bad images are
listed in its attributes and in ``<out>.skipped.tsv``.
"""

from __future__ import annotations

import argparse
import logging

import torch

from maskdistill import runner
from maskdistill.commands.dataset_args import (
    add_dataset_arguments,
    dataset_spec,
    open_dataset_from_args,
)
from maskdistill.images import ON_BAD_IMAGE, write_skipped
from maskdistill.provenance import provenance
from maskdistill.shards import write_shard

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataset_arguments(parser)

    model = parser.add_argument_group("backbones")
    model.add_argument(
        "--backbone",
        default="vit_small_patch16_224.dino",
        help="timm name, checkpoint path, or random:patch=P,width=D,depth=L,heads=H,seed=S",
    )
    model.add_argument("--num-heads", type=int, default=None, help="heads of a checkpoint")
    model.add_argument(
        "--feature-backbone",
        default="vit_small_patch8_224.dino",
        help="backbone of the clustering feature ('same': --backbone)",
    )
    model.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="timm names with random weights (tests and benchmarks only)",
    )

    method = parser.add_argument_group("method (METHOD.md stage 1)")
    method.add_argument("--resize", type=int, default=640, help="shorter side in pixels")
    method.add_argument("--heads", type=int, default=5, help="first heads averaged")
    method.add_argument("--topk", type=float, default=0.4, help="fraction of patches proposed")
    method.add_argument("--mass", type=float, default=0.5, help="attention-mass threshold")
    method.add_argument(
        "--center-keys", action="store_true", help="subtract the mean key (not the reference)"
    )
    method.add_argument("--feature", choices=runner.FEATURES, default="crop")

    run = parser.add_argument_group("execution")
    run.add_argument("--out", required=True, help="the shard to write (.h5)")
    run.add_argument("--shard", type=int, default=0, help="0-based shard index")
    run.add_argument("--num-shards", type=int, default=1)
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    run.add_argument("--device", choices=runner.DEVICES, default="auto")
    run.add_argument(
        "--precision",
        choices=tuple(runner.PRECISIONS),
        default="fp32",
        help="fp16/bf16: autocast the ViTs (faster on GPU; masks may differ from fp32)",
    )
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--on-bad-image", choices=ON_BAD_IMAGE, default="error")
    run.add_argument("--no-progress", dest="progress", action="store_false")


def _settings(args: argparse.Namespace) -> runner.DiscoverSettings:
    return runner.DiscoverSettings(
        resize=args.resize,
        heads=args.heads,
        topk=args.topk,
        mass=args.mass,
        center_keys=args.center_keys,
        feature=args.feature,
    )


def _check(args: argparse.Namespace) -> None:
    """Reject bad execution settings before any work."""
    for name in ("batch_size", "num_shards"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected >= 1")
    if args.workers < 0:
        raise ValueError("--workers: expected >= 0")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads: expected >= 1")
    if not 0 <= args.shard < args.num_shards:
        raise ValueError(f"--shard {args.shard}: expected 0 <= shard < {args.num_shards}")


def run(args: argparse.Namespace) -> None:
    settings = _settings(args)
    _check(args)
    device = runner.resolve_device(args.device)
    runner.autocast(device, args.precision)  # rejects an unknown precision before any work
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    spec = dataset_spec(args)
    records = open_dataset_from_args(args).records()
    mine = runner.select_shard(records, args.shard, args.num_shards)
    log.info(
        "shard %d of %d: %d of %d images, device %s, precision %s",
        args.shard,
        args.num_shards,
        len(mine),
        len(records),
        device,
        args.precision,
    )
    models = runner.load_backbones(
        args.backbone,
        args.feature_backbone,
        pretrained=args.pretrained,
        num_heads=args.num_heads,
        device=device,
    )
    skipped: list[tuple[str, str]] = []
    counts = {"images": 0, "empty": 0}

    def counted(records_out):
        for record in records_out:
            counts["images"] += 1
            counts["empty"] += record["empty"]
            yield record

    stream = runner.discover_records(
        mine,
        models,
        settings,
        device=device,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
        on_bad_image=args.on_bad_image,
        skipped=skipped,
        progress=args.progress,
    )
    attrs = {
        "backbone": args.backbone,
        "feature_backbone": (
            args.backbone if args.feature_backbone == "same" else args.feature_backbone
        ),
        "pretrained": args.pretrained,
        "num_heads": args.num_heads,
        "settings": settings.as_dict(),
        "precision": args.precision,
        "dataset": spec | {"splits": args.splits},
        "shard": args.shard,
        "num_shards": args.num_shards,
        "provenance": provenance(),
        "skipped": skipped,  # filled while the stream is written; stored at the close
    }
    write_shard(args.out, counted(stream), attrs)
    write_skipped(f"{args.out}.skipped.tsv", skipped)
    log.info(
        "wrote %s: %d images, %d empty masks, %d skipped",
        args.out,
        counts["images"],
        counts["empty"],
        len(skipped),
    )
    if counts["empty"]:
        log.warning("%d images got an empty mask (flagged 'empty' in the shard)", counts["empty"])
