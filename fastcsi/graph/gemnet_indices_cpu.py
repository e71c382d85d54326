"""GemNet-OC index sets, the ``cpu`` backend of ``gemnet_indices``: numba walks over CPU tensors.

Algorithm: one stable sort of the input edges into a CSR by (target, source) (``ragged.csr_by_target``),
then each walk visits the selecting edges in ascending order and, for each, its adjacency row in CSR
order, testing the exclusions (same edge / same atom in the same image) inline and writing every
kept element once into preallocated int64 arrays (exact sizes for triplets; bounded, then trimmed,
for mixed triplets and quadruplets). O(E log E + T) time with one write per output element (T the
output size), against a dozen passes over T-sized arrays for the torch formulation of
``gemnet_indices_cuda``. Outputs equal ``gemnet_indices_ref`` bit for bit (same elements, same
order). Compiled on first use and cached on disk by numba.

Limits: output sizes grow as degree^2 (triplets) and degree^3 (quadruplets), so a structure with many
atoms at one spot asks for more than memory holds. Every count is int64 (no int32 anywhere), and
each walk's output size is computed first and checked against
:func:`fastcsi._native.check_budget` before anything is allocated (:class:`FastCSIError`).
"""
from __future__ import annotations

import numba
import numpy as np
import torch

from fastcsi._native import check_budget
from fastcsi.graph.ragged import csr_by_target, has_images, quadruplet_triplets

__all__ = ["triplets_cpu", "mixed_triplets_cpu", "quadruplets_cpu"]


@numba.njit(cache=True, nogil=True)
def _visits(sizes, rows):
    """sum_r sizes[rows[r]]: how many row entries a walk over the selected ``rows`` visits."""
    total = 0
    for r in range(rows.shape[0]):
        total += sizes[rows[r]]
    return total


@numba.njit(cache=True, nogil=True)
def _walk_triplets(order, rowptr, counts, idx_t):
    """For each edge r (ascending), every OTHER edge of row idx_t[r]: (in, out = r, out_agg)."""
    num_edges = idx_t.shape[0]
    total = _visits(counts, idx_t) - num_edges  # edge r is in its own row exactly once
    inn = np.empty(total, np.int64)
    out = np.empty(total, np.int64)
    agg = np.empty(total, np.int64)
    k = 0
    for r in range(num_edges):
        t = idx_t[r]
        a = 0
        for p in range(rowptr[t], rowptr[t] + counts[t]):
            e = order[p]
            if e != r:
                inn[k] = e
                out[k] = r
                agg[k] = a
                a += 1
                k += 1
    return inn, out, agg


@numba.njit(cache=True, nogil=True)
def _walk_mixed_triplets(order, rowptr, counts, anchor, other, idx_in_s, offset_out, offset_in, sign, images):
    """For each output edge r, the input edges e of row anchor[r], except those whose source is the
    atom other[r] in the same image (offset_out[r] + sign * offset_in[e] == 0)."""
    bound = _visits(counts, anchor)
    inn = np.empty(bound, np.int64)
    out = np.empty(bound, np.int64)
    agg = np.empty(bound, np.int64)
    k = 0
    for r in range(anchor.shape[0]):
        row = anchor[r]
        atom = other[r]
        a = 0
        for p in range(rowptr[row], rowptr[row] + counts[row]):
            e = order[p]
            keep = idx_in_s[e] != atom
            if not keep and images:
                for q in range(3):
                    if offset_out[r, q] + sign * offset_in[e, q] != 0:
                        keep = True
            if keep:
                inn[k] = e
                out[k] = r
                agg[k] = a
                a += 1
                k += 1
    return inn[:k], out[:k], agg[:k]  # views: a copy would touch every page again


