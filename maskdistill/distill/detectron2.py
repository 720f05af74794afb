"""Stage 3 with detectron2 (``distill.backend: detectron2``): the authors' library, any config.

detectron2 is optional (no PyPI wheel; ``pip install
'git+https://github.com/facebookresearch/detectron2.git'``). A model-zoo config (default
``COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml``, the authors' architecture) or the path
of the user's own YAML is read, and the pipeline's ``distill`` settings are applied on top
(:func:`build_config`): classes, solver, image sizes, seed, output folder, device, weights. The
stage-2 COCO JSON is registered as a detectron2 dataset, detectron2's ``DefaultTrainer``
trains (its checkpointer resumes after a kill from the last checkpoint in the resume folder),
and predictions become the same COCO results entries as the torchvision backend's
(:func:`maskdistill.distill.predict.detections`), so nothing downstream knows which backend ran.

Model-zoo configs are files inside the installed package (``detectron2/model_zoo/configs``);
their path is taken from ``detectron2.__file__``, because ``model_zoo.get_config_file`` imports
``pkg_resources``, which current setuptools no longer ships.
"""

from __future__ import annotations

import importlib.util
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from maskdistill.data.base import ImageRecord
from maskdistill.distill.data import TrainingImage
from maskdistill.distill.predict import MASK_THRESHOLD, detections
from maskdistill.io import atomic_path
from maskdistill.loader import PredictionRun, image_batches
from maskdistill.names import unsafe_reason
from maskdistill.preflight import check_pickle
from maskdistill.runtime import loader_workers

log = logging.getLogger(__name__)

INSTALL = "pip install 'git+https://github.com/facebookresearch/detectron2.git'"
DATASET_NAME = "maskdistill_pseudo_gt"


def available() -> bool:
    """Whether detectron2 and its compiled extension can be imported."""
    if importlib.util.find_spec("detectron2") is None:
        return False
    try:
        import detectron2._C  # noqa: F401
    except ImportError:
        return False
    return True


def config_file(name: str) -> Path:
    """A detectron2 YAML: a model-zoo name (``COCO-InstanceSegmentation/...yaml``) or a path."""
    path = Path(name)
    if path.is_file():
        return path
    import detectron2

    zoo = Path(detectron2.__file__).parent / "model_zoo" / "configs" / name
    if not zoo.is_file():
        raise ValueError(
            f"distill.detectron2_config: {name!r} is neither a file nor a config of detectron2's "
            f"model zoo ({zoo.parent.parent})"
        )
    return zoo


def detectron2_key(name: str) -> str:
    """A torchvision ResNet key -> detectron2's (as MoCo's convert-pretrain-to-detectron2.py):
    ``conv1`` / ``bn1`` -> ``stem.conv1`` / ``stem.conv1.norm``, ``layerN`` -> ``res(N+1)``,
    ``bnK`` -> ``convK.norm``, ``downsample.0`` / ``.1`` -> ``shortcut`` / ``shortcut.norm``."""
    if "layer" not in name:
        name = "stem." + name
    for t in (1, 2, 3, 4):
        name = name.replace(f"layer{t}", f"res{t + 1}")
    for t in (1, 2, 3):
        name = name.replace(f"bn{t}", f"conv{t}.norm")
    return name.replace("downsample.0", "shortcut").replace("downsample.1", "shortcut.norm")


def convert_weights(init: str, out: str | Path) -> Path:
    """Write ``init`` (any ResNet-50 file maskdistill reads: MoCo v1/v2/v3, DINO, torchvision)
    in detectron2's format: ``{"model": detectron2 keys, "__author__", "matching_heuristics"}``,
    tensors only (detectron2 reads it with ``torch.load(weights_only=True)``)."""
    from maskdistill.models.resnet import resnet_weights

    weights = resnet_weights(init, "resnet50", "distill.init")
    model = {
        detectron2_key(k): v
        for k, v in weights.state_dict.items()
        if not k.startswith("fc.") and not k.endswith("num_batches_tracked")
    }
    payload = {"model": model, "__author__": "maskdistill", "matching_heuristics": True}
    with atomic_path(out) as tmp:
        torch.save(payload, tmp)
    log.info("converted %s (%s) to detectron2's format: %s", init, weights.source, out)
    return Path(out)


def _is_detectron2_checkpoint(path: str) -> bool:
    """A detectron2-format file (``__author__`` beside ``model``), or a pickle (model zoo)."""
    if Path(path).suffix == ".pkl":
        return True
    payload = torch.load(path, map_location="cpu", weights_only=True)
    return isinstance(payload, dict) and "__author__" in payload and "model" in payload


