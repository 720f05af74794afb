"""Where an output came from: package version, git SHA, settings."""

from __future__ import annotations

import functools
import os
import platform
import subprocess
from pathlib import Path

from maskdistill import __version__


@functools.cache
def git_sha() -> str | None:
    """The commit of the checkout this package runs from, or None outside a git checkout."""
    try:
        result = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return result.stdout.strip() or None if result.returncode == 0 else None


def provenance() -> dict[str, str | None]:
    """Version and git SHA to store next to every output."""
    return {"version": __version__, "git_sha": git_sha()}


def machine_description() -> str:
    """The CPU model (Linux /proc/cpuinfo, else the machine type) and the visible CPU count.

    Benchmarks print it next to their timings.
    """
    model = platform.machine()
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.exists():
        for line in cpuinfo.read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{model}, {os.cpu_count()} cpus visible"
