"""The training jobs of stage 5 (``segment train``, ``segment probe``; arguments: commands.segment).

Kept apart from the prediction job so that a prediction job's code fingerprint does not hold the
training loop (editing the loop reruns training jobs only).
"""

from __future__ import annotations

import argparse
import hashlib
import logging
from pathlib import Path

from maskdistill import distributed
from maskdistill.coco_files import files_named, index_annotations, read_pseudo_gt
from maskdistill.commands.dataset_args import (
    open_dataset_from_args,
)
from maskdistill.commands.segment import AUGMENTATION, NETWORK, SCHEDULE
from maskdistill.commands.settings_args import settings_from_args
from maskdistill.commands.training_job import finish_training, start_training, weights_saver
from maskdistill.data import Dataset, ImageRecord
from maskdistill.masks import label_png_path, write_label_png
from maskdistill.models.deeplab import DeepLabSettings, build_deeplab, load_deeplab, probe_network
from maskdistill.progress import Progress
from maskdistill.provenance import provenance
from maskdistill.runtime import resolve_device, set_threads
from maskdistill.segment.data import Augmentation, SegmentationDataset, labelled_images
from maskdistill.segment.schedule import EpochSchedule
from maskdistill.segment.train import train_epochs
from maskdistill.training.rng import seeded

log = logging.getLogger(__name__)


def _digest(paths: list[Path]) -> str:
    """A hash of the label files' names and bytes: a new training set starts a new run."""
    digest = hashlib.sha256()
    for path in sorted(paths):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _train(
    args: argparse.Namespace,
    model,
    items: list,
    norm,
    run_settings: dict,
    schedule: EpochSchedule,
    loss: str,
    world: distributed.World,
    device,
) -> None:
    """Train ``model`` on ``items`` (resuming a run with the same settings), write --out."""
    run = start_training(args, run_settings, world, device)
    dataset = SegmentationDataset(items, Augmentation.from_config(vars(args)), norm, schedule.seed)
    trained = train_epochs(model.to(device), dataset, schedule, run, loss=loss)
    if world.main:
        saver = weights_saver(trained.state_dict(), run_settings, {"provenance": provenance()})
        finish_training(args, saver, run.metrics_log)
    distributed.close(world)


def run_train(args: argparse.Namespace) -> None:
    """DeepLab-v3 on the label maps of --labels."""
    device = resolve_device(args.device)
    world = distributed.init(device)
    device = world.device(device)
    set_threads(args.threads)
    pseudo_gt = read_pseudo_gt(args.pseudo_gt, keep=lambda _: False)  # its categories
    _, num_clusters = index_annotations(pseudo_gt, files_named(args.pseudo_gt))
    items, missing = labelled_images(open_dataset_from_args(args).records(), args.labels)
    log.info("%d images with label maps (%d without, left out)", len(items), len(missing))
    if not items:
        raise ValueError(f"no label PNG for the images of {args.images} in {args.labels}")
    schedule = EpochSchedule.from_config(vars(args))
    network = DeepLabSettings.from_config(vars(args))
    categories = pseudo_gt["categories"]
    run_settings = {
        **settings_from_args(args, NETWORK + AUGMENTATION + SCHEDULE),
        "num_outputs": num_clusters + 1,
        "label_names": ["background", *(str(c.get("name", c["id"])) for c in categories)],
        "labels_sha256": _digest([item.labels for item in items]),
    }
    with seeded(schedule.seed):
        model, norm = build_deeplab(num_clusters + 1, network)
    run_settings["backbone"] = model.backbone_description  # the model file rebuilds alone
    _train(args, model, items, norm, run_settings, schedule, "segment", world, device)


def export_ground_truth(dataset: Dataset, records: list[ImageRecord], folder: Path) -> list:
    """Write the semantic ground truth of ``records`` as label PNGs; return the labelled images."""
    with Progress(len(records), "ground truth", "images") as bar:
        for record in records:
            labels = dataset.semantic_labels(record)
            if labels is not None:
                path = label_png_path(folder, record.file_name)
                path.parent.mkdir(parents=True, exist_ok=True)
                write_label_png(path, labels)
            bar.update()
    return labelled_images(records, [folder])[0]


def run_probe(args: argparse.Namespace) -> None:
    """The linear probe: a new last convolution on the frozen network, trained on ground truth."""
    device = resolve_device(args.device)
    world = distributed.init(device)
    device = world.device(device)
    set_threads(args.threads)
    dataset = open_dataset_from_args(args)
    if not dataset.has_ground_truth:
        raise ValueError(f"{args.images}: the linear probe needs ground-truth labels")
    model, norm, payload = load_deeplab(args.model)
    num_classes = 1 + len(dataset.class_names)
    schedule = EpochSchedule.from_config(vars(args))
    with seeded(schedule.seed):
        model = probe_network(model, num_classes)
    folder = Path(args.resume_dir) / "ground_truth"
    items = export_ground_truth(dataset, dataset.records(), folder) if world.main else []
    distributed.barrier(world)
    if not world.main:
        items = labelled_images(dataset.records(), [folder])[0]
    run_settings = {
        **payload["settings"],
        **settings_from_args(args, AUGMENTATION + SCHEDULE),
        "probe_of": hashlib.sha256(Path(args.model).read_bytes()).hexdigest(),
        "num_outputs": num_classes,
        "supervised": True,  # predicts ground-truth classes
        "label_names": ["background", *dataset.class_names],
        "probe_splits": args.splits,
    }
    _train(args, model, items, norm, run_settings, schedule, "probe", world, device)