@numba.njit(cache=True, nogil=True)
def _walk_quadruplets(trip_out_in, trip_out_out, start, per_qint, trip_in_in, idx_s, main_offset, qint_offset, images):
    """For each output triplet u (b->a, c->a; ascending, so c->a ascending), every input triplet p of
    its qint edge b->a (d->b), except d == c in the same image (main[d->b] + qint[b->a] - main[c->a]
    == 0). Returns (out = c->a, trip_out_to_quad = u, trip_in_to_quad = p, out_agg)."""
    bound = _visits(per_qint, trip_out_in)
    out = np.empty(bound, np.int64)
    to_out = np.empty(bound, np.int64)
    to_in = np.empty(bound, np.int64)
    agg = np.empty(bound, np.int64)
    k = 0
    previous = -1
    a = 0
    for u in range(trip_out_in.shape[0]):
        q = trip_out_in[u]
        c = trip_out_out[u]
        if c != previous:  # out is sorted: a new output edge restarts its running index
            previous = c
            a = 0
        source_c = idx_s[c]
        for p in range(start[q], start[q] + per_qint[q]):
            d = trip_in_in[p]
            keep = source_c != idx_s[d]
            if not keep and images:
                for axis in range(3):
                    if main_offset[d, axis] + qint_offset[q, axis] - main_offset[c, axis] != 0:
                        keep = True
            if keep:
                out[k] = c
                to_out[k] = u
                to_in[k] = p
                agg[k] = a
                a += 1
                k += 1
    return out[:k], to_out[:k], to_in[:k], agg[:k]


def _np(tensor: torch.Tensor):
    return tensor.detach().contiguous().numpy()


def _check_size(what: str, count: int, arrays: int) -> None:
    """Refuse a walk whose ``count`` elements of ``arrays`` int64 arrays exceed the memory budget."""
    check_budget(8.0 * arrays * count, "cpu", f"gemnet_indices: {count:.3g} {what}",
                 "atoms at the same position, or a cutoff or max_neighbors far too large?")


def triplets_cpu(graph: dict, num_atoms: int) -> dict:
    """See :func:`fastcsi.graph.gemnet_indices.triplets`."""
    idx_s, idx_t = graph["edge_index"]
    order, rowptr, counts = csr_by_target(idx_t, idx_s, num_atoms)
    counts_np, idx_t_np = _np(counts), _np(idx_t)
    _check_size("triplets", int(_visits(counts_np, idx_t_np)) - idx_t_np.shape[0], 3)
    inn, out, agg = _walk_triplets(_np(order), _np(rowptr), counts_np, idx_t_np)
    return {"in": torch.from_numpy(inn), "out": torch.from_numpy(out), "out_agg": torch.from_numpy(agg)}


def mixed_triplets_cpu(graph_in: dict, graph_out: dict, num_atoms: int, to_outedge: bool = False,
                       return_agg_idx: bool = False) -> dict:
    """See :func:`fastcsi.graph.gemnet_indices.mixed_triplets`."""
    idx_out_s, idx_out_t = graph_out["edge_index"]
    idx_in_s, idx_in_t = graph_in["edge_index"]
    order, rowptr, counts = csr_by_target(idx_in_t, idx_in_s, num_atoms)
    anchor = idx_out_s if to_outedge else idx_out_t
    other = idx_out_t if to_outedge else idx_out_s
    _check_size("mixed triplets", int(_visits(_np(counts), _np(anchor))), 3)
    inn, out, agg = _walk_mixed_triplets(
        _np(order), _np(rowptr), _np(counts), _np(anchor), _np(other), _np(idx_in_s),
        _np(graph_out["cell_offset"]), _np(graph_in["cell_offset"]), 1 if to_outedge else -1,
        has_images(graph_in, graph_out))
    idx = {"in": torch.from_numpy(inn), "out": torch.from_numpy(out)}
    if return_agg_idx:
        idx["out_agg"] = torch.from_numpy(agg)
    return idx


def quadruplets_cpu(main_graph: dict, qint_graph: dict, num_atoms: int) -> dict:
    """See :func:`fastcsi.graph.gemnet_indices.quadruplets`."""
    idx_s = main_graph["edge_index"][0]
    trip_in, trip_out, start, per_qint = quadruplet_triplets(mixed_triplets_cpu, main_graph, qint_graph, num_atoms)
    _check_size("quadruplets", int(_visits(_np(per_qint), _np(trip_out["in"]))), 4)
    out, to_out, to_in, agg = _walk_quadruplets(
        _np(trip_out["in"]), _np(trip_out["out"]), _np(start), _np(per_qint), _np(trip_in["in"]), _np(idx_s),
        _np(main_graph["cell_offset"]), _np(qint_graph["cell_offset"]), has_images(main_graph, qint_graph))
    return {
        "triplet_in": trip_in,
        "triplet_out": trip_out,
        "out": torch.from_numpy(out),
        "trip_out_to_quad": torch.from_numpy(to_out),
        "trip_in_to_quad": torch.from_numpy(to_in),
        "out_agg": torch.from_numpy(agg),
    }
