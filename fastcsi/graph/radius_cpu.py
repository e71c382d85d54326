"""CPU radius graph: the C++ cell-list kernel ``fastcsi._C.neighbors_batch`` (csrc/neighbors.cpp).

Algorithm: per structure, all pairs for small structures and a fractional-coordinate cell list
(O(n) per structure) otherwise; the whole batch in ONE call, OpenMP over structures (many small
molecules) or over targets (one large structure). Edges come out in the canonical order. This module
only converts the batch to float64 numpy buffers and wraps the results in torch tensors (zero copy).

Without autograd the kernel's own float64 vectors (rounded to the batch dtype) are returned; when
``batch.pos`` or ``batch.cell`` requires grad, vectors/distances are recomputed in torch from the
indices and shifts so gradients flow. Both agree to rounding of the batch dtype.
"""
from __future__ import annotations

import torch

from fastcsi._native import native
from fastcsi.graph.radius import RadiusGraph, edge_geometry, structure_meta


@torch.no_grad()
def search_cpu(batch, cutoff: float, num_threads: int = 0, single: bool = False):
    """Kernel-only pair search. Returns numpy (edge_index (2, E) int64, shifts (E, 3) int64,
    vectors (E, 3), distances (E,) (float32 if ``single`` else float64), in-degree (N,) int64)."""
    cell, pbc, ptr = structure_meta(batch)
    # non-periodic structures are searched in Cartesian space: an identity "cell" gives that
    cell[~pbc.any(1)] = torch.eye(3, dtype=torch.float64)
    pos = batch.pos.detach().to("cpu", torch.float64).contiguous()
    return native.neighbors_batch(
        pos.numpy(), cell.numpy(), pbc.numpy(), ptr.numpy(), float(cutoff), int(num_threads), bool(single)
    )


def radius_graph_cpu(batch, cutoff: float, num_threads: int = 0) -> RadiusGraph:
    """C++ :func:`fastcsi.graph.radius_graph` (no ``max_neighbors``; the dispatcher applies it)."""
    dtype = batch.pos.dtype
    edge_index, shifts, vectors, distances, degree = search_cpu(
        batch, cutoff, num_threads, single=dtype == torch.float32
    )
    device = batch.pos.device
    edge_index = torch.from_numpy(edge_index).to(device)
    shifts = torch.from_numpy(shifts).to(device)
    if batch.pos.requires_grad or batch.cell.requires_grad:
        vectors, distances = edge_geometry(batch, edge_index, shifts)
    else:
        vectors = torch.from_numpy(vectors).to(device, dtype)
        distances = torch.from_numpy(distances).to(device, dtype)
    return RadiusGraph(edge_index, shifts, distances, vectors, torch.from_numpy(degree).to(device))
