"""Run a command on GPU(s) of its own (workstation pinning through lock files).

Usage: ``maskdistill gpu-run --gpus 1 --lock-dir results/.gpu-locks -- maskdistill discover ...``.
Sets CUDA_VISIBLE_DEVICES to free device indices, runs the command, releases the devices and
exits with the command's status. Under SLURM, with CUDA_VISIBLE_DEVICES already set, with
--gpus 0 or on a machine without GPUs the command runs unchanged. MASKDISTILL_GPUS fakes the
device count; MASKDISTILL_GPU_LOCK_DIR overrides --lock-dir (one folder for every workflow on
the machine). With --distributed and --gpus above 1, a ``maskdistill`` command runs as one
data-parallel process per GPU through torchrun.
"""

from __future__ import annotations

import argparse
import os
import sys

from maskdistill.gpu import LOCK_DIR_ENV, run_pinned


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the gpu-run options."""
    parser.add_argument("--gpus", type=int, default=1, help="devices the command needs (0: none)")
    parser.add_argument(
        "--lock-dir", required=True, help="folder of the per-device lock files (gpu-<i>.lock)"
    )
    parser.add_argument(
        "--distributed",
        action="store_true",
        help="with several GPUs: one DDP process per GPU (torchrun) for a maskdistill command",
    )
    parser.add_argument("cmd", nargs=argparse.REMAINDER, help="-- then the command to run")


def run(args: argparse.Namespace) -> None:
    """Run the command pinned to its own devices; exit with its status."""
    if args.gpus < 0:
        raise ValueError(f"--gpus {args.gpus}: must be 0 or more")
    command = args.cmd[1:] if args.cmd[:1] == ["--"] else args.cmd
    lock_dir = os.environ.get(LOCK_DIR_ENV) or args.lock_dir
    sys.exit(run_pinned(command, args.gpus, lock_dir, distributed=args.distributed))
