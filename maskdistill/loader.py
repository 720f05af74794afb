"""Batched image loading for the stages that run a network over a dataset's images.

- Images are decoded and prepared (resized, normalised, ...) in DataLoader worker processes by a
  ``prepare(image, record)`` function of the stage; it must be picklable (a module-level
  function or a ``functools.partial`` of one).
- Images are grouped into batches by a key predicted from the image header's (H, W) (e.g. the
  padded input shape), in a fixed order (key, then file name) that does not depend on the batch
  size or the number of workers, so a stage's outputs come out in the same order whatever they
  are.
- After decoding, batches are regrouped by the key of what ``prepare`` actually returned: a
  header that disagrees with the pixels only costs speed.
- Bad images raise :class:`~maskdistill.images.BadImageError` or, with ``on_bad_image="skip"``,
  are appended to a skip list as (file_name, reason).
- Memory is bounded by one batch: batches are yielded as soon as they are decoded.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from maskdistill.data.base import ImageRecord
from maskdistill.images import BadImageError, load_or_skip
from maskdistill.progress import Progress
from maskdistill.runtime import loader_workers

log = logging.getLogger(__name__)


def image_tensor(image: np.ndarray) -> torch.Tensor:
    """(H, W, 3) uint8 RGB -> (3, H, W) float32 in [0, 1]."""
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected an (H, W, 3) uint8 image, got {image.shape} {image.dtype}")
    return torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float().div_(255.0)


@dataclass
class Loaded:
    """One image after ``prepare``: its record and what ``prepare`` returned, or why it failed."""

    record: ImageRecord
    value: Any = None
    image_size: tuple[int, int] = (0, 0)  # (H, W) of the decoded image
    skipped: tuple[str, str] | None = None
    error: BadImageError | None = None


class PreparedImages(torch.utils.data.Dataset):
    """Decodes records and applies ``prepare`` to each (runs in DataLoader workers)."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        prepare: Callable[[Any, ImageRecord], Any],
        on_bad_image: str,
    ) -> None:
        self.records = list(records)
        self.prepare = prepare
        self.on_bad_image = on_bad_image

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> Loaded:
        record = self.records[index]
        skipped: list[tuple[str, str]] = []
        try:
            image = load_or_skip(record.path, self.on_bad_image, skipped, name=record.file_name)
        except BadImageError as error:  # re-raised by the main process, not the worker
            return Loaded(record, error=error)
        if image is None:
            return Loaded(record, skipped=skipped[0])
        return Loaded(record, self.prepare(image, record), image.shape[:2])


def bucket_batches(
    keys: Sequence[Hashable], names: Sequence[str], batch_size: int
) -> list[list[int]]:
    """Batches of indices whose ``keys`` are equal, ordered by (key, name).

    The concatenated batches are the same sequence for every ``batch_size``.
    """
    if batch_size < 1:
        raise ValueError(f"batch size: expected >= 1, got {batch_size}")
    order = sorted(range(len(keys)), key=lambda i: (keys[i], names[i]))
    buckets: dict[Hashable, list[int]] = defaultdict(list)
    for i in order:
        buckets[keys[i]].append(i)
    return [
        bucket[start : start + batch_size]
        for bucket in buckets.values()
        for start in range(0, len(bucket), batch_size)
    ]


def readable_headers(
    records: Sequence[ImageRecord],
    predict_key: Callable[[tuple[int, int]], Hashable],
    on_bad_image: str,
    skipped: list[tuple[str, str]],
) -> tuple[list[ImageRecord], list[Hashable]]:
    """Records whose header is readable and their predicted batch keys."""
    usable, keys = [], []
    for record in records:
        try:
            size = record.size
        except BadImageError as error:
            if on_bad_image == "error":
                raise
            log.warning("skipping %s", error)
            skipped.append((record.file_name, error.reason))
            continue
        usable.append(record)
        keys.append(predict_key(size))
    return usable, keys


@dataclass
class PredictionRun:
    """How a prediction job runs over its images (only ``precision`` can change a result).

    Attributes:
        device: where the network runs.
        batch_size: images per forward pass (at most; a batch holds images of one input shape).
        workers: DataLoader worker processes decoding images (0: in this process).
        precision: "fp32", or "fp16"/"bf16" autocast.
        on_bad_image: "error" raises BadImageError; "skip" appends (file_name, reason) to
            ``skipped`` and goes on.
        skipped: the images skipped so far, appended to.
        progress: show progress (a bar on a terminal, log lines otherwise).
    """

    device: torch.device
    batch_size: int = 8
    workers: int = 0
    precision: str = "fp32"
    on_bad_image: str = "error"
    skipped: list[tuple[str, str]] = field(default_factory=list)
    progress: bool = True


def image_batches(
    records: Sequence[ImageRecord],
    *,
    prepare: Callable[[Any, ImageRecord], Any],
    predict_key: Callable[[tuple[int, int]], Hashable],
    actual_key: Callable[[Any], Hashable],
    run: PredictionRun,
    desc: str = "images",
) -> Iterator[list[Loaded]]:
    """Prepared images in batches of one key, in (key, file name) order.

    Args:
        records: the images.
        prepare: ``prepare(image (H, W, 3) uint8, record) -> value``, run in the workers.
        predict_key: batch key from an image's header (H, W), for grouping before decoding.
        actual_key: batch key of a prepared value, for regrouping after decoding.
        run: batch size, workers, what to do with a bad image, progress.
        desc: the progress line's label.
    """
    on_bad_image, skipped = run.on_bad_image, run.skipped
    usable, keys = readable_headers(records, predict_key, on_bad_image, skipped)
    batches = bucket_batches(keys, [r.file_name for r in usable], run.batch_size)
    loader = DataLoader(
        PreparedImages(usable, prepare, on_bad_image),
        batch_sampler=batches,
        num_workers=loader_workers(run.workers),
        collate_fn=list,
    )
    with Progress(len(records), desc, "images", enabled=run.progress) as bar:
        bar.update(len(records) - len(usable))
        for items in loader:
            groups: dict[Hashable, list[Loaded]] = defaultdict(list)
            for item in items:
                if item.error is not None:
                    raise item.error
                if item.skipped is not None:
                    skipped.append(item.skipped)
                    continue
                groups[actual_key(item.value)].append(item)
            yield from groups.values()
            bar.update(len(items))
