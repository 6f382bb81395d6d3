"""Data parallelism inside one job: `torchrun --nproc_per_node G -m eam.cli finetune ...` (or
`accelerate launch`, which sets the same variables). Each process computes the gradients of its
shards of the global batch; gradients, rewards and function-evaluation counts are summed across
processes; only rank 0 writes. Without those variables everything runs in one process."""
from __future__ import annotations

import os

import torch
import torch.distributed as dist


class Group:
    """The process group of this run (world size 1 when not launched by torchrun)."""

    def __init__(self):
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.started = False
        if self.world > 1 and not dist.is_initialized():
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group(backend)
            self.started = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def device(self, name: str) -> torch.device:
        """The device of this process: "auto" is its own GPU (cuda:LOCAL_RANK) where there are GPUs."""
        if name == "auto":
            return torch.device(f"cuda:{self.local_rank}" if torch.cuda.is_available() else "cpu")
        return check_device(torch.device(name))

    def sum_(self, tensors: list[torch.Tensor]):
        """In-place sum over processes (one flattened all-reduce)."""
        if self.world == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1) for t in tensors])
        dist.all_reduce(flat)
        i = 0
        for t in tensors:
            t.copy_(flat[i:i + t.numel()].view_as(t))
            i += t.numel()

    def summed(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        """A CPU tensor summed over processes (through `device`, which NCCL needs to be a GPU)."""
        if self.world == 1:
            return t
        on = t.to(device)
        self.sum_([on])
        return on.cpu()

    def gathered(self, t: torch.Tensor) -> torch.Tensor:
        """The concatenation of every process's `t` (same shape on each), in rank order."""
        if self.world == 1:
            return t
        parts = [torch.empty_like(t) for _ in range(self.world)]
        dist.all_gather(parts, t.contiguous())
        return torch.cat(parts)

    def sum_grads(self, params):
        grads = [p.grad for p in params if p.grad is not None]
        self.sum_(grads)

    def barrier(self):
        if self.world > 1:
            dist.barrier()

    def close(self):
        if self.started:
            dist.destroy_process_group()


def check_device(device: torch.device) -> torch.device:
    """A device this machine has: a CUDA device asked for where torch sees none is a one-line error."""
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} asked for, but torch sees no CUDA GPU here; use --device cpu (or auto)")
    return device
