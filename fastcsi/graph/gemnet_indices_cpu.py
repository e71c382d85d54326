"""numba walks behind ``fastcsi.graph.gemnet_indices`` on CPU tensors (see that module's docstring).

Each walk visits the selecting edges in ascending order and, for each, its adjacency row in CSR order,
writing every kept element once into preallocated int64 arrays: O(T) time, one write per output
element, against a dozen passes over T-sized arrays for the torch formulation. Outputs equal
``gemnet_indices_ref`` bit for bit (same elements, same order).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def triplets(order, rowptr, counts, idx_t):
    """For each edge r (ascending), every OTHER edge of row idx_t[r]: (in, out = r, out_agg)."""
    num_edges = idx_t.shape[0]
    total = 0
    for r in range(num_edges):
        total += counts[idx_t[r]] - 1  # edge r is in its own row exactly once
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
def mixed_triplets(order, rowptr, counts, anchor, other, idx_in_s, offset_out, offset_in, sign, images):
    """For each output edge r, the input edges e of row anchor[r], except those whose source is the
    atom other[r] in the same image (offset_out[r] + sign * offset_in[e] == 0)."""
    num_out = anchor.shape[0]
    bound = 0
    for r in range(num_out):
        bound += counts[anchor[r]]
    inn = np.empty(bound, np.int64)
    out = np.empty(bound, np.int64)
    agg = np.empty(bound, np.int64)
    k = 0
    for r in range(num_out):
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
def quadruplets(trip_out_in, trip_out_out, start, per_qint, trip_in_in, idx_s, main_offset, qint_offset, images):
    """For each output triplet u (b->a, c->a; ascending, so c->a ascending), every input triplet p of
    its qint edge b->a (d->b), except d == c in the same image (main[d->b] + qint[b->a] - main[c->a]
    == 0). Returns (out = c->a, trip_out_to_quad = u, trip_in_to_quad = p, out_agg)."""
    num_trip = trip_out_in.shape[0]
    bound = 0
    for u in range(num_trip):
        bound += per_qint[trip_out_in[u]]
    out = np.empty(bound, np.int64)
    to_out = np.empty(bound, np.int64)
    to_in = np.empty(bound, np.int64)
    agg = np.empty(bound, np.int64)
    k = 0
    previous = -1
    a = 0
    for u in range(num_trip):
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
