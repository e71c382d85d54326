"""numba rank of every edge within its target by (distance, edge position), for
:func:`fastcsi.graph.nearest.select_neighbors` on CPU tensors.

Algorithm: a stable counting sort of the edges by target (O(E + N)), then a stable merge sort of each
target's distances (O(sum deg log deg)). The same ranks as the torch formulation (a stable sort by
distance, then a stable sort by target) without its two global sorts and scatters, and without
waking torch's thread pool (milliseconds per op on a busy machine).
"""
from __future__ import annotations

import numba
import numpy as np


@numba.njit(cache=True, nogil=True)
def ranks_within_target(target, distances, num_atoms):
    num_edges = target.shape[0]
    start = np.zeros(num_atoms + 1, np.int64)
    for e in range(num_edges):
        start[target[e] + 1] += 1
    for a in range(num_atoms):
        start[a + 1] += start[a]
    order = np.empty(num_edges, np.int64)
    fill = start[:-1].copy()
    for e in range(num_edges):
        t = target[e]
        order[fill[t]] = e
        fill[t] += 1
    rank = np.empty(num_edges, np.int64)
    for a in range(num_atoms):
        lo = start[a]
        hi = start[a + 1]
        if hi == lo:
            continue
        segment = order[lo:hi]
        by_distance = np.argsort(distances[segment], kind="mergesort")  # stable: ties keep edge order
        for r in range(hi - lo):
            rank[segment[by_distance[r]]] = r
    return rank
