"""Stage-1 quality of the demo backbone against a centre box and random backbones (issue 6).

On a split of the demo dataset (``maskdistill make-demo-data``), runs the discover core
(``vit.last_block_qk`` + ``object_mask``) with the given settings on one image at a
time and reports, per backbone:

- CorLoc: fraction of images whose mask box has IoU >= 0.5 with some ground-truth box;
- mask IoU: mean over images of the mask's IoU with the best-matching ground-truth object;
- source on object: fraction of images whose source patch centre lies on an object.

Baselines under the same settings: a fixed centre box (x, y, w, h) = (W/4, H/4, W/2, H/2), and
random-initialised backbones of the same architecture (one per ``--random-seeds`` value).

Example (the numbers in README.md "Demo backbone")::

    maskdistill make-demo-data --out results/demo_data --num-train 600 --num-val 150
    python benchmarks/demo_backbone_quality.py --data results/demo_data \\
        --backbone maskdistill/assets/demo_vit.pth --resize 128 --heads 3 --center-keys
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np
import torch

from maskdistill.data import open_dataset
from maskdistill.discover.mask import object_mask
from maskdistill.images import load_image
from maskdistill.masks import mask_box, upsample_grid_mask
from maskdistill.metrics import corloc_hit
from maskdistill.models import vit


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="demo dataset root (VOC layout)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--backbone", required=True, help="checkpoint (or any load_backbone spec)")
    parser.add_argument("--random-seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--resize", type=int, default=128, help="shorter side, pixels")
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--topk", type=float, default=0.4)
    parser.add_argument("--mass", type=float, default=0.5)
    parser.add_argument("--center-keys", action="store_true")
    parser.add_argument("--limit", type=int, help="first N images only (quick checks)")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", help="also write the results as JSON here")
    return parser.parse_args(argv)


def random_spec(model: torch.nn.Module, seed: int) -> str:
    """The ``random:`` spec of a backbone with ``model``'s architecture and the given seed."""
    patch = vit.patch_size(model)
    return (
        f"random:patch={patch},width={model.embed_dim},depth={len(model.blocks)},"
        f"heads={model.blocks[0].attn.num_heads},img={model.patch_embed.img_size[0]},seed={seed}"
    )


def backbone_qk(model: torch.nn.Module, samples: list, resize: int) -> list:
    """Per sample: (q, k (heads, 1 + N, d), grid (h, w), resized (H', W')) at ``resize``."""
    patch = vit.patch_size(model)
    out = []
    for image, _, _ in samples:
        tensor, resized = vit.preprocess(image, resize, patch, vit.normalization(model))
        with torch.no_grad():
            q, k = vit.last_block_qk(model, tensor[None])
        out.append((q[0], k[0], (tensor.shape[1] // patch, tensor.shape[2] // patch), resized))
    return out


def score(samples: list, qk: list, patch: int, settings: dict, prefix: int = 1) -> dict[str, float]:
    """CorLoc, mean mask IoU and source-on-object rate of ``object_mask(**settings)`` masks."""
    hits, ious, on_object = [], [], []
    for (image, gt_masks, gt_boxes), (q, k, grid, resized) in zip(samples, qk, strict=True):
        grid_mask, source = object_mask(q, k, grid, num_prefix_tokens=prefix, **settings)
        mask = upsample_grid_mask(grid_mask, patch, resized, image.shape[:2])
        hits.append(corloc_hit(mask_box(mask), gt_boxes))
        inter = (gt_masks & mask).sum(axis=(1, 2))
        union = (gt_masks | mask).sum(axis=(1, 2))
        ious.append(float((inter / np.maximum(union, 1)).max()))
        # source patch centre, mapped back to original pixels
        row = (source // grid[1] + 0.5) * patch * image.shape[0] / resized[0]
        col = (source % grid[1] + 0.5) * patch * image.shape[1] / resized[1]
        row, col = min(int(row), image.shape[0] - 1), min(int(col), image.shape[1] - 1)
        on_object.append(bool(gt_masks[:, row, col].any()))
    return {
        "corloc": float(np.mean(hits)),
        "mask_iou": float(np.mean(ious)),
        "source_on_object": float(np.mean(on_object)),
    }


def evaluate(model: torch.nn.Module, samples: list, args: argparse.Namespace) -> dict[str, float]:
    """CorLoc, mean mask IoU and source-on-object rate of ``model`` over ``samples``."""
    settings = {
        "heads": args.heads,
        "topk": args.topk,
        "mass": args.mass,
        "center_keys": args.center_keys,
    }
    qk = backbone_qk(model, samples, args.resize)
    return score(samples, qk, vit.patch_size(model), settings, vit.num_prefix_tokens(model))


def centre_box_corloc(samples: list) -> float:
    """CorLoc of the fixed box (W/4, H/4, W/2, H/2)."""
    hits = []
    for image, _, gt_boxes in samples:
        height, width = image.shape[:2]
        hits.append(corloc_hit((width / 4, height / 4, width / 2, height / 2), gt_boxes))
    return float(np.mean(hits))


def load_samples(data: str, split: str, limit: int | None = None) -> list:
    """(image, GT masks (N, H, W) bool, GT boxes (N, 4)) of the first ``limit`` split images."""
    dataset = open_dataset({"kind": "voc", "root": data}, [split])
    records = dataset.records()[:limit]
    samples = []
    for record in records:
        instances = dataset.instance_masks(record)
        masks = np.stack([m for m, _ in instances])
        boxes = np.array([[b.x, b.y, b.w, b.h] for b in dataset.boxes(record)], dtype=np.float64)
        samples.append((load_image(record.path), masks, boxes))
    return samples


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    started = time.time()
    samples = load_samples(args.data, args.split, args.limit)
    trained = vit.load_backbone(args.backbone)
    results = {
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "threads")},
        "images": len(samples),
        "centre_box": {"corloc": centre_box_corloc(samples)},
        "trained": evaluate(trained, samples, args),
    }
    randoms = [
        evaluate(vit.load_backbone(random_spec(trained, seed)), samples, args)
        for seed in args.random_seeds
    ]
    if randoms:
        results["random_mean"] = {k: float(np.mean([r[k] for r in randoms])) for k in randoms[0]}
        results["random_per_seed"] = randoms
    results["seconds"] = round(time.time() - started, 1)
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as handle:
            handle.write(text + "\n")
    return results


if __name__ == "__main__":
    main(sys.argv[1:])
