"""Command-line arguments naming a dataset (the config's ``dataset`` section), for any command."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from maskdistill.data import KINDS, Dataset, ImageRecord, open_dataset

if TYPE_CHECKING:
    from maskdistill.loader import PredictionRun


def add_dataset_arguments(parser: argparse.ArgumentParser, required: bool = True) -> None:
    """``--images --dataset-kind --splits --imagesets --annotations --image-list``.

    ``required=False`` for commands that can run without a dataset (``--images`` optional).
    """
    data = parser.add_argument_group("dataset")
    data.add_argument("--images", required=required, help="image folder (dataset root)")
    data.add_argument("--dataset-kind", choices=KINDS, default="folder")
    data.add_argument("--splits", nargs="+", default=None, help="voc: split names, e.g. val")
    data.add_argument("--imagesets", default="Segmentation", help="voc: ImageSets/<imagesets>")
    data.add_argument("--annotations", default=None, help="coco: instances JSON")
    data.add_argument("--image-list", default=None, help="coco: file with one file name a line")


def dataset_spec(args: argparse.Namespace) -> dict[str, Any]:
    """The ``dataset`` config section that the arguments describe."""
    return {
        "kind": args.dataset_kind,
        "root": args.images,
        "imagesets": args.imagesets,
        "annotations": args.annotations,
        "image_list": args.image_list,
    }


def open_dataset_from_args(args: argparse.Namespace, splits: list[str] | None = None) -> Dataset:
    """The dataset (restricted to ``splits``, default ``--splits``) that the arguments describe."""
    return open_dataset(dataset_spec(args), args.splits if splits is None else splits)


def shard_records(
    args: argparse.Namespace, skipped: list[tuple[str, str]], dataset: Dataset | None = None
) -> list[ImageRecord]:
    """The images of shard ``--shard`` of ``--num-shards``; images whose names are unusable
    (:mod:`maskdistill.names`) stop the job under ``--on-bad-image error`` and are added to
    ``skipped`` (those of this shard) under ``skip``."""
    from maskdistill.sharding import in_shard, select_shard

    dataset = open_dataset_from_args(args) if dataset is None else dataset
    records = dataset.usable_records(
        args.on_bad_image, skipped, keep=in_shard(args.shard, args.num_shards)
    )
    return select_shard(records, args.shard, args.num_shards)


def prediction_run(args: argparse.Namespace, device: Any) -> PredictionRun:
    """How a sharded prediction command runs (``--batch-size --workers --precision
    --on-bad-image --no-progress`` on ``device``), with an empty list of skipped images that
    :func:`shard_records` and the prediction loop fill."""
    from maskdistill.loader import PredictionRun

    return PredictionRun(
        device=device,
        batch_size=args.batch_size,
        workers=args.workers,
        precision=args.precision,
        on_bad_image=args.on_bad_image,
        progress=args.progress,
    )
