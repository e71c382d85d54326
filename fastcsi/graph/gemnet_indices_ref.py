"""Reference GemNet-OC index construction: the plain-torch formulation the faster paths in
``gemnet_indices`` must reproduce BIT FOR BIT (the oracle of tests/graph/test_gemnet_indices_fast.py
and the "before" rows of bench/neighbors.py).

Algorithm: a CSR of the input edges by (target, source) (one stable sort), then for every selecting
edge its whole adjacency row (repeat_interleave + gathers), then boolean compaction of the excluded
pairs and an ``inner_index`` over the result. O(E log E + T) but about a dozen passes over T-sized
int64 arrays (T = output size), which is what made it ~3 ms per 1000 edges.
"""
from __future__ import annotations

import torch

from fastcsi.graph.gemnet_indices import _csr_by_target, _has_images, inner_index, ragged_range

__all__ = ["triplets_ref", "mixed_triplets_ref", "quadruplets_ref"]


def _select_rows(order, rowptr, counts, rows: torch.Tensor):
    """For each r, the entries of adjacency row ``rows[r]``: returns (r repeated, entry)."""
    per = counts[rows]
    out = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), per)
    entry = order[torch.repeat_interleave(rowptr[rows], per) + ragged_range(per)]
    return out, entry


def triplets_ref(graph: dict, num_atoms: int) -> dict:
    """All input edges b->a for each output edge c->a (b == c allowed only for distinct images,
    i.e. distinct edges). Returns ``in`` (T,), ``out`` (T,) (sorted) and ``out_agg`` (T,)."""
    idx_s, idx_t = graph["edge_index"]
    order, rowptr, counts = _csr_by_target(idx_t, idx_s, num_atoms)
    out, inn = _select_rows(order, rowptr, counts, idx_t)
    keep = inn != out
    out, inn = out[keep], inn[keep]
    return {"in": inn, "out": out, "out_agg": inner_index(out, idx_s.numel())}


def mixed_triplets_ref(graph_in: dict, graph_out: dict, num_atoms: int, to_outedge: bool = False,
                   return_agg_idx: bool = False) -> dict:
    """Input edges of ``graph_in`` meeting each output edge of ``graph_out`` at its target atom
    (or at its source when ``to_outedge``), dropping pairs that are the same atom in the same image.
    ``out`` is sorted (output edge order)."""
    idx_out_s, idx_out_t = graph_out["edge_index"]
    idx_in_s, idx_in_t = graph_in["edge_index"]
    order, rowptr, counts = _csr_by_target(idx_in_t, idx_in_s, num_atoms)
    out, inn = _select_rows(order, rowptr, counts, idx_out_s if to_outedge else idx_out_t)
    atom_in = idx_in_s[inn]
    atom_out = idx_out_t[out] if to_outedge else idx_out_s[out]
    keep = atom_in != atom_out
    if _has_images(graph_in, graph_out):
        sign = 1 if to_outedge else -1
        offset_sum = graph_out["cell_offset"][out] + sign * graph_in["cell_offset"][inn]
        keep |= (offset_sum != 0).any(dim=-1)
    idx = {"in": inn[keep], "out": out[keep]}
    if return_agg_idx:
        idx["out_agg"] = inner_index(idx["out"], idx_out_s.numel())
    return idx


def quadruplets_ref(main_graph: dict, qint_graph: dict, num_atoms: int) -> dict:
    """Torch formulation of ``gemnet_indices.quadruplets`` (same arguments and outputs)."""
    idx_s = main_graph["edge_index"][0]
    num_qint = qint_graph["edge_index"].shape[1]
    trip_in = mixed_triplets_ref(main_graph, qint_graph, num_atoms, to_outedge=True)
    trip_out = mixed_triplets_ref(qint_graph, main_graph, num_atoms, to_outedge=False)

    # trip_in is grouped by its (sorted) output qint edge: a CSR over qint edges.
    per_qint = torch.bincount(trip_in["out"], minlength=num_qint)
    start = torch.cumsum(per_qint, 0) - per_qint
    per_trip_out = per_qint[trip_out["in"]]
    out = torch.repeat_interleave(trip_out["out"], per_trip_out)
    idx_inter = torch.repeat_interleave(trip_out["in"], per_trip_out)
    trip_out_to_quad = torch.repeat_interleave(
        torch.arange(trip_out["out"].numel(), device=idx_s.device), per_trip_out
    )
    trip_in_to_quad = torch.repeat_interleave(start[trip_out["in"]], per_trip_out) + ragged_range(per_trip_out)
    idx_in = trip_in["in"][trip_in_to_quad]

    keep = idx_s[out] != idx_s[idx_in]
    if _has_images(main_graph, qint_graph):
        offset_cd = (
            main_graph["cell_offset"][idx_in]
            + qint_graph["cell_offset"][idx_inter]
            - main_graph["cell_offset"][out]
        )
        keep |= (offset_cd != 0).any(dim=-1)
    out = out[keep]
    return {
        "triplet_in": trip_in,
        "triplet_out": trip_out,
        "out": out,
        "trip_out_to_quad": trip_out_to_quad[keep],
        "trip_in_to_quad": trip_in_to_quad[keep],
        "out_agg": inner_index(out, idx_s.numel()),
    }
