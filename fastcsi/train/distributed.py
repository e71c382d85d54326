"""Data parallelism that keeps the budget exact (torchrun / ``torch.distributed``, NCCL or gloo).

Every rank walks the *same* seeded global order of the N training structures; global batch ``k``
is ``order[k*B:(k+1)*B]`` and rank ``r`` takes every ``world``-th structure of it. Nothing is padded
or dropped (``DistributedSampler`` repeats samples to even out ranks, which changes the budget),
so an epoch is exactly N structures and ceil(N / B) optimizer steps whatever the world size.

Gradients are summed with one flattened all-reduce per step and the loss is normalised by the
*global* structure / atom counts, so a step equals the single-process step on the whole global
batch (up to floating-point summation order). A rank whose share of the last batch is empty still
joins the all-reduce with zero gradients. This is why the loop does its own reduction instead of
wrapping the model in ``DistributedDataParallel`` (which needs every rank to run a backward of a
non-empty batch and averages per-rank means).
"""
from __future__ import annotations

import torch

from fastcsi.distributed import DistContext, init_distributed  # noqa: F401  (re-exported)


def rank_share(global_batch, ctx: DistContext):
    """This rank's part of one global batch (strided, so sizes differ by at most one)."""
    return ctx.shard(global_batch)


def all_reduce_gradients(parameters, ctx: DistContext):
    """Sum gradients over ranks in one flattened buffer; missing grads count as zeros."""
    if not ctx.enabled:
        return
    params = [p for p in parameters if p.requires_grad]
    if not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    ctx.all_reduce_sum(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad = flat[offset:offset + n].view_as(p).clone()
        offset += n
