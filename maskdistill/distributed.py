"""Data-parallel training across processes (DDP), started by ``torchrun``.

``torchrun --nproc_per_node N -m maskdistill <stage> train ...`` starts N processes and tells each
its ``RANK``, ``LOCAL_RANK`` and ``WORLD_SIZE``; :func:`init` joins them into one process group
(NCCL on GPUs, gloo on the CPU, so that the same code is tested on a laptop). Without torchrun
the world is one process and nothing changes. ``maskdistill gpu-run --distributed`` starts
torchrun for a rule's GPU count (docs/workflow.md).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class World:
    """This process's place among the training processes."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """The process that writes checkpoints, logs and outputs."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This process's device: its own GPU under DDP on CUDA, else ``device``."""
        if device.type == "cuda" and self.size > 1:
            return torch.device("cuda", self.local_rank)
        return device

    def share(self, batch: list, what: str = "batch size") -> list:
        """This process's part of a global batch (contiguous, equal parts)."""
        if len(batch) % self.size:
            raise ValueError(f"{what} {len(batch)} is not a multiple of {self.size} processes")
        part = len(batch) // self.size
        return batch[self.rank * part : (self.rank + 1) * part]


def init(device: torch.device) -> World:
    """Join the torchrun process group when there is one; the one-process world otherwise."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(world.local_rank)
    return world


def wrap(model: nn.Module, world: World, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel when there are several processes."""
    if world.size == 1:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids)


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside a DDP wrapper (or the network itself)."""
    return model.module if isinstance(model, nn.parallel.DistributedDataParallel) else model


def barrier(world: World) -> None:
    """Wait for every process (nothing to wait for in a one-process world)."""
    if world.size > 1:
        dist.barrier()


def close(world: World) -> None:
    """Leave the process group."""
    if world.size > 1 and dist.is_initialized():
        dist.destroy_process_group()
