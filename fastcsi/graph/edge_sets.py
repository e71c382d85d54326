"""Edge-set bookkeeping of GemNet-OC's graphs (JMP's conventions, see ``gemnet_indices``): keeping
a subset of edges, the quadruplet graph's tag filter, and the symmetric main graph with each edge's
counter-edge.

Not kernel ops: one vectorised torch formulation for every device (masks, one stable sort, gathers);
O(E log E) for :func:`symmetrize_edges`, O(E) otherwise.
"""
from __future__ import annotations

import torch

__all__ = ["select_edges", "tag_filter_edges", "symmetrize_edges"]


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
