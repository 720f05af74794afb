"""Speed of stage-1 mask discovery against a one-image-at-a-time loop like the authors' code.

Both sides read the same generated JPEGs (mixed landscape/portrait, VOC-like sizes) and run the
same random-initialised ViT-S/16 at 640 px (``vit_small_patch16_224`` with random weights: the
speed does not depend on the weights), 5 heads, top-k 0.4, mass 0.5.

- reference: written like gen_masks.py (wvangansbeke/MaskDistill): per image, PIL decode,
  ``Resize(640)``, ``ToTensor``, ``Normalize``, zero padding; every block run with explicit
  softmax attention, the last block in full (attention output and MLP included) returning its
  attention, q and k; then ``mask_generator``: attention of every head over all tokens, the
  N x N patch graph, ``scipy.ndimage.label``.
- maskdistill: ``maskdistill.loader.image_batches`` (decode in DataLoader workers, bucketing
  by padded shape) and ``maskdistill.discover.batch.batch_masks`` (fused attention, the last block's
  q and k only, no N x N graph), under ``torch.inference_mode``.

The clustering feature is not timed on either side (the reference computes it in a separate
script). Every mask must be identical. Prints images/s for both and the ratio; results are
recorded in benchmarks/README.md. Run: ``python benchmarks/discover_speed.py --threads 2``.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import scipy.ndimage
import torch
from PIL import Image
from torchvision import transforms

from maskdistill.config import defaults
from maskdistill.data import open_dataset
from maskdistill.discover.batch import DiscoverSettings, batch_masks, input_batches
from maskdistill.loader import PredictionRun
from maskdistill.models import vit
from maskdistill.models.norm import IMAGENET
from maskdistill.provenance import machine_description
from maskdistill.runtime import DEVICES, resolve_device

BACKBONE = "vit_small_patch16_224"
SETTINGS = DiscoverSettings.from_config(defaults("discover"))  # the paper's: 640 px, 5 heads, ...


def write_images(folder: Path, count: int, seed: int = 0) -> None:
    """``count`` JPEGs of 500 x 375 (every third one 375 x 500): noise plus a few blobs."""
    rng = np.random.default_rng(seed)
    for i in range(count):
        h, w = (500, 375) if i % 3 == 2 else (375, 500)
        pixels = rng.integers(0, 80, (h, w, 3), dtype=np.uint8)
        for _ in range(3):
            y, x = rng.integers(0, h - 100), rng.integers(0, w - 100)
            pixels[y : y + rng.integers(40, 100), x : x + rng.integers(40, 100)] = rng.integers(
                90, 255, 3
            )
        Image.fromarray(pixels).save(folder / f"{i:04d}.jpg", quality=90)


# ----- reference: one image at a time, as gen_masks.py -----


def reference_block(block, x: torch.Tensor):
    """A timm block with explicit softmax attention; returns (x, attention, q, k)."""
    attn = block.attn
    batch, tokens, dim = x.shape
    qkv = attn.qkv(block.norm1(x)).reshape(batch, tokens, 3, attn.num_heads, dim // attn.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4)
    attention = ((q * attn.scale) @ k.transpose(-2, -1)).softmax(dim=-1)
    y = attn.proj((attention @ v).transpose(1, 2).reshape(batch, tokens, dim))
    x = x + block.ls1(y)
    x = x + block.ls2(block.mlp(block.norm2(x)))
    return x, attention, q, k


def reference_mask_generator(q, k, cols: int, heads: int, topk: float, mass: float) -> np.ndarray:
    """``mask_generator`` of gen_masks.py: q, k (1, L, 1 + N, d) -> grid mask (h, w) bool."""
    bs, n_heads, n_tokens, _ = q.shape
    attention = q @ k.transpose(-2, -1)
    g_cls = attention[0, :, 0, 1:].reshape(n_heads, -1)
    g_cls = torch.mean(g_cls[torch.arange(heads)], dim=0, keepdim=True)
    values, order = torch.sort(g_cls)  # threshold_attention of utils/util.py
    values /= torch.sum(values, dim=1, keepdim=True)
    keep = torch.cumsum(values, dim=1) > (1 - mass)
    keep[0] = keep[0][torch.argsort(order)[0]]
    g_cls *= keep.view(bs, -1)
    keys = k[0, :, 1:]
    graph = (keys @ keys.transpose(-2, -1)).sum(dim=0)
    g_cls = g_cls[0].view(-1)
    proposals = torch.topk(g_cls.float(), k=max(1, int(topk * (n_tokens - 1))), sorted=True)[1]
    source = proposals[0]
    seeds = proposals[graph[source, proposals] > 0.0]
    diffused = (torch.sum(graph[seeds], dim=0) > 0).view(-1, cols)
    labels = scipy.ndimage.label(diffused.cpu().numpy())[0]
    return labels == labels[source // cols, source % cols]


def reference_masks(model, paths: list[Path], device: torch.device) -> dict[str, np.ndarray]:
    """Grid masks by file name, one image at a time."""
    patch = vit.patch_size(model)
    transform = transforms.Compose(
        [
            transforms.Resize(SETTINGS.resize),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET.mean, IMAGENET.std),
        ]
    )
    masks = {}
    with torch.no_grad():
        for path in paths:
            img = transform(Image.open(path).convert("RGB"))
            height, width = img.shape[1:]
            padded = torch.zeros(3, -(-height // patch) * patch, -(-width // patch) * patch)
            padded[:, :height, :width] = img
            x = vit.embed(model, padded[None].to(device))
            for block in model.blocks:
                x, attention, q, k = reference_block(block, x)
            masks[path.name] = reference_mask_generator(
                q, k, padded.shape[-1] // patch, SETTINGS.heads, SETTINGS.topk, SETTINGS.mass
            )
    return masks


# ----- maskdistill -----


def maskdistill_masks(
    model, folder: Path, device: torch.device, batch_size: int, workers: int
) -> dict[str, np.ndarray]:
    """Grid masks by file name through the batched path (image loading + masks, no feature)."""
    records = open_dataset({"kind": "folder", "root": str(folder)}).records()
    models = vit.Backbones(model, model)
    run = PredictionRun(device, batch_size=batch_size, workers=workers, progress=False)
    batches = input_batches(records, models, SETTINGS, run)
    masks = {}
    with torch.inference_mode():
        for items in batches:
            images = torch.stack([item.value.image for item in items]).to(device)
            for item, (grid_mask, _, _) in zip(
                items, batch_masks(model, images, SETTINGS), strict=True
            ):
                masks[item.record.file_name] = grid_mask
    return masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--workers", type=int, default=1, help="decoding processes (maskdistill)")
    parser.add_argument("--device", choices=DEVICES, default="auto")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    model = vit.load_backbone(BACKBONE, pretrained=False, device=device)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_images(folder, args.images)
        paths = sorted(folder.glob("*.jpg"))
        reference_masks(model, paths[:1], device)  # warm-up, untimed
        maskdistill_masks(model, folder, device, 1, 0)

        def timed(fn, *fn_args) -> tuple[dict[str, np.ndarray], float]:
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            result = fn(*fn_args)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return result, time.perf_counter() - start

        ours, ours_s = timed(
            maskdistill_masks, model, folder, device, args.batch_size, args.workers
        )
        ref, ref_s = timed(reference_masks, model, paths, device)
    differ = [name for name in ref if not np.array_equal(ref[name], ours[name])]
    cuda = device.type == "cuda"
    hardware = torch.cuda.get_device_name(device) if cuda else machine_description()
    print(
        f"device {device} ({hardware}), torch {torch.__version__}, {args.threads} threads, "
        f"{args.images} images 500x375/375x500 at {SETTINGS.resize} px, {BACKBONE} (random)"
    )
    print(f"reference loop: {args.images / ref_s:.3f} images/s ({ref_s:.1f} s)")
    print(
        f"maskdistill:    {args.images / ours_s:.3f} images/s ({ours_s:.1f} s, batch "
        f"{args.batch_size}, {args.workers} workers)"
    )
    print(f"ratio: {ref_s / ours_s:.2f}x; identical masks: {len(ref) - len(differ)}/{len(ref)}")
    if differ:
        raise SystemExit(f"masks differ for {differ}")


if __name__ == "__main__":
    main()
