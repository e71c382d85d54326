"""GemNet-OC index sets: symmetric main-graph bookkeeping, triplets, mixed triplets, quadruplets.

Conventions follow JMP's GemNet-OC so that a JMP checkpoint gives the same numbers:

* An edge set is a dict with ``edge_index`` (2, E) (row 0 = source s, row 1 = target t),
  ``cell_offset`` (E, 3) (image shift of the source), ``distance`` (E,), ``vector`` (E, 3)
  (unit vector from source to target) and ``num_neighbors`` (B,) (edges per structure; the
  edges of one structure must be contiguous).
* "Adjacency row selection" (JMP's ``SparseTensor`` row indexing ``adj[idx]``) is reproduced with a
  CSR built from a stable sort of the edges by (target, source): for every selecting index ``r`` it
  yields the edges whose target is ``idx[r]`` in (source, original position) order.

Algorithm and complexity. Every builder is one stable sort of the input edges into a CSR by target
(O(E log E)), then a walk over the selected adjacency rows producing the output (O(T), T = output
size: triplets sum_t deg(t)^2, quadruplets ~ E * k_qint * deg). Two implementations of the walk:

* CPU tensors: numba loops (``_walk_*``), one pass per output array, every output element written
  once, the exclusions (same edge / same atom in the same image) tested inline; output sizes are exact
  (triplets) or bounded then trimmed (mixed triplets, quadruplets). Compiled on first use (cached on
  disk by numba).
* Other devices (CUDA): vectorised torch (sorts, cumulative sums, repeat_interleave, gathers, no
  Python loop over atoms or edges): for triplets a form without the compaction pass
  (``_triplets_torch``), otherwise the formulation kept in ``gemnet_indices_ref``.

Both give bit-for-bit the outputs of ``gemnet_indices_ref`` (tests/graph/test_gemnet_indices_fast.py).
"""
from __future__ import annotations

import functools

import torch

__all__ = [
    "ragged_range",
    "inner_index",
    "symmetrize_edges",
    "select_edges",
    "tag_filter_edges",
    "triplets",
    "mixed_triplets",
    "quadruplets",
]


def ragged_range(sizes: torch.Tensor) -> torch.Tensor:
    """Concatenated ranges: sizes [1, 4, 2] -> [0, 0 1 2 3, 0 1]."""
    sizes = sizes.long()
    total = int(sizes.sum()) if sizes.numel() else 0
    if total == 0:
        return sizes.new_zeros(0)
    starts = torch.cumsum(sizes, 0) - sizes
    return torch.arange(total, device=sizes.device) - torch.repeat_interleave(starts, sizes)


