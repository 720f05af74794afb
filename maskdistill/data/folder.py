"""Dataset kind ``folder``: every image file under a directory, without ground truth."""

from __future__ import annotations

import os
from pathlib import Path

from maskdistill.data.base import Dataset, ImageRecord
from maskdistill.names import UnsafeNameError, unsafe_reason

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})


def list_images(root: Path, unsupported: list[str] | None = None) -> list[str]:
    """Relative POSIX paths of the image files under ``root``, sorted by code point.

    Recursive; extensions are matched case-insensitively; hidden files and folders (names
    starting with ".", e.g. macOS ``._*`` resource forks) are left out, and symbolic links to
    folders are not followed. Other visible files (``.gif``, ``.heic``, ``.txt``, ...) are
    appended to ``unsupported``, sorted, when it is given.
    """
    found, others = [], []
    for folder, dirs, files in os.walk(root):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        base = Path(folder).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"  # string work: millions of names per folder
        for name in files:
            if name.startswith("."):
                continue
            kept = found if os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES else others
            kept.append(prefix + name)
    if unsupported is not None:
        unsupported += sorted(others)
    return sorted(found)


class FolderDataset(Dataset):
    """The images under ``root``: id = position in sorted order, file_name = relative path.

    Listing reads no image: each record's height and width are read from its header when first
    asked for, so a bad file only matters when it is loaded (see ``on_bad_image``).
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.image_root = Path(root)
        if not self.image_root.is_dir():
            raise FileNotFoundError(
                f"{self.image_root}: no such folder (dataset kind 'folder' expects a folder of "
                "images as dataset.root or --images)"
            )
        self._records: list[ImageRecord] | None = None

    def records(self) -> list[ImageRecord]:
        if self._records is None:
            names = list_images(self.image_root)
            if not names:
                raise ValueError(
                    f"{self.image_root}: no image files found (looked for "
                    f"{', '.join(sorted(IMAGE_SUFFIXES))} in any letter case, recursively)"
                )
            self.rejected = [
                UnsafeNameError(name, str(self.image_root), reason)
                for name in names
                if (reason := unsafe_reason(name)) is not None
            ]
            unsafe = {error.name for error in self.rejected}
            usable = [name for name in names if name not in unsafe]
            self._records = [
                ImageRecord(i, name, self.image_root / name) for i, name in enumerate(usable)
            ]
        return list(self._records)
