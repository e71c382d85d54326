"""Reference radius graph (the oracle every kernel is tested against): plain torch, float64.

Algorithm, per structure: wrap positions into the cell along periodic axes, enumerate every image
shift n with |n_a| <= ceil(cutoff / plane_spacing_a) + 1 on periodic axes (0 on the others), and test
every (i, j, n) triple. Complexity O(n^2 * images) time per structure, memory bounded by processing
targets in chunks. Meant for tests and small inputs, not speed.
"""
from __future__ import annotations

import torch

from fastcsi.graph.periodic import RadiusGraph, assemble, image_shifts, structure_meta, wrap_positions

# number of (i, j, image) triples evaluated at once; bounds the reference's memory (~100 MB)
_CHUNK_TRIPLES = 4_000_000


def structure_pairs_ref(pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float):
    """(source, target, shifts) of one structure, float64 CPU inputs, in the canonical edge order."""
    n = pos.shape[0]
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros((0, 3), dtype=torch.long))
    if n == 0:
        return empty
    wrapped, shift = wrap_positions(pos, cell, pbc)
    images = image_shifts(cell, pbc, cutoff)  # lexicographic: (target, source, image) order falls out of nonzero()
    image_vec = images.to(torch.float64) @ cell if pbc.any() else torch.zeros((images.shape[0], 3), dtype=torch.float64)
    zero_image = int((images == 0).all(1).nonzero()[0, 0])
    cutoff_sq = cutoff * cutoff
    chunk = max(1, _CHUNK_TRIPLES // max(1, n * images.shape[0]))
    sources, targets, shifts = [], [], []
    for start in range(0, n, chunk):
        rows = torch.arange(start, min(n, start + chunk))
        vec = wrapped[None, :, None, :] + image_vec[None, None, :, :] - wrapped[rows, None, None, :]
        within = (vec * vec).sum(-1) <= cutoff_sq  # (rows, n, images)
        within[torch.arange(rows.shape[0]), rows, zero_image] = False  # the atom itself
        t, s, m = within.nonzero(as_tuple=True)
        t = rows[t]
        targets.append(t)
        sources.append(s)
        # back to the caller's unwrapped positions: pos_j + n @ cell - pos_i
        shifts.append(images[m] + shift[s] - shift[t])
    return torch.cat(sources), torch.cat(targets), torch.cat(shifts)


@torch.no_grad()
def _search(batch, cutoff: float):
    cell, pbc, ptr = structure_meta(batch)
    pos = batch.pos.detach().to("cpu", torch.float64)
    sources, targets, shifts = [], [], []
    for b in range(cell.shape[0]):
        lo, hi = int(ptr[b]), int(ptr[b + 1])
        s, t, n = structure_pairs_ref(pos[lo:hi], cell[b], pbc[b], cutoff)
        sources.append(s + lo)
        targets.append(t + lo)
        shifts.append(n)
    if not sources:
        return torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros((0, 3), dtype=torch.long)
    return torch.cat(sources), torch.cat(targets), torch.cat(shifts)


def radius_graph_ref(batch, cutoff: float) -> RadiusGraph:
    """Reference :func:`fastcsi.graph.radius_graph` (no ``max_neighbors``; the dispatcher applies it)."""
    source, target, shifts = _search(batch, cutoff)
    return assemble(batch, source, target, shifts)
