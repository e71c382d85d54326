"""Reference radius graph (the oracle every kernel is tested against): plain torch, float64.

Algorithm, per structure: wrap positions into the cell along periodic axes, enumerate every image
shift n with |n_a| <= ceil(cutoff / plane_spacing_a) + 1 on periodic axes (0 on the others), and test
every (i, j, n) triple. Complexity O(n^2 * images) time per structure, memory bounded by processing
targets in chunks. Meant for tests and small inputs, not speed.
"""
from __future__ import annotations

import torch

from fastcsi._native import memory_budget_bytes
from fastcsi.errors import FastCSIError
from fastcsi.graph.periodic import RadiusGraph, assemble, image_shifts, structure_meta, wrap_positions

# number of (i, j, image) triples evaluated at once; bounds the reference's memory (~100 MB)
_CHUNK_TRIPLES = 4_000_000
# what one edge costs here until the graph is returned: indices and shift (40 bytes) kept per row
# block, concatenated (x2), then float64 vectors and distances (32)
_BYTES_PER_EDGE = 112


def structure_pairs_ref(pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, cutoff: float,
                        index: int | None = None, edge_budget: list | None = None):
    """(source, target, shifts) of one structure, float64 CPU inputs, in the canonical edge order.
    ``index`` names the structure in errors; ``edge_budget`` ([edges still allowed]) is decremented."""
    n = pos.shape[0]
    empty = (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), torch.zeros((0, 3), dtype=torch.long))
    if n == 0:
        return empty
    wrapped, shift = wrap_positions(pos, cell, pbc, index)
    images = image_shifts(cell, pbc, cutoff, index)  # lexicographic: (target, source, image) order falls out of nonzero()
    image_vec = images.to(torch.float64) @ cell if pbc.any() else torch.zeros((images.shape[0], 3), dtype=torch.float64)
    zero_image = int((images == 0).all(1).nonzero()[0, 0])
    cutoff_sq = cutoff * cutoff
    num_images = images.shape[0]
    # (rows x sources x images) triples at a time; images are split too when one row is over the chunk
    rows_per = max(1, _CHUNK_TRIPLES // max(1, n * num_images))
    images_per = max(1, min(num_images, _CHUNK_TRIPLES // max(1, n)))
    sources, targets, shifts = [], [], []
    for start in range(0, n, rows_per):
        rows = torch.arange(start, min(n, start + rows_per))
        found = []  # (t, s, m) of this row block, over image blocks
        for m0 in range(0, num_images, images_per):
            m1 = min(num_images, m0 + images_per)
            vec = wrapped[None, :, None, :] + image_vec[None, None, m0:m1, :] - wrapped[rows, None, None, :]
            within = (vec * vec).sum(-1) <= cutoff_sq  # (rows, n, images of the block)
            if m0 <= zero_image < m1:
                within[torch.arange(rows.shape[0]), rows, zero_image - m0] = False  # the atom itself
            t, s, m = within.nonzero(as_tuple=True)
            found.append((t, s, m + m0))
        t, s, m = (torch.cat(parts) for parts in zip(*found))
        if len(found) > 1:  # back into (target, source, image) order
            order = torch.argsort((t * n + s) * num_images + m)
            t, s, m = t[order], s[order], m[order]
        if edge_budget is not None:
            edge_budget[0] -= int(t.shape[0])
            if edge_budget[0] < 0:
                name = "a structure" if index is None else f"structure {index} of the batch"
                raise FastCSIError(f"radius_graph: {name} takes the batch past the reference's edge budget: "
                                   "atoms at the same position, or a cutoff far too large?")
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
    edge_budget = [memory_budget_bytes() // _BYTES_PER_EDGE]
    for b in range(cell.shape[0]):
        lo, hi = int(ptr[b]), int(ptr[b + 1])
        s, t, n = structure_pairs_ref(pos[lo:hi], cell[b], pbc[b], cutoff, b, edge_budget)
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
