"""Training and prediction speed of stages 3 and 5, and the dense CRF, on one device.

    python benchmarks/stage_speed.py --threads 2   # CPU: the table of benchmarks/README.md
    python benchmarks/gpu_check.py                  # CUDA with AMP (the same measurements)

Each measurement builds the network with the settings of a config (the demo's config.yaml or
the VOC12 preset), feeds it random images of the given size with one or two random objects
each, and times a few optimiser steps (after one warm-up step) or batches of predictions. The
numbers are throughput only (the images carry no signal).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from maskdistill.config import validate_config  # noqa: E402
from maskdistill.models.deeplab import DeepLabSettings, build_deeplab  # noqa: E402
from maskdistill.models.maskrcnn import (  # noqa: E402
    MaskRCNNSettings,
    build_maskrcnn,
    for_prediction,
)
from maskdistill.provenance import machine_description  # noqa: E402
from maskdistill.runtime import autocast, training_precision  # noqa: E402
from maskdistill.segment.crf import CRFSettings, crf_available, dense_crf  # noqa: E402
from maskdistill.segment.loss import ohem_cross_entropy  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def config(name: str) -> dict:
    """The validated config of ``config.yaml`` (demo) or ``configs/<name>.yaml``."""
    path = REPO / ("config.yaml" if name == "demo" else f"configs/{name}.yaml")
    values = validate_config(yaml.safe_load(path.read_text()))
    for section in ("distill", "segment"):  # no weight file is needed to time a network
        if values[section]["arch"] != "vit":
            values[section]["init"] = "none"
    return values


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _detection_batch(batch: int, height: int, width: int, device: torch.device):
    images, targets = [], []
    for i in range(batch):
        images.append(torch.rand(3, height, width, device=device))
        masks = torch.zeros(2, height, width, dtype=torch.uint8, device=device)
        boxes = []
        for j, (top, left) in enumerate(((height // 8, width // 8), (height // 2, width // 2))):
            bottom, right = top + height // 3, left + width // 3
            masks[j, top:bottom, left:right] = 1
            boxes.append([left, top, right, bottom])
        targets.append(
            {
                "boxes": torch.tensor(boxes, dtype=torch.float32, device=device),
                "labels": torch.tensor([1 + i % 3, 2], device=device),
                "masks": masks,
            }
        )
    return images, targets


def time_distill(values: dict, size: tuple[int, int], batch: int, steps: int, device) -> dict:
    """Mask R-CNN training steps/s and images/s, and prediction images/s."""
    settings = MaskRCNNSettings.from_config(values["distill"])
    model, _ = build_maskrcnn(values["cluster"]["k"], settings)
    model.to(device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    precision = training_precision(device, values["distill"]["amp"])
    scaler = torch.amp.GradScaler(device.type, enabled=precision != "fp32")
    images, targets = _detection_batch(batch, *size, device)
    for step in range(steps + 1):
        if step == 1:
            _sync(device)
            started = time.perf_counter()
        with autocast(device, precision):
            loss = sum(model(images, targets).values())
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    _sync(device)
    step_s = (time.perf_counter() - started) / steps
    model = for_prediction(model, settings)
    with torch.inference_mode(), autocast(device, precision):
        model(images)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            model(images)
        _sync(device)
    predict_s = (time.perf_counter() - started) / steps
    return {
        "train steps/s": 1 / step_s,
        "train img/s": batch / step_s,
        "predict img/s": batch / predict_s,
    }


def time_segment(values: dict, batch: int, steps: int, device) -> dict:
    """DeepLab-v3 training images/s (hard pixel mining) and prediction images/s."""
    segment = values["segment"]
    model, _ = build_deeplab(values["cluster"]["k"] + 1, DeepLabSettings.from_config(segment))
    model.to(device).train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    precision = training_precision(device, segment["amp"])
    scaler = torch.amp.GradScaler(device.type, enabled=precision != "fp32")
    size = segment["size"]
    images = torch.rand(batch, 3, size, size, device=device)
    labels = torch.randint(0, values["cluster"]["k"] + 1, (batch, size, size), device=device)
    for step in range(steps + 1):
        if step == 1:
            _sync(device)
            started = time.perf_counter()
        with autocast(device, precision):
            loss = ohem_cross_entropy(model(images)["out"], labels)
        optimizer.zero_grad()
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    _sync(device)
    train_s = (time.perf_counter() - started) / steps
    model.eval()
    with torch.inference_mode(), autocast(device, precision):
        model(images)
        _sync(device)
        started = time.perf_counter()
        for _ in range(steps):
            model(images)["out"].argmax(1)
        _sync(device)
    predict_s = (time.perf_counter() - started) / steps
    return {"train img/s": batch / train_s, "predict img/s": batch / predict_s}


def time_crf(classes: int, height: int, width: int, repeats: int) -> dict:
    """Seconds per image of the dense CRF (the reference's settings) on the CPU."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    logits = rng.normal(size=(classes, height, width))
    probabilities = np.exp(logits) / np.exp(logits).sum(0)
    settings = CRFSettings(1, 3, 67, 3, 4, 10)
    started = time.perf_counter()
    for _ in range(repeats):
        dense_crf(image, probabilities, settings)
    return {"s/image": (time.perf_counter() - started) / repeats}


def measurements(device: torch.device, quick: bool) -> list[tuple[str, dict]]:
    """(what, numbers) of every measurement on ``device``."""
    steps = 2 if quick else 3
    demo, voc = config("demo"), config("voc12")
    return [
        (
            "stage 3, demo variant, batch 8, 128 x 160 px",
            time_distill(demo, (128, 160), 8, steps + 2, device),
        ),
        (
            "stage 3, R50-FPN (VOC12 preset), batch 2, 375 x 500 px (shorter side 640-800)",
            time_distill(voc, (375, 500), 2, steps, device),
        ),
        ("stage 5, demo variant, batch 16, 128 px", time_segment(demo, 16, steps + 2, device)),
        (
            "stage 5, DeepLab-v3 R50 OS 8 (VOC12 preset), batch 4, 512 px",
            time_segment(voc, 4, steps, device),
        ),
    ]


def table(rows: list[tuple[str, dict]]) -> str:
    lines = ["| measurement | numbers |", "|---|---|"]
    for what, numbers in rows:
        cells = ", ".join(f"{value:.3g} {name}" for name, value in numbers.items())
        lines.append(f"| {what} | {cells} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--quick", action="store_true", help="fewer steps")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    rows = measurements(torch.device("cpu"), args.quick)
    if crf_available():
        rows.append(
            ("dense CRF, 21 classes, 375 x 500 px, 10 iterations (CPU)", time_crf(21, 375, 500, 2))
        )
    print(f"machine: {machine_description()}, torch {torch.__version__}, {args.threads} threads")
    print(table(rows))


if __name__ == "__main__":
    main()