def _weights(init: str, trust_pickle: bool, output_dir: str | Path) -> tuple[str, bool]:
    """MODEL.WEIGHTS for ``distill.init`` and whether the network learns from scratch.

    A detectron2 checkpoint is used as it is; any other ResNet-50 file maskdistill reads
    (MoCo, DINO, torchvision layouts) is converted into ``output_dir`` first.
    """
    if init == "none":
        return "", True
    if init.startswith(("torchvision:", "timm:")):
        raise ValueError(
            f"distill.init: {init!r} is for the torchvision backend; the detectron2 backend "
            "takes 'none', a ResNet-50 file (MoCo, DINO, torchvision; converted) or a detectron2 "
            "checkpoint (.pth, or .pkl with distill.trust_pickle)"
        )
    check_pickle(init, trust_pickle)
    if _is_detectron2_checkpoint(init):
        return init, False
    return str(convert_weights(init, Path(output_dir) / "init-detectron2.pth")), False


def read_config_file(cfg, name: str) -> None:
    """Merge a detectron2 YAML (and its ``_BASE_`` files) into ``cfg`` with safe YAML only: a
    tag that would construct Python objects is a ValueError naming the file."""
    import yaml

    path = config_file(name)
    try:
        cfg.merge_from_file(str(path), allow_unsafe=False)
    except yaml.YAMLError as error:
        raise ValueError(
            f"distill.detectron2_config: {path} (or a _BASE_ file it names) is not plain YAML: "
            f"{error}; tags such as !!python/... can run code and are refused"
        ) from error


def check_last_checkpoint(output_dir: str | Path) -> None:
    """detectron2 resumes from the file its ``last_checkpoint`` names: it must be a ``.pth`` file
    in the same folder (a planted ``../x.pkl`` would be unpickled); ValueError otherwise."""
    marker = Path(output_dir) / "last_checkpoint"
    if not marker.is_file():
        return
    name = marker.read_text().strip()
    if "/" in name or "\\" in name or unsafe_reason(name) or Path(name).suffix != ".pth":
        raise ValueError(
            f"{marker}: names {name!r}, not a .pth file of its own folder; delete {marker} "
            "(or the whole folder) to start over"
        )