def inner_index(sorted_index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Position of each element among the elements sharing its (sorted) index value:
    [0 0 0 1 1 2] -> [0 1 2 0 1 0]. Used to scatter neighbours into a zero-padded dense matrix."""
    if sorted_index.numel() and bool((sorted_index[1:] < sorted_index[:-1]).any()):
        raise ValueError("inner_index needs a sorted index")
    counts = torch.bincount(sorted_index, minlength=dim_size)
    return ragged_range(counts)


def _csr_by_target(targets: torch.Tensor, sources: torch.Tensor, num_atoms: int):
    """Edge ids sorted by (target, source) (stable) and the row pointer over target atoms."""
    key = targets.long() * max(num_atoms, 1) + sources.long()
    order = torch.sort(key, stable=True).indices
    counts = torch.bincount(targets, minlength=num_atoms)
    rowptr = torch.cumsum(counts, 0) - counts
    return order, rowptr, counts


def _edges_per_structure(edge_index: torch.Tensor, atom_batch: torch.Tensor, num_structures: int):
    if edge_index.shape[1] == 0:
        return edge_index.new_zeros(num_structures)
    return torch.bincount(atom_batch[edge_index[1]], minlength=num_structures)


def _has_images(*graphs) -> bool:
    """Any non-zero cell offset? Without one (molecules) the same-image tests reduce to atom tests."""
    return any(bool(g["cell_offset"].any()) for g in graphs)


def select_edges(graph: dict, mask: torch.Tensor) -> dict:
    """Keep the edges where ``mask`` is True (num_neighbors recounted by the caller if needed)."""
    out = dict(graph)
    out["edge_index"] = graph["edge_index"][:, mask]
    for key in ("cell_offset", "distance", "vector"):
        out[key] = graph[key][mask]
    if "num_neighbors" in graph and "edge_batch" in graph:
        out["edge_batch"] = graph["edge_batch"][mask]
        out["num_neighbors"] = torch.bincount(out["edge_batch"], minlength=graph["num_neighbors"].numel())
    return out


def tag_filter_edges(graph: dict, tags: torch.Tensor, keep_tags) -> dict:
    """Keep an edge when its source or its target carries one of ``keep_tags`` (the quadruplet
    graph's rule; molecules and bulk have every tag = 2, so they keep all edges)."""
    keep = torch.as_tensor(list(keep_tags), dtype=torch.long, device=tags.device)
    ok = torch.isin(tags, keep)
    mask = ok[graph["edge_index"][0]] | ok[graph["edge_index"][1]]
    return select_edges(graph, mask)


def symmetrize_edges(graph: dict, num_atoms: int) -> tuple[dict, torch.Tensor]:
    """Keep directed edges with source < target (and, between an atom and its own image, the one
    whose cell offset is lexicographically negative) and append their reverses, so every edge has
    its counter-edge; within each structure the kept edges come first, then their reverses.

    Returns the new graph and ``id_swap`` (E',): the index of each edge's counter-edge.
    """
    edge_index, offset = graph["edge_index"], graph["cell_offset"]
    num_structures = graph["num_neighbors"].numel()
    mask_sep = edge_index[0] < edge_index[1]
    cell_earlier = (
        (offset[:, 0] < 0)
        | ((offset[:, 0] == 0) & (offset[:, 1] < 0))
        | ((offset[:, 0] == 0) & (offset[:, 1] == 0) & (offset[:, 2] < 0))
    )
    mask = mask_sep | ((edge_index[0] == edge_index[1]) & cell_earlier)

    directed = edge_index[:, mask]
    num_directed = directed.shape[1]
    edge_batch = torch.repeat_interleave(
        torch.arange(num_structures, device=edge_index.device), graph["num_neighbors"]
    )[mask]
    # Stable sort by (structure, half): per structure its directed edges, then their reverses.
    key = torch.cat([edge_batch * 2, edge_batch * 2 + 1])
    perm = torch.sort(key, stable=True).indices
    inv_perm = torch.empty_like(perm)
    inv_perm[perm] = torch.arange(perm.numel(), device=perm.device)
    counter_in_cat = (perm + num_directed) % max(2 * num_directed, 1)
    id_swap = inv_perm[counter_in_cat]

    def both(t, negate):
        d = t[mask]
        return torch.cat([d, -d if negate else d])[perm]

    new = dict(graph)
    new["edge_index"] = torch.cat([directed, directed.flip(0)], dim=1)[:, perm]
    new["cell_offset"] = both(offset, True)
    new["distance"] = both(graph["distance"], False)
    new["vector"] = both(graph["vector"], True)
    new["edge_batch"] = torch.cat([edge_batch, edge_batch])[perm]
    new["num_neighbors"] = 2 * torch.bincount(edge_batch, minlength=num_structures)
    return new, id_swap


def triplets(graph: dict, num_atoms: int) -> dict:
    """All input edges b->a for each output edge c->a (b == c allowed only for distinct images,
    i.e. distinct edges). Returns ``in`` (T,), ``out`` (T,) (sorted) and ``out_agg`` (T,)."""
    idx_s, idx_t = graph["edge_index"]
    order, rowptr, counts = _csr_by_target(idx_t, idx_s, num_atoms)
    if not _use_numba(idx_t):
        return _triplets_torch(order, rowptr, counts, idx_t)
    inn, out, agg = _kernels().triplets(_np(order), _np(rowptr), _np(counts), _np(idx_t))
    return {"in": torch.from_numpy(inn), "out": torch.from_numpy(out), "out_agg": torch.from_numpy(agg)}


def _triplets_torch(order, rowptr, counts, idx_t) -> dict:
    """Vectorised triplets without a compaction pass (other devices): edge r is in its own row
    exactly once, at a known position, so the a-th OTHER entry of the row is entry a + (a >= that
    position). Five T-sized passes instead of the reference's dozen."""
    num_edges = idx_t.numel()
    arange = torch.arange(num_edges, device=idx_t.device)
    position = torch.empty_like(order)
    position[order] = arange - rowptr[idx_t[order]]  # where each edge sits in its target's row
    per = counts[idx_t] - 1
    out = torch.repeat_interleave(arange, per)
    agg = torch.arange(out.numel(), device=idx_t.device) - (torch.cumsum(per, 0) - per)[out]
    inn = order[rowptr[idx_t][out] + agg + (agg >= position[out]).long()]
    return {"in": inn, "out": out, "out_agg": agg}


def mixed_triplets(graph_in: dict, graph_out: dict, num_atoms: int, to_outedge: bool = False,
                   return_agg_idx: bool = False) -> dict:
    """Input edges of ``graph_in`` meeting each output edge of ``graph_out`` at its target atom
    (or at its source when ``to_outedge``), dropping pairs that are the same atom in the same image.
    ``out`` is sorted (output edge order)."""
    idx_out_s, idx_out_t = graph_out["edge_index"]
    idx_in_s, idx_in_t = graph_in["edge_index"]
    if not _use_numba(idx_in_t):
        from fastcsi.graph.gemnet_indices_ref import mixed_triplets_ref

        return mixed_triplets_ref(graph_in, graph_out, num_atoms, to_outedge, return_agg_idx)
    order, rowptr, counts = _csr_by_target(idx_in_t, idx_in_s, num_atoms)
    anchor = idx_out_s if to_outedge else idx_out_t
    other = idx_out_t if to_outedge else idx_out_s
    images = _has_images(graph_in, graph_out)
    inn, out, agg = _kernels().mixed_triplets(
        _np(order), _np(rowptr), _np(counts), _np(anchor), _np(other), _np(idx_in_s),
        _np(graph_out["cell_offset"]), _np(graph_in["cell_offset"]), 1 if to_outedge else -1, images)
    idx = {"in": torch.from_numpy(inn), "out": torch.from_numpy(out)}
    if return_agg_idx:
        idx["out_agg"] = torch.from_numpy(agg)
    return idx


def quadruplets(main_graph: dict, qint_graph: dict, num_atoms: int) -> dict:
    """Quadruplets d->b->a<-c: main edge c->a, quadruplet-graph edge b->a, main edge d->b, with
    c != d unless they are different images.

    Returns ``triplet_in`` {in: d->b, out: b->a}, ``triplet_out`` {in: b->a, out: c->a},
    ``out`` (Q,) (c->a, sorted), ``trip_in_to_quad``, ``trip_out_to_quad`` and ``out_agg`` (Q,).
    """
    idx_s = main_graph["edge_index"][0]
    if not _use_numba(idx_s):
        from fastcsi.graph.gemnet_indices_ref import quadruplets_ref

        return quadruplets_ref(main_graph, qint_graph, num_atoms)
    num_qint = qint_graph["edge_index"].shape[1]
    trip_in = mixed_triplets(main_graph, qint_graph, num_atoms, to_outedge=True)
    trip_out = mixed_triplets(qint_graph, main_graph, num_atoms, to_outedge=False)
    # trip_in is grouped by its (sorted) output qint edge: a CSR over qint edges
    per_qint = torch.bincount(trip_in["out"], minlength=num_qint)
    start = torch.cumsum(per_qint, 0) - per_qint
    out, to_out, to_in, agg = _kernels().quadruplets(
        _np(trip_out["in"]), _np(trip_out["out"]), _np(start), _np(per_qint), _np(trip_in["in"]), _np(idx_s),
        _np(main_graph["cell_offset"]), _np(qint_graph["cell_offset"]), _has_images(main_graph, qint_graph))
    return {
        "triplet_in": trip_in,
        "triplet_out": trip_out,
        "out": torch.from_numpy(out),
        "trip_out_to_quad": torch.from_numpy(to_out),
        "trip_in_to_quad": torch.from_numpy(to_in),
        "out_agg": torch.from_numpy(agg),
    }


# ---------------------------------------------------------------------------------------------------
# CPU walks (numba). Each reproduces, element for element, the order of the torch formulation:
# selecting edges in ascending order, each adjacency row in CSR (source, position) order.

def _use_numba(index: torch.Tensor) -> bool:
    return index.device.type == "cpu" and _kernels() is not None


def _np(tensor: torch.Tensor):
    return tensor.detach().contiguous().numpy()


@functools.cache
def _kernels():
    """The compiled walks (a namespace), or None without numba. Imported lazily: numba adds ~0.5 s
    to the first import, and CUDA-only users never need it."""
    try:
        from fastcsi.graph import _gemnet_walks as walks
    except ImportError:  # pragma: no cover - numba missing: the torch formulation runs
        return None
    return walks
