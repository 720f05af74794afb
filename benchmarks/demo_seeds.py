"""The demo's quality signal: stages 3-5 over several seeds, each metric's mean and spread.

    python benchmarks/demo_seeds.py --seeds 0 1 2 --cores 2   # README's status table

Runs the workflow once per seed on the default config (the embedded demo), each as its own run
(``run_name: demo-seed<s>``, ``distill.seed`` and ``segment.seed`` = s); stages 1-2 do not
depend on the seed (their discover shards are shared through the cache and their numbers are
identical in every run). Then prints one Markdown table of every metric as mean, min, max and
spread (max - min) over the seeds, the machine, the thread count and each run's wall time, and
writes the same as JSON (``--out``). A quality figure is a mean with its spread over seeds: a
single run on another machine does not reproduce its number, the mean within the spread does.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from maskdistill.provenance import machine_description, provenance  # noqa: E402

# (metrics JSON, summary key, row name) in stage order
METRICS = [
    ("discovery", "CorLoc", "stage 1 CorLoc"),
    ("cluster", "mIoU", "stage 2 mIoU"),
    ("distill", "mask AP50 (multi)", "stage 3 mask AP50 multi"),
    ("distill", "mask AP50 (single)", "stage 3 mask AP50 single"),
    ("distill", "mIoU", "stage 3 painted mIoU"),
    ("select", "mIoU", "stage 4 mIoU (the train + val images it labels)"),
    ("select", "share of images reaching tau", "stage 4 images reaching tau"),
    ("select", "mIoU (images reaching tau)", "stage 4 mIoU, images reaching tau"),
    ("select", "stage-2 mIoU (same images)", "stage 2 mIoU, the same images"),
    ("segment-round-0-labels", "mIoU", "stage 5 mIoU"),
]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--cores", type=int, default=2, help="snakemake --cores")
    parser.add_argument("--configfile", default="config.yaml", help="the demo config")
    parser.add_argument("--results", default="results", help="results_dir of the runs")
    parser.add_argument("--out", default=None, help="also write the table as JSON here")
    return parser.parse_args(argv)


def run_seed(seed: int, args: argparse.Namespace) -> tuple[dict[str, float | None], float]:
    """One workflow run with ``seed``: its metrics by row name and its wall time (s)."""
    run_name = f"demo-seed{seed}"
    config = {
        "run_name": run_name,
        "results_dir": args.results,
        "distill": {"seed": seed},
        "segment": {"seed": seed},
    }
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as handle:
        yaml.safe_dump(config, handle)
    snakemake = Path(sys.executable).parent / "snakemake"
    command = [str(snakemake), "--cores", str(args.cores), "--configfile", args.configfile]
    command += [handle.name]
    env = {**os.environ, "PATH": f"{snakemake.parent}{os.pathsep}{os.environ['PATH']}"}
    started = time.monotonic()
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True)
    seconds = time.monotonic() - started
    os.unlink(handle.name)
    if result.returncode != 0:
        raise SystemExit(f"seed {seed}: snakemake failed\n{result.stderr[-4000:]}")
    folder = REPO / args.results / run_name / "evaluate"
    values = {}
    for report, key, row in METRICS:
        summary = json.loads((folder / f"{report}.json").read_text())["summary"]
        values[row] = summary.get(key)
    return values, seconds


def summarise(runs: dict[int, dict[str, float | None]]) -> list[dict]:
    """Per metric: the values by seed, mean, min, max, spread (in percent)."""
    rows = []
    for _, _, name in METRICS:
        values = [runs[s][name] for s in runs if runs[s][name] is not None]
        if not values:
            continue
        percent = 100 * np.array(values)
        rows.append(
            {
                "metric": name,
                "values": [round(float(v), 2) for v in percent],
                "mean": round(float(percent.mean()), 2),
                "min": round(float(percent.min()), 2),
                "max": round(float(percent.max()), 2),
                "spread": round(float(percent.max() - percent.min()), 2),
            }
        )
    return rows


def markdown(rows: list[dict], seeds: list[int]) -> str:
    header = "| metric (demo val, %) | " + " | ".join(f"seed {s}" for s in seeds)
    lines = [header + " | mean | spread (max - min) |", "|---" * (len(seeds) + 3) + "|"]
    for row in rows:
        cells = " | ".join(f"{v:.1f}" for v in row["values"])
        lines.append(f"| {row['metric']} | {cells} | {row['mean']:.1f} | {row['spread']:.1f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    runs, seconds = {}, {}
    for seed in args.seeds:
        runs[seed], seconds[seed] = run_seed(seed, args)
        print(f"seed {seed}: {seconds[seed]:.0f} s", file=sys.stderr, flush=True)
    rows = summarise(runs)
    result = {
        "machine": machine_description(),
        "seeds": args.seeds,
        "wall_seconds": seconds,
        "rows": rows,
        "provenance": provenance(),
    }
    print(f"{machine_description()}; seeds {args.seeds}; wall time per run (s): {seconds}")
    print(markdown(rows, args.seeds))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
