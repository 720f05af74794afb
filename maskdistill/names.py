"""Image names from data, and the output paths named after them.

Names come from files the user may have downloaded (COCO ``file_name`` values, VOC split lines,
image lists, folder listings, the pseudo ground truth of a shared cache), so they are untrusted:
a name is used only when it is a plain relative path, and every file a stage writes after an
image goes through :func:`output_path`, which checks the name again and that the result lies
inside the output folder. Torch-free: the workflow uses it when it parses the config.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path, PurePosixPath, PureWindowsPath


class UnsafeNameError(ValueError):
    """An image name that cannot be used as a relative path; names its source and the reason."""

    def __init__(self, name: str, source: str, reason: str) -> None:
        super().__init__(f"{source}: image name {ascii(name)} {reason}")
        self.name = name
        self.source = source
        self.reason = reason

    def __reduce__(self):
        return type(self), (self.name, self.source, self.reason)


def printable(name: str) -> str:
    """``name`` as text that any file can hold: bytes that are not UTF-8 (which listings
    return as surrogates) become ``\\xNN``."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


# a relative path of ASCII letters, digits, "_", ".", " ", "+", "-" whose parts do not start with
# a dot or a space: plain by construction (no separator but "/", no drive, no root)
_PLAIN_PATH = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_. +-]*(?:/[A-Za-z0-9_][A-Za-z0-9_. +-]*)*")


def unsafe_reason(name: str) -> str | None:
    """Why ``name`` is not a plain relative path (None when it is one).

    A plain relative path is non-empty valid UTF-8 text without NUL, absolute forms (``/x``,
    ``\\x``, ``C:x``, ``//server/x``) or ``..`` parts (``/`` and ``\\`` both count as
    separators, so that a name means the same on every system).
    """
    if isinstance(name, str) and _PLAIN_PATH.fullmatch(name) and ".." not in name:
        return None  # the common case, decided without the checks below
    if not isinstance(name, str) or not name.strip():
        return "is empty"
    if "\0" in name:
        return "holds a NUL character"
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (rename the file)"
    windows = PureWindowsPath(name)
    if PurePosixPath(name).is_absolute() or windows.anchor or windows.drive:
        return "is absolute (expected a path relative to the image folder)"
    if ".." in windows.parts:
        return "has a '..' part (expected a path inside the image folder)"
    return None


def check_name(name: str, source: str) -> str:
    """``name`` when it is a plain relative path, else UnsafeNameError naming ``source``."""
    reason = unsafe_reason(name)
    if reason is not None:
        raise UnsafeNameError(name, source, reason)
    return name


def output_path(folder: str | os.PathLike, name: str, suffix: str) -> Path:
    """Where a stage writes the file of image ``name``: ``folder/<name without suffix><suffix>``.

    Sub-folders of ``name`` (folder datasets) are kept, so names never collide across folders.

    Raises:
        UnsafeNameError: ``name`` is not a plain relative path, or the result would lie outside
            ``folder`` (through a symbolic link inside it).
    """
    check_name(name, f"output folder {folder}")
    path = Path(folder) / PurePosixPath(name).with_suffix(suffix)
    root = Path(folder).resolve()
    if not path.resolve().is_relative_to(root):
        raise UnsafeNameError(name, f"output folder {folder}", "leads outside the folder")
    return path


def check_collisions(names: Iterable[str], suffix: str, source: str) -> None:
    """Raise ValueError naming ``source`` when two names give the same output file (``a.jpg`` and
    ``a.png`` both give ``a<suffix>``), listing every such group; call it before any work."""
    groups: dict[str, list[str]] = defaultdict(list)
    for name in names:
        groups[PurePosixPath(name).with_suffix(suffix).as_posix()].append(name)
    clashes = [group for group in groups.values() if len(group) > 1]
    if clashes:
        shown = "; ".join(" and ".join(repr(n) for n in group) for group in clashes[:5])
        more = f" (and {len(clashes) - 5} more)" if len(clashes) > 5 else ""
        raise ValueError(
            f"{source}: {len(clashes)} groups of images would write the same {suffix} file: "
            f"{shown}{more}; rename them so that their names differ before the extension"
        )
