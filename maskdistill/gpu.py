"""Workstation GPU pinning: give each GPU job its own card(s) through lock files.

Snakemake's ``--resources gpu=N`` (profiles/workstation) caps how many GPUs the running jobs
request in total, but it does not say WHICH card a job gets. ``maskdistill gpu-run`` closes
that gap: before it starts a GPU job's command it takes an exclusive ``flock`` on one lock
file per device (``<lock_dir>/gpu-<index>.lock``), exports ``CUDA_VISIBLE_DEVICES`` with the
indices it holds, runs the command and releases the locks. Two shard jobs therefore never
share a card, and a crashed job cannot leave a stale lock (the kernel drops ``flock`` locks
with the process).

Nothing is pinned when a scheduler already did it (SLURM sets ``SLURM_JOB_ID`` and
``CUDA_VISIBLE_DEVICES``), when ``CUDA_VISIBLE_DEVICES`` is set by the user, when the job asks
for 0 GPUs, or when the machine has no GPU (the stage then runs on the CPU).

The device count comes from ``MASKDISTILL_GPUS`` when set (tests fake multi-GPU machines on
the CPU with it), else from ``nvidia-smi -L``.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

log = logging.getLogger(__name__)

GPU_COUNT_ENV = "MASKDISTILL_GPUS"
LOCK_DIR_ENV = "MASKDISTILL_GPU_LOCK_DIR"


def device_count(environ: Mapping[str, str] | None = None) -> int:
    """Number of GPUs on this machine: ``$MASKDISTILL_GPUS`` if set, else ``nvidia-smi -L``.

    Returns 0 when ``nvidia-smi`` is missing or fails (no NVIDIA driver).
    """
    environ = os.environ if environ is None else environ
    if environ.get(GPU_COUNT_ENV, "") != "":
        value = environ[GPU_COUNT_ENV]
        if not value.isdigit():
            raise ValueError(f"${GPU_COUNT_ENV}={value!r}: expected a number of GPUs (0, 1, ...)")
        return int(value)
    if shutil.which("nvidia-smi") is None:
        return 0
    result = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        return 0
    return sum(line.startswith("GPU ") for line in result.stdout.splitlines())


def already_pinned(environ: Mapping[str, str]) -> bool:
    """True when a scheduler (SLURM) or the user already chose the visible devices."""
    return "SLURM_JOB_ID" in environ or "CUDA_VISIBLE_DEVICES" in environ


def _try_lock(path: Path) -> int | None:
    """An open descriptor holding an exclusive flock on ``path``, or None if it is held."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


@contextlib.contextmanager
def acquire(
    count: int, total: int, lock_dir: str | os.PathLike, poll_s: float = 0.5
) -> Iterator[list[int]]:
    """Hold ``count`` distinct device indices out of ``range(total)`` for the ``with`` block.

    Takes the lowest free indices; waits (polling every ``poll_s`` seconds) while fewer than
    ``count`` are free, which happens only when more GPU jobs run than ``--resources gpu=N``
    allows, e.g. two workflows sharing one lock folder.

    Args:
        count: devices wanted, 1 <= count <= total.
        total: devices on the machine.
        lock_dir: folder of the ``gpu-<index>.lock`` files (created when missing).
        poll_s: seconds between attempts while waiting.

    Yields:
        The held indices, ascending.
    """
    if not 1 <= count <= total:
        raise ValueError(f"cannot pin {count} GPU(s) on a machine with {total} GPU(s)")
    lock_dir = Path(lock_dir)
    lock_dir.mkdir(parents=True, exist_ok=True)
    held: dict[int, int] = {}
    try:
        while True:
            for index in range(total):
                if index not in held and len(held) < count:
                    fd = _try_lock(lock_dir / f"gpu-{index}.lock")
                    if fd is not None:
                        held[index] = fd
            if len(held) == count:
                break
            time.sleep(poll_s)
        yield sorted(held)
    finally:
        for fd in held.values():
            os.close(fd)  # closing the descriptor releases the flock


def torchrun_command(command: Sequence[str], processes: int) -> list[str]:
    """``maskdistill ARGS`` as ``python -m torch.distributed.run`` of ``processes`` processes.

    One process per GPU, on this node (``--standalone``: a free rendezvous port of its own).
    """
    if not command or Path(command[0]).name != "maskdistill":
        raise ValueError(f"gpu-run --distributed runs maskdistill commands, not {command[:1]}")
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone"]
    return [*launcher, f"--nproc_per_node={processes}", "-m", "maskdistill", *command[1:]]


def run_pinned(
    command: Sequence[str],
    gpus: int,
    lock_dir: str | os.PathLike,
    environ: Mapping[str, str] | None = None,
    distributed: bool = False,
) -> int:
    """Run ``command`` on ``gpus`` devices of its own; return its exit status.

    ``CUDA_VISIBLE_DEVICES`` is set to the held indices (comma-separated) unless nothing needs
    pinning (see the module docstring); the command's environment is otherwise unchanged.
    With ``distributed`` and more than one GPU the command runs as one DDP process per GPU
    (:func:`torchrun_command`).
    """
    if not command:
        raise ValueError("gpu-run: no command given (usage: maskdistill gpu-run -- CMD ...)")
    if distributed and gpus > 1:
        command = torchrun_command(command, gpus)
    env = dict(os.environ if environ is None else environ)
    total = device_count(env)
    if gpus == 0 or total == 0 or already_pinned(env):
        log.info(
            "not pinning: %d GPU(s) asked, %d on this machine, scheduler-pinned: %s",
            gpus,
            total,
            already_pinned(env),
        )
        return subprocess.run(list(command), env=env, check=False).returncode
    with acquire(gpus, total, lock_dir) as indices:
        env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i) for i in indices)
        log.info("pinned to CUDA_VISIBLE_DEVICES=%s", env["CUDA_VISIBLE_DEVICES"])
        return subprocess.run(list(command), env=env, check=False).returncode
