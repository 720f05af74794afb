"""Stage 1: one object mask per image from a ViT's last-layer attention -> one HDF5 shard.

Usable without a config file, e.g.
``maskdistill discover --images DIR --backbone vit_small_patch16_224.dino --out shard.h5``.
``--shard I --num-shards S`` processes only the images with ``crc32(file_name) % S == I``.
The shard (data/README.md, "Discover shards") is written atomically; skipped bad images are
listed in its attributes and in ``<out>.skipped.tsv``. Defaults: the config schema's
``discover`` section (the paper's settings).
"""

from __future__ import annotations

import argparse
import logging

from maskdistill.commands.dataset_args import (
    add_dataset_arguments,
    dataset_spec,
    prediction_run,
    shard_records,
)
from maskdistill.config import defaults
from maskdistill.discover.batch import DiscoverSettings, discover_records
from maskdistill.discover.feature import FEATURES
from maskdistill.discover.shard_file import write_shard
from maskdistill.images import ON_BAD_IMAGE, write_skipped
from maskdistill.models import vit
from maskdistill.models.specs import looks_like_path, weight_source
from maskdistill.provenance import provenance
from maskdistill.runtime import DEVICES, PRECISIONS, check_precision, resolve_device, set_threads

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    default = defaults("discover")
    add_dataset_arguments(parser)

    model = parser.add_argument_group("backbones")
    model.add_argument(
        "--backbone",
        default=default["backbone"],
        help="timm name, checkpoint path, or random:patch=P,width=D,depth=L,heads=H,seed=S",
    )
    model.add_argument("--num-heads", type=int, default=None, help="heads of a checkpoint")
    model.add_argument(
        "--feature-backbone",
        default=None,
        help="backbone of the clustering feature ('same': --backbone; default: "
        f"{default['feature_backbone']}, or 'same' when --backbone is a file)",
    )
    model.add_argument(
        "--no-pretrained",
        dest="pretrained",
        action="store_false",
        help="timm names with random weights (tests and benchmarks only)",
    )

    method = parser.add_argument_group("method (docs/method.md, stage 1)")
    method.add_argument("--resize", type=int, default=default["resize"], help="shorter side, px")
    method.add_argument("--heads", type=int, default=default["heads"], help="first heads averaged")
    method.add_argument("--topk", type=float, default=default["topk"], help="share of patches")
    method.add_argument("--mass", type=float, default=default["mass"], help="attention mass kept")
    method.add_argument(
        "--center-keys",
        action=argparse.BooleanOptionalAction,
        default=default["center_keys"],
        help="subtract the mean key (not the reference)",
    )
    method.add_argument("--feature", choices=FEATURES, default=default["feature"])
    method.add_argument(
        "--feature-max-side",
        type=int,
        default=default["feature_max_side"],
        help="scale larger images down to this longer side for the feature (0: never)",
    )

    run = parser.add_argument_group("execution")
    run.add_argument("--out", required=True, help="the shard to write (.h5)")
    run.add_argument("--shard", type=int, default=0, help="0-based shard index")
    run.add_argument("--num-shards", type=int, default=1)
    run.add_argument("--batch-size", type=int, default=8)
    run.add_argument("--workers", type=int, default=2, help="image-decoding processes")
    run.add_argument("--device", choices=DEVICES, default=default["device"])
    run.add_argument(
        "--precision",
        choices=tuple(PRECISIONS),
        default=default["precision"],
        help="fp16/bf16: autocast the ViTs (faster on GPU; masks may differ from fp32)",
    )
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--on-bad-image", choices=ON_BAD_IMAGE, default="error")
    run.add_argument("--no-progress", dest="progress", action="store_false")


def _check(args: argparse.Namespace) -> None:
    """Reject bad execution settings before any work."""
    for name in ("batch_size", "num_shards"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')}: expected >= 1")
    if args.workers < 0:
        raise ValueError("--workers: expected >= 0")
    if not 0 <= args.shard < args.num_shards:
        raise ValueError(f"--shard {args.shard}: expected 0 <= shard < {args.num_shards}")
    check_precision(args.precision)


def feature_backbone(args: argparse.Namespace) -> str:
    """The clustering feature's backbone: as given, else 'same' for a file, else the default."""
    if args.feature_backbone is not None:
        return args.feature_backbone
    return "same" if looks_like_path(args.backbone) else defaults("discover")["feature_backbone"]


def run(args: argparse.Namespace) -> None:
    settings = DiscoverSettings.from_config(vars(args))
    _check(args)
    device = resolve_device(args.device)
    set_threads(args.threads)
    spec = dataset_spec(args)
    run = prediction_run(args, device)
    mine = shard_records(args, run.skipped)
    log.info(
        "shard %d of %d: %d images, device %s, precision %s",
        args.shard,
        args.num_shards,
        len(mine),
        device,
        args.precision,
    )
    feature_spec = feature_backbone(args)
    models = vit.load_backbones(
        args.backbone,
        feature_spec,
        pretrained=args.pretrained,
        num_heads=args.num_heads,
        device=device,
    )
    counts = {"images": 0, "empty": 0}

    def counted(records_out):
        for record in records_out:
            counts["images"] += 1
            counts["empty"] += record["empty"]
            yield record

    stream = discover_records(mine, models, settings, run)
    attrs = {
        "backbone": args.backbone,
        "feature_backbone": args.backbone if feature_spec == "same" else feature_spec,
        # where the weights came from: hub, file or random, of each backbone
        "weights": weight_source(args.backbone, args.pretrained),
        "feature_weights": weight_source(
            args.backbone if feature_spec == "same" else feature_spec, args.pretrained
        ),
        "num_heads": args.num_heads,
        "settings": settings.as_dict(),
        "precision": args.precision,
        "dataset": spec | {"splits": args.splits},
        "shard": args.shard,
        "num_shards": args.num_shards,
        "provenance": provenance(),
        "skipped": run.skipped,  # filled while the stream is written; stored at the close
    }
    write_shard(args.out, counted(stream), attrs)
    write_skipped(f"{args.out}.skipped.tsv", run.skipped)
    log.info(
        "wrote %s: %d images, %d empty masks, %d skipped",
        args.out,
        counts["images"],
        counts["empty"],
        len(run.skipped),
    )
    if counts["empty"]:
        log.warning("%d images got an empty mask (flagged 'empty' in the shard)", counts["empty"])
