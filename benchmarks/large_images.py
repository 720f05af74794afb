"""What one large photo costs in stage 1: the whole `maskdistill discover` process per image size.

    python benchmarks/large_images.py              # the table of benchmarks/README.md

Each case writes one JPEG (noise with a bright rectangle, the object) of the given size into its
own folder and times one `maskdistill discover` process on it (start-up and model loading
included), with the shipped demo ViT for both backbones at the presets' input size (resize 640),
on the CPU. `feature_max_side` 640 is the default bound of the feature's image; 0 is the
reference (the feature ViT on the original-size crop).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maskdistill.provenance import machine_description  # noqa: E402

BACKBONE = REPO / "maskdistill" / "assets" / "demo_vit.pth"
CASES = [  # (height, width, feature_max_side)
    (480, 640, 640),
    (480, 640, 0),
    (1411, 1411, 640),
    (1411, 1411, 0),
    (3000, 4000, 640),
    (10000, 15000, 640),
]


def write_photo(path: Path, height: int, width: int) -> None:
    """A JPEG of noise with one bright rectangle (a third of each side) in the middle."""
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 80, (height, width, 3), dtype=np.uint8)
    pixels[height // 3 : 2 * height // 3, width // 3 : 2 * width // 3] = (220, 60, 40)
    Image.fromarray(pixels).save(path, quality=90)


def discover_seconds(folder: Path, max_side: int, threads: int) -> tuple[float, int]:
    """Wall seconds of one discover process on ``folder``, and its return code."""
    command = [sys.executable, "-m", "maskdistill", "discover", "--images", str(folder),
               "--backbone", str(BACKBONE), "--feature-backbone", "same", "--resize", "640",
               "--heads", "3", "--feature-max-side", str(max_side), "--device", "cpu",
               "--threads", str(threads), "--workers", "0", "--batch-size", "1",
               "--no-progress", "--out", str(folder / "shard.h5")]  # fmt: skip
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    if result.returncode != 0:
        print(result.stderr[-2000:], file=sys.stderr)
    return time.perf_counter() - start, result.returncode


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    print(f"machine: {machine_description()}, {args.threads} threads\n")
    print("| image | pixels | feature_max_side | discover process (s) | vs 640 x 480 |")
    print("|---|---|---|---|---|")
    baseline = None
    with tempfile.TemporaryDirectory() as tmp:
        for height, width, max_side in CASES:
            folder = Path(tmp) / f"{width}x{height}-{max_side}"
            folder.mkdir()
            write_photo(folder / "photo.jpg", height, width)
            seconds, code = discover_seconds(folder, max_side, args.threads)
            baseline = baseline or seconds
            status = f"{seconds:.1f}" if code == 0 else f"failed ({code})"
            print(
                f"| {width} x {height} | {height * width / 1e6:.1f} MP | {max_side} "
                f"| {status} | {seconds / baseline:.2f}x |",
                flush=True,
            )


if __name__ == "__main__":
    main()
