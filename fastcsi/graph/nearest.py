"""Sub-selection of an existing radius graph: a smaller cutoff and/or each target's nearest
neighbours with fairchem/JMP's tie rule (how GemNet-OC takes its main, atom-edge and quadruplet
graphs from one :func:`fastcsi.graph.radius_graph`).

Not a kernel op with backends: one torch formulation (a rank of every edge within its target by
(distance, edge position), two stable sorts), whose ranks a numba walk computes on CPU tensors
(``nearest_cpu.py``: no global sorts, no wake-ups of torch's thread pool); both give the same ranks,
ties included. Complexity O(E log E) (torch) / O(E + sum deg log deg) (numba).
"""
from __future__ import annotations

import functools
import math

import torch

from fastcsi.errors import FastCSIError
from fastcsi.graph.periodic import RadiusGraph

__all__ = ["select_neighbors"]


def select_neighbors(graph: RadiusGraph, cutoff: float | None = None, max_neighbors: int | None = None,
                     strict: bool = False, degeneracy_tolerance: float = 0.01) -> RadiusGraph:
    """Sub-select edges of an existing graph: a smaller ``cutoff`` (inclusive) and/or per-target
    nearest neighbours, as GemNet-OC takes its main, atom-edge and quadruplet graphs from one graph.

    Tie rule for ``max_neighbors = k`` (that of fairchem/JMP ``get_max_neighbors_mask``), applied
    after the cutoff, per target with more than k candidate edges:

    * ``strict=False`` (fairchem's default): keep every edge with
      ``d <= d_(k+1) + degeneracy_tolerance`` where ``d_(k+1)`` is the (k+1)-th smallest distance of
      that target. Degenerate shells are never split, so a target may keep MORE than k edges (at
      least k+1: fcc Cu with k=10 keeps all 12 first-shell neighbours). This keeps e.g. bulk energies
      invariant to the choice of unit cell.
    * ``strict=True`` (``enforce_max_neighbors_strictly``): exactly the k nearest; among equal
      distances the earlier edge in the graph order (source j, then image shift) wins, so the choice
      is deterministic (fairchem's is arbitrary).

    ``max_neighbors <= 0`` or None keeps all edges (fairchem treats a non-positive threshold so).
    The edge order is preserved.
    """
    keep = torch.ones(graph.num_edges, dtype=torch.bool, device=graph.edge_index.device)
    distances = graph.distances.detach()
    if cutoff is not None:
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise FastCSIError(f"select_neighbors: cutoff must be a positive finite number of Å, got {cutoff!r}")
        keep &= distances <= cutoff
    if max_neighbors is not None and max_neighbors > 0 and graph.num_edges:
        keep &= _nearest_mask(graph.edge_index[1], distances, keep, int(max_neighbors), strict,
                              float(degeneracy_tolerance), graph.num_neighbors.shape[0])
    if bool(keep.all()):
        return graph if cutoff is None and max_neighbors is None else graph.subset(keep)
    return graph.subset(keep)


def _ranks_torch(target, d, num_atoms):
    """Rank of each edge within its target by (distance, edge position): two stable sorts."""
    num_edges = target.shape[0]
    order = torch.sort(d, stable=True).indices
    order = order[torch.sort(target[order], stable=True).indices]
    per_target = torch.bincount(target, minlength=num_atoms)
    start = torch.cumsum(per_target, 0) - per_target
    rank = torch.empty(num_edges, dtype=torch.long, device=target.device)
    rank[order] = torch.arange(num_edges, device=target.device) - start[target[order]]
    return rank


@functools.cache
def _rank_walk():
    """The numba rank walk, imported lazily (numba's import is slow, and CUDA-only users never need
    it); None without numba."""
    try:
        from fastcsi.graph.nearest_cpu import ranks_within_target
    except ImportError:  # pragma: no cover - numba missing
        return None
    return ranks_within_target


def _ranks(target, d, num_atoms):
    """:func:`_ranks_torch`, computed by a numba walk on CPU tensors (same ranks, see nearest_cpu)."""
    walk = _rank_walk() if target.device.type == "cpu" else None
    if walk is not None:
        return torch.from_numpy(walk(target.contiguous().numpy(), d.contiguous().numpy(), num_atoms))
    return _ranks_torch(target, d, num_atoms)


def _nearest_mask(target, distances, candidate, k, strict, tolerance, num_atoms):
    """Boolean mask over edges implementing the tie rule of :func:`select_neighbors`."""
    d = torch.where(candidate, distances, torch.full_like(distances, float("inf")))
    rank = _ranks(target, d, num_atoms)
    if strict:
        return candidate & (rank < k)
    # distance of the (k+1)-th nearest candidate of each target (inf when it has <= k)
    threshold = torch.full((num_atoms,), float("inf"), dtype=distances.dtype, device=distances.device)
    at_k = candidate & (rank == k)
    threshold[target[at_k]] = d[at_k] + tolerance
    return candidate & (d <= threshold[target])
