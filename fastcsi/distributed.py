"""The process group that torchrun describes, shared by ``select`` (stats) and ``train`` (gradients).

``torchrun --nproc_per_node=K [--nnodes ...] -m fastcsi <command>`` sets RANK / WORLD_SIZE /
LOCAL_RANK / MASTER_ADDR; :func:`init_distributed` joins that group (gloo on CPU, nccl when the run
uses CUDA) and returns a :class:`DistContext`; without those variables it is a single process and
every collective is a no-op. Work is split by :meth:`DistContext.shard`: strided, so every rank gets
a similar mix of classes and shares differ in size by at most one.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

from fastcsi.errors import FastCSIError


@dataclass
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # we initialised the process group, so we tear it down

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, items):
        """This rank's strided share of ``items`` (an array or a sequence)."""
        return items[self.rank :: self.world_size] if self.enabled else items

    def barrier(self):
        if self.enabled:
            import torch.distributed as dist

            dist.barrier()

    def broadcast(self, obj):
        """``obj`` as rank 0 has it (rank 0's decisions, e.g. what is cached, bind every rank)."""
        if not self.enabled:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def all_gather_object(self, obj) -> list:
        """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in a single process."""
        if not self.enabled:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world_size
        dist.all_gather_object(out, obj)
        return out

    def all_reduce_sum(self, tensor):
        """Sum ``tensor`` over ranks in place (and return it)."""
        if self.enabled:
            import torch.distributed as dist

            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def sum_ints(self, *values: int) -> tuple:
        if not self.enabled:
            return tuple(int(v) for v in values)
        import torch

        t = torch.tensor([int(v) for v in values], dtype=torch.int64, device=self._device())
        self.all_reduce_sum(t)
        return tuple(int(v) for v in t.cpu().tolist())

    def raise_if_any_failed(self, error: FastCSIError | None):
        """Collective: if any rank failed with a user error, every rank raises it (no deadlock of
        healthy ranks waiting in a collective the failed rank never reaches)."""
        if not self.enabled:
            if error is not None:
                raise error
            return
        import torch.distributed as dist

        messages = [None] * self.world_size
        dist.all_gather_object(messages, None if error is None else str(error))
        for message in messages:
            if message is not None:
                raise FastCSIError(message)

    def _device(self):
        import torch
        import torch.distributed as dist

        return torch.device("cuda", self.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")

    def close(self):
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group torchrun describes in the environment; a single process otherwise.

    gloo on CPU, nccl when the run uses CUDA. A group the caller already initialised is reused.
    """
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return DistContext(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)))
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext()
    if not dist.is_available():
        raise FastCSIError("WORLD_SIZE > 1 but this torch build has no torch.distributed support")
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    device = str(device)
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if use_cuda:
        torch.cuda.set_device(local_rank)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
    return DistContext(rank, world_size, local_rank, owns_group=True)