def build_config(
    settings: Mapping[str, Any],
    num_classes: int,
    output_dir: str | Path,
    device: str,
    workers: int = 2,
    checkpoint_every: int = 1000,
):
    """detectron2's CfgNode: ``distill.detectron2_config`` with the pipeline's settings on top.

    Args:
        settings: the config's ``distill`` section.
        num_classes: K, the pseudo classes (category ids 1..K become classes 0..K-1).
        output_dir: detectron2's OUTPUT_DIR (checkpoints, its metrics.json).
        device: "cpu" or "cuda".
    """
    from detectron2.config import get_cfg

    if settings["arch"] != "resnet50":
        raise ValueError(
            f"distill.arch: {settings['arch']!r} is a torchvision-backend architecture; the "
            "detectron2 backend builds distill.detectron2_config (set distill.arch: resnet50)"
        )
    cfg = get_cfg()
    read_config_file(cfg, settings["detectron2_config"])
    weights, scratch = _weights(settings["init"], settings["trust_pickle"], output_dir)
    cfg.MODEL.WEIGHTS = weights
    if scratch:  # no ImageNet statistics to freeze: GroupNorm everywhere, as the torchvision one
        cfg.MODEL.RESNETS.NORM = cfg.MODEL.FPN.NORM = "GN"
        cfg.MODEL.ROI_BOX_HEAD.NORM = cfg.MODEL.ROI_MASK_HEAD.NORM = "GN"
    cfg.MODEL.BACKBONE.FREEZE_AT = 5 - settings["trainable_layers"]
    cfg.MODEL.DEVICE = device
    cfg.MODEL.FPN.OUT_CHANNELS = settings["fpn_channels"]
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = settings["box_head_dim"]
    cfg.MODEL.ROI_MASK_HEAD.NUM_CONV = settings["mask_head_convs"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = num_classes
    cfg.MODEL.RPN.PRE_NMS_TOPK_TRAIN = 2 * settings["proposals_train"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = settings["proposals_train"]
    cfg.MODEL.RPN.PRE_NMS_TOPK_TEST = cfg.MODEL.RPN.POST_NMS_TOPK_TEST = settings["proposals_test"]
    cfg.MODEL.RPN.BATCH_SIZE_PER_IMAGE = settings["rpn_batch_size"]
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = settings["roi_batch_size"]
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = settings["score_floor"]
    cfg.TEST.DETECTIONS_PER_IMAGE = settings["detections_per_image"]
    cfg.INPUT.MIN_SIZE_TRAIN = tuple(settings["train_sizes"])
    cfg.INPUT.MIN_SIZE_TRAIN_SAMPLING = "choice"
    cfg.INPUT.MAX_SIZE_TRAIN = cfg.INPUT.MAX_SIZE_TEST = settings["max_size"]
    cfg.INPUT.MIN_SIZE_TEST = settings["test_size"]
    cfg.INPUT.RANDOM_FLIP = "horizontal" if settings["flip"] else "none"
    cfg.INPUT.MASK_FORMAT = "bitmask"  # the pseudo masks are RLE
    iterations = settings["iterations"]
    cfg.SOLVER.MAX_ITER = iterations
    cfg.SOLVER.IMS_PER_BATCH = settings["batch_size"]
    cfg.SOLVER.BASE_LR = settings["lr"]
    cfg.SOLVER.MOMENTUM = settings["momentum"]
    cfg.SOLVER.WEIGHT_DECAY = settings["weight_decay"]
    cfg.SOLVER.WARMUP_ITERS = settings["warmup_iterations"]
    cfg.SOLVER.WARMUP_FACTOR = settings["warmup_factor"]
    # detectron2 wants every decay step inside the schedule: a step at the end is no decay
    steps = {round(f * iterations) for f in settings["lr_steps"]}
    cfg.SOLVER.STEPS = tuple(sorted(s for s in steps if 0 < s < iterations))
    cfg.SOLVER.GAMMA = settings["gamma"]
    cfg.SOLVER.CLIP_GRADIENTS.ENABLED = settings["clip_grad"] > 0
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_TYPE = "norm"
    cfg.SOLVER.CLIP_GRADIENTS.CLIP_VALUE = float(settings["clip_grad"] or 1.0)
    cfg.SOLVER.AMP.ENABLED = bool(settings["amp"]) and device == "cuda"
    cfg.SOLVER.CHECKPOINT_PERIOD = checkpoint_every
    cfg.SEED = settings["seed"]
    cfg.DATASETS.TRAIN, cfg.DATASETS.TEST = (DATASET_NAME,), ()
    cfg.DATALOADER.NUM_WORKERS = loader_workers(workers)
    cfg.TEST.EVAL_PERIOD = 0
    cfg.OUTPUT_DIR = str(output_dir)
    return cfg


def dataset_dicts(images: Sequence[TrainingImage]) -> list[dict[str, Any]]:
    """detectron2's standard dataset dicts of the training images (classes 0..K-1, RLE masks)."""
    from detectron2.structures import BoxMode

    from maskdistill.masks import rle_area_and_box

    records = []
    for index, image in enumerate(images):
        annotations = []
        for rle, label in zip(image.masks, image.labels, strict=True):
            _, box = rle_area_and_box(rle)
            annotations.append(
                {
                    "bbox": box,
                    "bbox_mode": BoxMode.XYWH_ABS,
                    "segmentation": rle,
                    "category_id": label - 1,
                    "iscrowd": 0,
                }  # fmt: skip
            )
        records.append(
            {
                "file_name": str(image.path),
                "height": image.height,
                "width": image.width,
                "image_id": index,
                "annotations": annotations,
            }  # fmt: skip
        )
    return records


def register(images: Sequence[TrainingImage], num_classes: int) -> None:
    """Register the training images as detectron2's dataset ``DATASET_NAME`` (replacing it)."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    if DATASET_NAME in DatasetCatalog.list():
        DatasetCatalog.remove(DATASET_NAME)
        MetadataCatalog.remove(DATASET_NAME)
    DatasetCatalog.register(DATASET_NAME, lambda: dataset_dicts(images))
    MetadataCatalog.get(DATASET_NAME).set(
        thing_classes=[f"cluster_{k:02d}" for k in range(num_classes)]
    )


def train_on_gpus(cfg, images: Sequence[TrainingImage], resume: bool, gpus: int) -> None:
    """Train on ``gpus`` GPUs of this machine with detectron2's own launcher (one process per
    GPU, data-parallel); the final weights are OUTPUT_DIR/model_final.pth."""
    from detectron2.engine import launch

    launch(_train_process, gpus, dist_url="auto", args=(cfg.dump(), list(images), resume))


def _train_process(cfg_yaml: str, images: list[TrainingImage], resume: bool) -> None:
    from detectron2.config import CfgNode

    train(CfgNode.load_cfg(cfg_yaml), images, resume)


def final_weights(cfg) -> dict[str, torch.Tensor]:
    """The state dict of OUTPUT_DIR/model_final.pth (written by detectron2's checkpointer)."""
    payload = torch.load(Path(cfg.OUTPUT_DIR) / "model_final.pth", map_location="cpu",
                         weights_only=True)  # fmt: skip
    return payload["model"]


def train(cfg, images: Sequence[TrainingImage], resume: bool = True) -> torch.nn.Module:
    """Train with detectron2's DefaultTrainer; resume from OUTPUT_DIR's last checkpoint."""
    from detectron2.engine import DefaultTrainer
    from detectron2.utils.logger import setup_logger

    setup_logger(name="detectron2")  # its progress lines go to the job's log
    register(images, cfg.MODEL.ROI_HEADS.NUM_CLASSES)
    Path(cfg.OUTPUT_DIR).mkdir(parents=True, exist_ok=True)
    check_last_checkpoint(cfg.OUTPUT_DIR)
    trainer = DefaultTrainer(cfg)
    trainer.resume_or_load(resume=resume)
    if trainer.start_iter > 0:
        log.info("resumed from %s at iteration %d", cfg.OUTPUT_DIR, trainer.start_iter)
    if trainer.start_iter < cfg.SOLVER.MAX_ITER:
        trainer.train()
    model = trainer.model
    return model.module if hasattr(model, "module") else model


def metrics_records(path: str | Path) -> Iterator[dict[str, Any]]:
    """detectron2's metrics.json lines as maskdistill metrics-log records (``step``, ``loss``,
    ``lr`` and every ``loss_*``), the last line of each iteration."""
    by_step: dict[int, dict[str, Any]] = {}
    for line in Path(path).read_text().splitlines():
        values = json.loads(line)
        if "iteration" not in values or "total_loss" not in values:
            continue
        record = {"step": int(values["iteration"]) + 1, "loss": values["total_loss"]}
        record["lr"] = values.get("lr")
        record |= {k: v for k, v in values.items() if k.startswith("loss_")}
        by_step[record["step"]] = record
    yield from (by_step[step] for step in sorted(by_step))


def build_predictor(cfg, state_dict: Mapping[str, torch.Tensor], device: torch.device):
    """The trained network in evaluation mode on ``device``."""
    from detectron2.modeling import build_model

    cfg = cfg.clone()
    cfg.MODEL.DEVICE = device.type
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg)
    model.load_state_dict(state_dict)
    return model.eval()


@dataclass(frozen=True)
class PrepareInput:
    """``prepare`` of the image loader: detectron2's test input (shorter side resized, BGR)."""

    test_size: int
    max_size: int
    rgb: bool = False  # the config's INPUT.FORMAT: BGR (detectron2's default) or RGB

    def __call__(self, image: np.ndarray, record: ImageRecord) -> dict[str, Any]:
        from detectron2.data import transforms as T

        resize = T.ResizeShortestEdge(self.test_size, self.max_size)
        resized = resize.get_transform(image).apply_image(image)
        channels = resized if self.rgb else resized[:, :, ::-1]
        tensor = torch.as_tensor(np.ascontiguousarray(channels.transpose(2, 0, 1)))
        return {"image": tensor, "height": image.shape[0], "width": image.shape[1]}


def predict_images(
    model: torch.nn.Module,
    cfg,
    records: Sequence[ImageRecord],
    image_ids: Mapping[str, int],
    run: PredictionRun,
) -> Iterator[list[dict[str, Any]]]:
    """Yield each readable image's predictions as COCO results entries (the torchvision
    backend's format), batched by image size."""
    batches = image_batches(
        records,
        prepare=PrepareInput(
            cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST, cfg.INPUT.FORMAT == "RGB"
        ),
        predict_key=tuple,
        actual_key=lambda value: (value["height"], value["width"]),
        run=run,
        desc="distill predict (detectron2)",
    )
    from detectron2.structures import ROIMasks

    with torch.inference_mode():
        for items in batches:
            raw = model.inference([item.value for item in items], do_postprocess=False)
            for item, instances in zip(items, raw, strict=True):
                name = item.record.file_name
                height, width = item.value["height"], item.value["width"]
                instances = _rescaled(instances.to("cpu"), height, width)
                boxes = instances.pred_boxes
                output = {
                    "boxes": boxes.tensor,
                    "labels": instances.pred_classes + 1,
                    "scores": instances.scores,
                }
                masks = (
                    ROIMasks(instances.box_masks[i : i + 1, 0])
                    .to_bitmasks(boxes[i : i + 1], height, width, MASK_THRESHOLD)
                    .tensor[0]
                    .numpy()
                    for i in range(len(instances))
                )
                yield detections(output, masks, image_ids[name], name)


def _rescaled(instances, height: int, width: int):
    """detectron2's ``detector_postprocess`` (boxes scaled to the image, clipped, empty ones
    dropped) with the masks kept per box as ``box_masks``, to be pasted one at a time."""
    from detectron2.modeling.postprocessing import detector_postprocess

    instances.box_masks = instances.pred_masks
    instances.remove("pred_masks")
    return detector_postprocess(instances, height, width)
