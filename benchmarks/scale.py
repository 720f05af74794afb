"""What one Snakemake invocation costs as the image folder grows: a dry run of the folder preset
and a dry run targeting one discover shard, in wall time and peak memory (RSS of the snakemake
process and its children), at several folder sizes.

The folders hold hard links to one tiny JPEG (``img-<i>.jpg``), so their size on disk is
small; the workflow sees as many images as there are links. Each size is measured in a fresh
copy of the workflow (its own results and .snakemake/), twice: the first dry run writes what
the workflow keeps between invocations, the second is what every later one pays.
Prints one Markdown table; the results are recorded in docs/scaling.md.
Run: ``python benchmarks/scale.py --sizes 20000 200000 1280000 --work /tmp/scale``.

With ``--stages 2000 4000 8000`` it runs the whole workflow instead, on generated demo datasets
of those sizes with the tests' tiny networks (tests/configs/tiny.yaml) and a fixed number of
images per shard, and prints each job's peak memory (the last line of its log, the largest over a
rule's jobs) and each stage's largest file, with its growth from the smallest size to
the largest: about 1x is bounded (by a shard or a constant), about the size ratio grows with
the dataset.
"""

from __future__ import annotations

import argparse
import os
import platform
import re
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


def stage_run(folder: Path, size: int, per_shard: int) -> Path:
    """The whole workflow on a generated demo set of ``size`` images, run in ``folder``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    shutil.copy2(REPO / "Snakefile", folder / "Snakefile")
    for name in ("rules", "envs", "report"):
        shutil.copytree(REPO / name, folder / name)
    config = yaml.safe_load((REPO / "tests" / "configs" / "tiny.yaml").read_text())
    config["run_name"] = "scale"
    config["demo_data"] |= {"num_train": size * 4 // 5, "num_val": size // 5}
    config["discover"]["num_shards"] = max(1, size // per_shard)
    config["cluster"]["k"] = 6
    for job in config["resources"].values():
        job["threads"] = 1
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    tools = Path(sys.executable).parent  # snakemake, and maskdistill for the jobs
    env = os.environ | {"PATH": f"{tools}{os.pathsep}{os.environ['PATH']}"}
    command = [str(tools / "snakemake"), "--cores", "2", "--quiet", "rules"]
    subprocess.run(command, cwd=folder, env=env, check=True)
    return folder


def peak_memory(run: Path) -> dict[str, float]:
    """Peak memory in MB per rule, the largest over its jobs: the last line of each job's log
    (``maskdistill`` logs its peak resident memory when it ends)."""
    logs = run / "results" / "scale" / "logs"
    peaks: dict[str, float] = {}
    for path in logs.rglob("*.log"):
        found = re.findall(r"peak memory (\d+) MB", path.read_text())
        rule = path.relative_to(logs).parts[0].removesuffix(".log")
        if found:
            peaks[rule] = max(peaks.get(rule, 0.0), float(found[-1]))
    return peaks


def largest_files(run: Path) -> dict[str, int]:
    """Bytes of the largest file of each stage's cache folder (an image folder counts as its
    number of files x 1000, so that a folder of one file per image shows its growth)."""
    sizes: dict[str, int] = {}
    for stage in (run / "results" / "cache").iterdir():
        for path in stage.rglob("*"):
            if path.is_file():
                sizes[stage.name] = max(sizes.get(stage.name, 0), path.stat().st_size)
            elif path.is_dir():
                files = sum(1 for p in path.iterdir() if p.is_file())
                sizes[f"{stage.name} (files in one folder)"] = max(
                    sizes.get(f"{stage.name} (files in one folder)", 0), files
                )
    return sizes


def stage_table(sizes: list[int], work: Path, per_shard: int) -> None:
    """Peak memory per rule and largest output per stage at each size, with the growth."""
    runs = {size: stage_run(work / f"stages-{size}", size, per_shard) for size in sizes}
    memory = {size: peak_memory(run) for size, run in runs.items()}
    files = {size: largest_files(run) for size, run in runs.items()}
    first, last = sizes[0], sizes[-1]
    header = " | ".join(f"{size:,} images" for size in sizes)
    for title, table, unit in (("job peak memory", memory, "MB"), ("largest output", files, "")):
        print(f"\n| {title} | {header} | growth {first:,} -> {last:,} |")
        print("|---|" + "---|" * (len(sizes) + 1))
        for name in sorted(table[last]):
            cells = [table[size].get(name, 0) for size in sizes]
            growth = cells[-1] / cells[0] if cells[0] else float("nan")
            shown = [f"{c:.0f} {unit}".strip() for c in cells]
            print(f"| {name} | " + " | ".join(shown) + f" | {growth:.1f}x |")
    print(f"\n{per_shard} images per shard; machine: {machine_description()}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[20_000, 200_000])
    parser.add_argument("--work", type=Path, default=Path("/tmp/maskdistill-scale"))
    parser.add_argument("--stages", type=int, nargs="*", help="demo sizes: run every stage")
    parser.add_argument("--per-shard", type=int, default=500, help="images per shard (--stages)")
    args = parser.parse_args()
    if args.stages:
        stage_table(args.stages, args.work, args.per_shard)
        return
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
