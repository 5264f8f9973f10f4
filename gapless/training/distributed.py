"""The distributed context of a ``torchrun`` job: rank, world size, barriers, flags.

One machine: ``torchrun --nproc-per-node G -m gapless train CONFIG``. Several machines run
the same command on each, with ``--nnodes N --node-rank R --master-addr HOST0 --master-port
PORT`` (R = 0 on HOST0, which holds the rendezvous; ``tests/test_multinode.py`` runs two such
nodes on one machine). The run directory must be one shared path on every machine: rank 0
prepares and writes it, the other ranks read the prepared data and, on resume, the checkpoint
from it. NCCL on CUDA, gloo on CPU; an update group is ``accum x world`` micro-batches,
however many machines hold the ranks.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

__all__ = ["Distributed", "shutdown", "training_device"]


class Distributed:
    """Rank / world size from torchrun's environment; a no-op for one process."""

    def __init__(self, device: torch.device):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.device_type = device.type  # NCCL only moves CUDA tensors
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank when ``flag`` is true on some rank."""
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device_type)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())

    def broadcast_flag(self, flag: bool) -> bool:
        if self.world == 1:
            return flag
        t = torch.tensor([int(flag)], device=self.device_type)  # cuda: the current device
        dist.broadcast(t, 0)
        return bool(t.item())


def shutdown() -> None:
    """End the process group a training started, so gloo's threads do not outlive the
    interpreter (which aborts the process at exit)."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def training_device(device: torch.device, ddp: Distributed) -> torch.device:
    """Under DDP on CUDA, each process takes the GPU of its local rank."""
    if device.type == "cuda" and ddp.world > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device
