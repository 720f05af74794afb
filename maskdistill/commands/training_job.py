"""What every training command shares: its resume options, its start and its end.

A training job (``distill train``, ``segment train``, ``segment probe``) checkpoints into
``--resume-dir`` and resumes from there after a kill; at the end the main process writes the
network (``--out``) and its metrics log (``--metrics``) and, unless ``--keep-checkpoints``,
removes what it wrote into the resume folder (the checkpoints are no longer needed; a VOC12
stage-5 run's are about 350 MB).
"""

from __future__ import annotations

import argparse
import logging
import shutil
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from maskdistill.distributed import World
    from maskdistill.training.loop import TrainingRun

log = logging.getLogger(__name__)


def start_training(
    args: argparse.Namespace, run_settings: Mapping[str, Any], world: World, device: torch.device
) -> TrainingRun:
    """The job's :class:`~maskdistill.training.loop.TrainingRun`: its resume files in --resume-dir
    (a checkpoint of other settings is removed there by the main process; the other processes
    wait for it), the command's run options."""
    from maskdistill.distributed import barrier
    from maskdistill.training.checkpoints import resume_files
    from maskdistill.training.loop import TrainingRun

    checkpoint, metrics = resume_files(args.resume_dir, run_settings, world.main)
    barrier(world)
    return TrainingRun(
        run_settings=run_settings,
        checkpoint=checkpoint,
        checkpoint_every=args.checkpoint_every,
        resume=not args.no_resume,
        metrics_log=metrics,
        device=device,
        world=world,
        workers=args.workers,
        progress=args.progress,
    )


def finish_training(
    args: argparse.Namespace,
    save: Callable[[Path], None],
    metrics: Path | None,
) -> None:
    """The end of a training job on the main process: ``save(--out)``, the metrics log copied
    to ``--metrics`` (None: ``save`` wrote it), the resume folder's files removed unless
    ``--keep-checkpoints``."""
    from maskdistill.training.checkpoints import remove_resume_files

    save(Path(args.out))
    if metrics is not None:
        shutil.copyfile(metrics, args.metrics)
    if not args.keep_checkpoints:
        remove_resume_files(args.resume_dir)
    log.info("wrote %s and %s", args.out, args.metrics)


def weights_saver(
    model_state: Mapping[str, Any], run_settings: Mapping[str, Any], extra: Mapping[str, Any]
) -> Callable[[Path], None]:
    """``save`` for :func:`finish_training`: a model file of ``model_state``."""
    from maskdistill.models.model_file import save_state

    return lambda path: save_state(path, model_state, run_settings, extra)
