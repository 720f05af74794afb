"""Stage 5: train DeepLab-v3 on label maps, predict label maps (optionally with a dense CRF),
and train the linear probe.

Subcommands:
  ``train``: DeepLab-v3 on the label PNGs of --labels (stage 4's selected maps, or a CRF
  round's refined predictions) for the images of the dataset splits that have one; resumable
  from --resume-dir after a kill; data-parallel under torchrun. The final model is the result.
  ``predict``: label PNGs at the original image size for one shard of the images
  (``crc32(file_name) % num_shards``), with --crf refined by a dense CRF (the ``crf`` extra).
  ``probe``: the linear probe: the trained network frozen, a new last 1 x 1 convolution trained
  on the ground truth of the dataset splits; it predicts ground-truth classes.
Defaults: the config schema's ``segment`` and ``probe`` sections (the reference's settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
from pathlib import Path

import numpy as np

from maskdistill.commands.dataset_args import (
    add_dataset_arguments,
    prediction_run,
    shard_records,
)
from maskdistill.commands.settings_args import add_settings_arguments, add_training_arguments
from maskdistill.config import defaults
from maskdistill.images import ON_BAD_IMAGE, write_skipped
from maskdistill.io import atomic_path, write_json
from maskdistill.masks import label_png_path, voc_palette, write_label_png
from maskdistill.models.deeplab import DeepLabSettings, load_deeplab
from maskdistill.names import check_collisions
from maskdistill.runtime import DEVICES, PRECISIONS, resolve_device, set_threads
from maskdistill.segment.crf import CRFSettings
from maskdistill.segment.data import Augmentation
from maskdistill.segment.predict import predict_label_maps
from maskdistill.segment.schedule import EpochSchedule

log = logging.getLogger(__name__)

NETWORK = tuple(f.name for f in dataclasses.fields(DeepLabSettings))
AUGMENTATION = tuple(f.name for f in dataclasses.fields(Augmentation))
SCHEDULE = tuple(f.name for f in dataclasses.fields(EpochSchedule))
CRF = tuple(f"crf_{f.name}" for f in dataclasses.fields(CRFSettings))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="what", required=True, metavar="WHAT")
    train = sub.add_parser("train", help="train DeepLab-v3 on label maps")
    probe = sub.add_parser("probe", help="linear probe on the ground truth")
    predict = sub.add_parser("predict", help="label maps of one shard of images")
    for command in (train, probe, predict):
        add_dataset_arguments(command)
        command.add_argument("--device", choices=DEVICES, default=defaults("segment")["device"])
        command.add_argument("--threads", type=int, default=None, help="torch CPU threads")
        command.add_argument("--workers", type=int, default=2, help="image-loading processes")
        command.add_argument("--no-progress", dest="progress", action="store_false")
    for command in (train, probe):
        add_training_arguments(command, "segment", "step")
        add_settings_arguments(command, "segment", AUGMENTATION, "augmentation")
    train.add_argument("--labels", nargs="+", required=True, help="folders of label PNGs")
    train.add_argument(
        "--pseudo-gt", nargs="+", required=True, help="stage-2 COCO JSONs: the K clusters"
    )
    add_settings_arguments(train, "segment", NETWORK, "network (docs/method.md, stage 5)")
    add_settings_arguments(train, "segment", SCHEDULE, "training schedule")
    train.set_defaults(_run="maskdistill.commands.segment_train:run_train")
    probe.add_argument("--model", required=True, help="the stage-5 network (segment train)")
    add_settings_arguments(probe, "probe", SCHEDULE, "probe schedule")
    probe.set_defaults(_run="maskdistill.commands.segment_train:run_probe")
    predict.add_argument("--model", required=True, help="a network of segment train or probe")
    predict.add_argument("--shard", type=int, default=0)
    predict.add_argument("--num-shards", type=int, default=1)
    predict.add_argument("--batch-size", type=int, default=8)
    predict.add_argument("--precision", choices=tuple(PRECISIONS), default="fp32")
    predict.add_argument("--crf", action="store_true", help="refine with a dense CRF")
    add_settings_arguments(predict, "segment", CRF, "dense CRF (with --crf)")
    predict.add_argument("--on-bad-image", choices=ON_BAD_IMAGE, default="error")
    predict.add_argument("--out", required=True, help="folder of label PNGs to create")
    predict.add_argument(
        "--overwrite",
        action="store_true",
        help="replace an existing --out folder (without it, an existing one stops the command "
        "before any work)",
    )
    predict.set_defaults(_run=run_predict)


def run_predict(args: argparse.Namespace) -> None:
    """Label PNGs of one shard of the dataset's images, and their legend."""
    out = Path(args.out)
    if out.exists() and not args.overwrite:
        raise ValueError(
            f"--out {out} exists: pass --overwrite to replace it, or choose another folder"
        )
    device = resolve_device(args.device)
    set_threads(args.threads)
    model, norm, payload = load_deeplab(args.model)
    settings = payload["settings"]
    model = model.to(device).eval()
    run = prediction_run(args, device)
    records = shard_records(args, run.skipped)
    check_collisions([r.file_name for r in records], ".png", args.images)
    crf = CRFSettings.from_config(vars(args)) if args.crf else None
    log.info("shard %d of %d: %d images, CRF %s", args.shard, args.num_shards, len(records), crf)
    with atomic_path(args.out) as tmp:
        tmp.mkdir(parents=True)
        maps = predict_label_maps(model, records, run, size=settings["size"], norm=norm, crf=crf)
        for record, labels in maps:
            path = label_png_path(tmp, record.file_name)
            path.parent.mkdir(parents=True, exist_ok=True)
            write_label_png(path, labels)
    write_skipped(f"{str(args.out).rstrip('/')}.skipped.tsv", run.skipped)
    legend = write_legend(out, label_names(settings))
    log.info("wrote %d label maps to %s, their legend to %s", len(records) - len(run.skipped),
             args.out, legend)  # fmt: skip


def label_names(settings: dict) -> list[str]:
    """What each label value of a network's maps means: background, then its clusters (or, for a
    linear probe, the ground-truth classes it was trained on)."""
    names = settings.get("label_names")
    if names:
        return list(names)
    return ["background"] + [f"cluster_{k:02d}" for k in range(settings["num_outputs"] - 1)]


def write_legend(folder: Path, names: list[str]) -> Path:
    """``<folder>.legend.json`` (label -> name and VOC colour) and ``<folder>.legend.png`` (a
    strip of the colours, one cell per label), next to the folder of label maps."""
    palette = voc_palette()
    entries = [
        {"label": k, "name": name, "colour": palette[3 * k : 3 * k + 3]}
        for k, name in enumerate(names)
    ]
    base = str(folder).rstrip("/")
    write_json(f"{base}.legend.json", {"labels": entries})
    strip = np.repeat(np.repeat(np.arange(len(names))[None], 24, 0), 24, 1)
    write_label_png(f"{base}.legend.png", strip)
    return Path(f"{base}.legend.json")
