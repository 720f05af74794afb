"""Run the real workflow with `snakemake` on tiny data inside a temporary copy of the checkout.

The copy (Snakefile, rules/, envs/, report/ captions, the maskdistill package) makes every run
self-contained: Snakemake's metadata (.snakemake/) and the results stay in the temporary folder,
and a test may edit a copied stage module to check code-change reruns without touching the
checkout. The copied package is first on PYTHONPATH, so the rules' parse-time code and the jobs
both use it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
TINY_CONFIG = REPO / "tests" / "configs" / "tiny.yaml"

_JOB = re.compile(r"^(local)?(?:rule|checkpoint) (\S+):$")
_WILDCARDS = re.compile(r"^\s+wildcards: (.*)$")


def tiny_config(**sections) -> dict:
    """The tiny test config, with the given top-level sections merged into it (one level deep)."""
    config = yaml.safe_load(TINY_CONFIG.read_text())
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(config.get(key), dict):
            config[key] = {**config[key], **value}
        else:
            config[key] = value
    return config


def make_workspace(folder: Path, config: dict) -> Path:
    """Copy the workflow and the package into ``folder`` and write ``config`` as its config.yaml."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy2(REPO / "Snakefile", folder / "Snakefile")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("rules", "envs", "report", "maskdistill"):
        shutil.copytree(REPO / name, folder / name, ignore=ignore, dirs_exist_ok=True)
    write_config(folder, config)
    return folder


def write_config(workspace: Path, config: dict) -> None:
    """Replace the workspace's config.yaml."""
    (workspace / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def no_slurm_client(folder: Path) -> Path:
    """A folder holding an ``scontrol`` that fails at once, to put first on PATH.

    The SLURM executor plugin runs ``scontrol show config`` whenever Snakemake starts; where the
    SLURM client is installed (the SLURM test installs it) but no controller runs, that call
    waits about 10 s before it gives up, in every snakemake call of every test. Tests that do not
    use SLURM put this folder first on PATH; the SLURM test does not.
    """
    folder.mkdir(parents=True, exist_ok=True)
    script = folder / "scontrol"
    script.write_text("#!/bin/sh\nexit 1\n")
    script.chmod(0o755)
    return folder


def workflow_env(
    workspace: Path, extra: dict[str, str] | None = None, slurm: bool = False
) -> dict[str, str]:
    """Environment for snakemake and its jobs: the venv's tools, the copied package first.

    ``slurm``: keep the machine's SLURM client (else see :func:`no_slurm_client`).
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SNAKEMAKE_"))}
    env["PATH"] = f"{BIN}{os.pathsep}{env.get('PATH', '')}"
    if not slurm:
        env["PATH"] = f"{no_slurm_client(workspace / '.no-slurm')}{os.pathsep}{env['PATH']}"
    env["PYTHONPATH"] = str(workspace)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(extra or {})
    return env


def snakemake(
    workspace: Path,
    *args: str,
    check: bool = True,
    env: dict[str, str] | None = None,
    slurm: bool = False,
) -> subprocess.CompletedProcess:
    """Run ``snakemake ARGS`` in ``workspace``; with ``check``, a failure raises with the output."""
    result = subprocess.run(
        [str(BIN / "snakemake"), *args],
        cwd=workspace,
        env=workflow_env(workspace, env, slurm),
        capture_output=True,
        text=True,
        check=False,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed ({result.returncode}):\n"
            f"{result.stdout[-6000:]}\n{result.stderr[-6000:]}"
        )
    return result


def parse_jobs(text: str, local: bool | None = None) -> Counter:
    """Jobs listed in snakemake's output, as a Counter of (rule, wildcards) pairs.

    ``wildcards`` is the text after ``wildcards:`` (e.g. ``shard=0, num_shards=2``), or "".
    ``local``: True keeps only jobs listed as ``localrule``, False only the others (with a
    cluster executor: the submitted ones), None keeps all.
    """
    jobs: list[list] = []
    for line in text.splitlines():
        if match := _JOB.match(line):
            jobs.append([match.group(2), "", bool(match.group(1))])
        elif jobs and (match := _WILDCARDS.match(line)):
            jobs[-1][1] = match.group(1)
    return Counter(
        (rule, wildcards) for rule, wildcards, is_local in jobs if local in (None, is_local)
    )


def planned_jobs(workspace: Path, *args: str, env: dict[str, str] | None = None) -> Counter:
    """The jobs a dry run would execute (``rule all`` left out)."""
    result = snakemake(workspace, "--dry-run", "--cores", "1", *args, env=env)
    jobs = parse_jobs(result.stdout + result.stderr)
    del jobs[("all", "")]
    return jobs


def rules_of(jobs: Counter) -> Counter:
    """How many jobs of each rule ``jobs`` holds; a job of rule ``evaluate`` counts as
    ``evaluate_<stage>`` of its report (``report=segment-round-0-labels``: ``evaluate_segment``),
    so that the counts say which stages' metrics run."""
    counts: Counter = Counter()
    for (rule, wildcards), n in jobs.items():
        if rule == "evaluate":
            rule = "evaluate_" + wildcards.removeprefix("report=").split("-")[0]
        counts[rule] += n
    return counts
