"""CPU radius graph: the C++ cell-list kernel ``fastcsi._C.radius_batch`` (csrc/radius.cpp).

Algorithm: per structure, all pairs for small structures and a fractional-coordinate cell list
(O(n) per structure) otherwise, in two passes (count/search, then every edge written once straight
into the final arrays); the whole batch in ONE call, threads over structures (many small molecules)
or over targets (one large structure). Edges come out in the canonical order. This module only
converts the batch to float64 numpy buffers and wraps the results in torch tensors (zero copy).

Host-side preparation is plain numpy on purpose: on a busy machine each small torch CPU op can wake
torch's intra-op thread pool and cost milliseconds, more than the search itself for a batch of
molecules. Threads default to ``torch.get_num_threads()``.

Without autograd the kernel's own float64 vectors (rounded to the batch dtype) are returned; when
``batch.pos`` or ``batch.cell`` requires grad, vectors/distances are recomputed in torch from the
indices and shifts so gradients flow. Both agree to rounding of the batch dtype.
"""
from __future__ import annotations

import numpy as np
import torch

from fastcsi._native import input_errors, memory_budget_bytes, native
from fastcsi.errors import FastCSIError
from fastcsi.graph.periodic import RadiusGraph, complete_cell, edge_geometry


def _numpy(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().numpy()


def kernel_inputs(batch):
    """float64 positions (N, 3), completed float64 cells (B, 3, 3), bool pbc (B, 3) and int64 atom
    offsets (B + 1,) as numpy arrays; the checks and cell completion of
    :func:`fastcsi.graph.periodic.structure_meta`, with an identity cell for non-periodic structures
    (they are searched in Cartesian space)."""
    cell = _numpy(batch.cell).reshape(-1, 3, 3).astype(np.float64)  # always a fresh copy
    pbc = np.ascontiguousarray(_numpy(batch.pbc).reshape(-1, 3), dtype=bool)
    natoms = _numpy(batch.natoms).astype(np.int64, copy=False)
    periodic = pbc.any(1)
    cell[~periodic] = np.eye(3)
    # only periodic structures need a look (a batch of 10k molecules must not loop in Python)
    for b in np.flatnonzero(periodic).tolist():
        if not np.isfinite(cell[b]).all():
            raise FastCSIError(f"radius_graph: structure {b} of the batch is periodic but its cell has NaN or inf")
        cell[b] = complete_cell(torch.from_numpy(cell[b]), torch.from_numpy(pbc[b]), b).numpy()
    ptr = np.zeros(natoms.shape[0] + 1, dtype=np.int64)
    np.cumsum(natoms, out=ptr[1:])
    pos = np.ascontiguousarray(_numpy(batch.pos), dtype=np.float64)
    return pos, cell, pbc, ptr


def search_cpu(batch, cutoff: float, num_threads: int = 0, single: bool = False, max_bytes: int | None = None):
    """Kernel-only pair search. Returns numpy (edge_index (2, E) int64, shifts (E, 3) int64,
    vectors (E, 3), distances (E,) (float32 if ``single`` else float64), in-degree (N,) int64).

    ``num_threads`` 0 means ``torch.get_num_threads()``; the kernel then uses at most one thread per
    ~2^20 estimated candidate tests, about atoms * 512 / 2^20 (one per ~2048 atoms of a dense
    structure), so a small batch runs on one thread whatever is asked (:func:`threads_used` says how
    many). ``max_bytes`` (default :func:`fastcsi._native.memory_budget_bytes`) bounds the edges' memory
    (~64-80 bytes per edge): a batch beyond it, or beyond the input limits of
    :mod:`fastcsi.graph.periodic`, raises :class:`FastCSIError` before the allocation."""
    pos, cell, pbc, ptr = kernel_inputs(batch)
    threads = int(num_threads) if num_threads else torch.get_num_threads()
    budget = memory_budget_bytes() if max_bytes is None else int(max_bytes)
    with input_errors("radius_graph"):
        return native.radius_batch(pos, cell, pbc, ptr, float(cutoff), threads, bool(single), budget)


def threads_used(natoms, num_threads: int = 0) -> int:
    """How many threads :func:`search_cpu` runs for structures of ``natoms`` atoms (the kernel's cap
    of about atoms * 512 / 2^20 threads applied to ``num_threads``, 0 = ``torch.get_num_threads()``)."""
    ptr = np.zeros(len(natoms) + 1, dtype=np.int64)
    np.cumsum(np.asarray(natoms, dtype=np.int64), out=ptr[1:])
    return int(native.radius_threads(ptr, int(num_threads) if num_threads else torch.get_num_threads()))


def radius_graph_cpu(batch, cutoff: float, num_threads: int = 0) -> RadiusGraph:
    """C++ :func:`fastcsi.graph.radius_graph` (no ``max_neighbors``; the dispatcher applies it).
    Threads: ``num_threads`` (0: torch's), capped by the kernel at about atoms * 512 / 2^20 (see
    :func:`search_cpu`, :func:`threads_used`)."""
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
