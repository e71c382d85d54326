"""GemNet-OC index sets, the ``cuda`` backend of ``gemnet_indices``: vectorised torch on the tensors'
device (a declared exception to the Triton rule of the op families: the work is sorts, prefix sums
and gathers, which torch already runs as device kernels; no Python loop over atoms or edges). The
same functions run on CPU tensors, which is how the tests check them without a GPU.

Algorithm: a CSR of the input edges by (target, source) (``ragged.csr_by_target``, one stable sort),
then for every selecting edge its whole adjacency row (repeat_interleave + gathers). Triplets skip
the compaction pass: edge r is in its own row exactly once, at a known position, so the a-th OTHER
entry of the row is entry a + (a >= that position). Mixed triplets and quadruplets compact the
excluded pairs (same atom in the same image) with a boolean mask and number the survivors with
``inner_index``. Complexity O(E log E + T), T the output size, in about a dozen T-sized passes;
each output size is computed first and checked against the device's memory budget (half of it:
:func:`fastcsi._native.check_budget`), a FastCSIError instead of an out-of-memory error halfway.
Outputs equal the numba walks of ``gemnet_indices_cpu`` and the oracle ``gemnet_indices_ref`` bit
for bit (tests/graph/test_gemnet_indices.py).
"""
from __future__ import annotations

import torch

from fastcsi._native import check_budget
from fastcsi.graph.ragged import csr_by_target, has_images, inner_index, quadruplet_triplets, ragged_range

__all__ = ["triplets_cuda", "mixed_triplets_cuda", "quadruplets_cuda"]


# int64 arrays of the output size each pass keeps alive at once (sizes, gathers, masks), at most
_LIVE_ARRAYS = 8


def _check_size(what: str, count: int, device) -> None:
    check_budget(8.0 * _LIVE_ARRAYS * count, device, f"gemnet_indices: {count:.3g} {what}",
                 "atoms at the same position, or a cutoff or max_neighbors far too large?")


def _select_rows(order, rowptr, counts, rows: torch.Tensor):
    """For each r, the entries of adjacency row ``rows[r]``: returns (r repeated, entry)."""
    per = counts[rows]
    count = int(per.sum())
    _check_size("row entries", count, rows.device)
    # output_size: the count is known, so repeat_interleave need not sum ``per`` again (a device sync)
    out = torch.repeat_interleave(torch.arange(rows.numel(), device=rows.device), per, output_size=count)
    entry = order[torch.repeat_interleave(rowptr[rows], per, output_size=count) + ragged_range(per, count)]
    return out, entry


def triplets_cuda(graph: dict, num_atoms: int) -> dict:
    """See :func:`fastcsi.graph.gemnet_indices.triplets`."""
    idx_s, idx_t = graph["edge_index"]
    order, rowptr, counts = csr_by_target(idx_t, idx_s, num_atoms)
    num_edges = idx_t.numel()
    arange = torch.arange(num_edges, device=idx_t.device)
    position = torch.empty_like(order)
    position[order] = arange - rowptr[idx_t[order]]  # where each edge sits in its target's row
    per = counts[idx_t] - 1
    count = int(per.sum())
    _check_size("triplets", count, idx_t.device)
    out = torch.repeat_interleave(arange, per, output_size=count)
    agg = torch.arange(out.numel(), device=idx_t.device) - (torch.cumsum(per, 0) - per)[out]
    inn = order[rowptr[idx_t][out] + agg + (agg >= position[out]).long()]
    return {"in": inn, "out": out, "out_agg": agg}


def mixed_triplets_cuda(graph_in: dict, graph_out: dict, num_atoms: int, to_outedge: bool = False,
                        return_agg_idx: bool = False) -> dict:
    """See :func:`fastcsi.graph.gemnet_indices.mixed_triplets`."""
    idx_out_s, idx_out_t = graph_out["edge_index"]
    idx_in_s, idx_in_t = graph_in["edge_index"]
    order, rowptr, counts = csr_by_target(idx_in_t, idx_in_s, num_atoms)
    out, inn = _select_rows(order, rowptr, counts, idx_out_s if to_outedge else idx_out_t)
    atom_in = idx_in_s[inn]
    atom_out = idx_out_t[out] if to_outedge else idx_out_s[out]
    keep = atom_in != atom_out
    if has_images(graph_in, graph_out):
        sign = 1 if to_outedge else -1
        offset_sum = graph_out["cell_offset"][out] + sign * graph_in["cell_offset"][inn]
        keep |= (offset_sum != 0).any(dim=-1)
    idx = {"in": inn[keep], "out": out[keep]}
    if return_agg_idx:
        idx["out_agg"] = inner_index(idx["out"], idx_out_s.numel())
    return idx


def quadruplets_cuda(main_graph: dict, qint_graph: dict, num_atoms: int) -> dict:
    """See :func:`fastcsi.graph.gemnet_indices.quadruplets`."""
    idx_s = main_graph["edge_index"][0]
    trip_in, trip_out, start, per_qint = quadruplet_triplets(mixed_triplets_cuda, main_graph, qint_graph, num_atoms)
    per_trip_out = per_qint[trip_out["in"]]
    count = int(per_trip_out.sum())
    _check_size("quadruplets", count, idx_s.device)
    out = torch.repeat_interleave(trip_out["out"], per_trip_out, output_size=count)
    idx_inter = torch.repeat_interleave(trip_out["in"], per_trip_out, output_size=count)
    trip_out_to_quad = torch.repeat_interleave(
        torch.arange(trip_out["out"].numel(), device=idx_s.device), per_trip_out, output_size=count
    )
    trip_in_to_quad = (torch.repeat_interleave(start[trip_out["in"]], per_trip_out, output_size=count)
                       + ragged_range(per_trip_out, count))
    idx_in = trip_in["in"][trip_in_to_quad]

    keep = idx_s[out] != idx_s[idx_in]
    if has_images(main_graph, qint_graph):
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
