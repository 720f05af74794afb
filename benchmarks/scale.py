"""What one Snakemake invocation costs as the image folder grows: a dry run of the folder preset
and a dry run targeting one discover shard, in wall time and peak memory (RSS of the snakemake
process and its children), at several folder sizes.

The folders hold hard links to one tiny JPEG (``img-<i>.jpg``), so their size on disk is
small; the workflow sees as many images as there are links. Each size is measured in a fresh
copy of the workflow (its own results and .snakemake/), twice: the first dry run writes what
the workflow keeps between invocations, the second is what every later one pays.
Prints one Markdown table; the results are recorded in docs/scaling.md.
Run: ``python benchmarks/scale.py --sizes 20000 200000 1280000 --work /tmp/scale``.
"""

from __future__ import annotations

import argparse
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

from maskdistill.provenance import machine_description

REPO = Path(__file__).resolve().parents[1]
LINKS_PER_FILE = 50_000  # ext4 allows 65,000 hard links to one file


def image_folder(folder: Path, count: int) -> None:
    """``count`` hard links to 8 x 8 JPEGs, in ``folder`` (kept when already complete)."""
    marker = folder / f".complete-{count}"
    if marker.is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    sources = folder.parent / f"{folder.name}-sources"  # file systems cap links per file
    sources.mkdir(exist_ok=True)
    pixels = Image.fromarray(np.full((8, 8, 3), 128, np.uint8))
    for i in range(count):
        source = sources / f"{i // LINKS_PER_FILE}.jpg"
        if i % LINKS_PER_FILE == 0:
            pixels.save(source)
        (folder / f"img-{i:07d}.jpg").hardlink_to(source)
    marker.touch()


def workspace(folder: Path, images: Path) -> Path:
    """A copy of the workflow whose config is configs/folder.yaml over ``images``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy2(REPO / "Snakefile", folder / "Snakefile")
    for name in ("rules", "envs", "report", "profiles"):
        shutil.copytree(REPO / name, folder / name)
    config = yaml.safe_load((REPO / "configs" / "folder.yaml").read_text())
    config["dataset"]["root"] = str(images)
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


def measured(command: list[str], cwd: Path) -> tuple[float, float]:
    """(seconds, peak MB) of ``command``, run in a child that reports its own children's peak."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "start = time.perf_counter()\n"
        "done = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "seconds = time.perf_counter() - start\n"
        "if done.returncode:\n"
        "    sys.exit(done.stdout[-3000:] + done.stderr[-3000:])\n"
        "print(seconds, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe, *command], cwd=cwd, capture_output=True, text=True
    )
    if out.returncode:
        raise RuntimeError(f"{' '.join(command)} failed in {cwd}:\n{out.stderr}")
    seconds, megabytes = out.stdout.split()
    return float(seconds), float(megabytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/maskdistill-scale"))
    args = parser.parse_args()
    snakemake = str(Path(sys.executable).parent / "snakemake")
    rows = []
    for size in args.sizes:
        images = args.work / f"images-{size}"
        image_folder(images, size)
        flow = workspace(args.work / f"workflow-{size}", images)
        dry = [snakemake, "--dry-run", "--cores", "1", "--quiet", "rules"]
        first = measured(dry, flow)
        again = measured(dry, flow)
        shards = yaml.safe_load((flow / "config.yaml").read_text())["discover"]["num_shards"]
        listing = subprocess.run(
            [snakemake, "--dry-run", "--cores", "1"], cwd=flow, capture_output=True, text=True
        ).stdout
        shard = next(w for w in listing.split() if w.endswith(f"shard-0-of-{shards}.h5"))
        one = measured([snakemake, shard, "--dry-run", "--cores", "1", "--quiet", "rules"], flow)
        rows.append((size, first, again, one))
        print(f"{size} images: first {first}, again {again}, one shard {one}", file=sys.stderr)
    print(
        "| images | dry run, first (s / MB) | dry run, again (s / MB) | one-shard target (s / MB) |"
    )
    print("|---|---|---|---|")
    for size, *cells in rows:
        print(f"| {size:,} | " + " | ".join(f"{s:.1f} / {mb:.0f}" for s, mb in cells) + " |")
    print(f"\nmachine: {machine_description()}, python {platform.python_version()}")


if __name__ == "__main__":
    main()
