"""Exercise every CUDA path of the pipeline with AMP and print its speed, in one run.

    python benchmarks/gpu_check.py            # on a machine with a CUDA GPU (a few minutes)
    python benchmarks/gpu_check.py --device cpu --smoke   # the code path on a CPU (demo sizes)

Discover (ViT-S/16 at 640 px, fp16 autocast, batch 8), Mask R-CNN training and prediction
(the demo variant and the R50-FPN preset, AMP) and DeepLab-v3 training and prediction (the
demo variant and the ResNet-50 preset, AMP), with random weights and random images (no
download, no data). Prints a Markdown table with the device's name: record it in
benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stage_speed  # noqa: E402

from maskdistill.config import defaults  # noqa: E402
from maskdistill.discover.batch import DiscoverSettings, batch_masks  # noqa: E402
from maskdistill.discover.feature import cls_features  # noqa: E402
from maskdistill.models import vit  # noqa: E402
from maskdistill.provenance import machine_description  # noqa: E402
from maskdistill.runtime import autocast  # noqa: E402


def time_discover(device: torch.device, batch: int, steps: int, precision: str) -> dict:
    """Images/s of discover's batched step (masks + clustering features) at 640 px."""
    settings = DiscoverSettings.from_config(defaults("discover"))
    model = vit.load_backbone("vit_small_patch16_224", pretrained=False, device=device)
    feature = vit.load_backbone("vit_small_patch8_224", pretrained=False, device=device)
    images = torch.rand(batch, 3, 640, 848, device=device)
    crops = torch.rand(batch, 3, 200, 256, device=device)
    with torch.inference_mode():
        for step in range(steps + 1):
            if step == 1:
                stage_speed._sync(device)
                started = time.perf_counter()
            batch_masks(model, images, settings, precision)
            with autocast(device, precision):
                cls_features(feature, list(crops), device)
        stage_speed._sync(device)
    return {"img/s": batch * steps / (time.perf_counter() - started)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--smoke", action="store_true", help="demo sizes only, few steps")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("gpu_check: no CUDA device here (run it where there is a GPU)")
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else machine_description()
    torch.manual_seed(0)
    precision = "fp16" if device.type == "cuda" else "fp32"
    batch, steps = (1, 1) if args.smoke else (8, 5)
    what = f"discover, ViT-S/16 640 px + ViT-S/8 features, batch {batch}, {precision}"
    rows = [(what, time_discover(device, batch, steps, precision))]
    if args.smoke:
        demo = stage_speed.config("demo")
        rows.append(
            ("stage 3 demo variant", stage_speed.time_distill(demo, (128, 160), 2, 1, device))
        )
        rows.append(("stage 5 demo variant", stage_speed.time_segment(demo, 2, 1, device)))
    else:
        rows += stage_speed.measurements(device, quick=False)
        if device.type == "cuda":
            voc = stage_speed.config("voc12")
            rows.append(
                (
                    "stage 3, R50-FPN, batch 8, AMP",
                    stage_speed.time_distill(voc, (375, 500), 8, 5, device),
                )
            )
            rows.append(
                (
                    "stage 5, DeepLab-v3 R50, batch 16, AMP",
                    stage_speed.time_segment(voc, 16, 5, device),
                )
            )
    memory = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0
    print(f"device: {name}; torch {torch.__version__}; peak memory {memory:.1f} GiB")
    print(stage_speed.table(rows))


if __name__ == "__main__":
    main()
