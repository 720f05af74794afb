"""Where an output came from: package version, git SHA, settings."""

from __future__ import annotations

import functools
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
