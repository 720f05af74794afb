"""Weight specs as the config writes them: file paths versus hub names (torch-free).

The workflow reads this when it parses the rules, to declare weight files as job inputs.
"""

from __future__ import annotations

from pathlib import Path

CHECKPOINT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors", ".tar")
HUB_PREFIXES = ("hf-hub:", "timm:", "torchvision:")
PSEUDO_SPECS = ("none", "same")


def looks_like_path(spec: str) -> bool:
    """A file name rather than a hub name, ``random:...``, ``none`` or ``same``.

    Hub names may contain a slash (``hf-hub:org/name``); files end in a checkpoint suffix or
    contain a slash.
    """
    if spec in PSEUDO_SPECS or spec.startswith(("random:", *HUB_PREFIXES)):
        return False
    return spec.endswith(CHECKPOINT_SUFFIXES) or "/" in spec


def weight_files(specs: list[str | None]) -> list[str]:
    """The specs that name weight files, sorted and without repeats."""
    return sorted({s for s in specs if s is not None and looks_like_path(s)})


def weight_source(spec: str, pretrained: bool = True) -> str:
    """Where a backbone spec's weights come from: ``hub``, ``file``, or ``random``."""
    if spec.startswith("random:") or not pretrained and not Path(spec).is_file():
        return "random"
    return "file" if looks_like_path(spec) or Path(spec).is_file() else "hub"
