"""Reference GemNet-OC index sets (the oracle of tests/graph/test_gemnet_indices.py): a plain dense
enumeration, sharing no code with the ``cpu`` / ``cuda`` backends it checks.

Algorithm: for every (selecting item r, candidate c) pair a boolean says whether c belongs to r's
output (same anchor atom, not the excluded same-atom-same-image pair); ``nonzero`` of that matrix in
row-major order gives the outputs in the documented order (r ascending; candidates of one r by
(source atom, edge position), JMP's adjacency-row order), and each output's running number within its
group is its position minus the group's first position. Complexity O(R * C) time (R selecting items,
C candidates), memory bounded by evaluating the matrix in row blocks. For tests and small inputs.
"""
from __future__ import annotations

import torch

__all__ = ["triplets_ref", "mixed_triplets_ref", "quadruplets_ref"]

# matrix entries evaluated at once (bounds the oracle's memory to ~100 MB of temporaries)
_BLOCK_ENTRIES = 1 << 22


def _pairs(num_rows: int, num_cols: int, member, device):
    """(row, col) of every True ``member(rows)`` entry, a (len(rows), num_cols) bool matrix for a
    block of rows, in row-major order."""
    block = max(1, _BLOCK_ENTRIES // max(num_cols, 1))
    rows, cols = [torch.zeros(0, dtype=torch.long, device=device)], [torch.zeros(0, dtype=torch.long, device=device)]
    for start in range(0, num_rows, block):
        r, c = member(torch.arange(start, min(num_rows, start + block), device=device)).nonzero(as_tuple=True)
        rows.append(r + start)
        cols.append(c)
    return torch.cat(rows), torch.cat(cols)


def _running_number(group: torch.Tensor, num_groups: int) -> torch.Tensor:
    """0, 1, 2, ... within each run of equal values of a sorted ``group``."""
    counts = torch.bincount(group, minlength=num_groups)
    first = torch.cumsum(counts, 0) - counts
    return torch.arange(group.numel(), device=group.device) - first[group]


def _row_order(sources: torch.Tensor) -> torch.Tensor:
    """Candidate edges by (source atom, edge position): the order within an adjacency row."""
    return torch.sort(sources, stable=True).indices


def _differ(offset_a: torch.Tensor, offset_b: torch.Tensor) -> torch.Tensor:
    """(R, C) bool: offset_a[r] != offset_b[c] on some axis."""
    return (offset_a[:, None, :] != offset_b[None, :, :]).any(-1)


def triplets_ref(graph: dict, num_atoms: int) -> dict:
    """See :func:`fastcsi.graph.gemnet_indices.triplets`."""
    idx_s, idx_t = graph["edge_index"]
    by_row = _row_order(idx_s)

    def member(r):
        return (idx_t[by_row][None, :] == idx_t[r][:, None]) & (by_row[None, :] != r[:, None])

    out, k = _pairs(idx_t.numel(), idx_t.numel(), member, idx_t.device)
    return {"in": by_row[k], "out": out, "out_agg": _running_number(out, idx_t.numel())}


def mixed_triplets_ref(graph_in: dict, graph_out: dict, num_atoms: int, to_outedge: bool = False,
                       return_agg_idx: bool = False) -> dict:
    """See :func:`fastcsi.graph.gemnet_indices.mixed_triplets`."""
    idx_out_s, idx_out_t = graph_out["edge_index"]
    idx_in_s, idx_in_t = graph_in["edge_index"]
    anchor = idx_out_s if to_outedge else idx_out_t  # where the input edge must end
    other = idx_out_t if to_outedge else idx_out_s  # the atom the input edge must not start from ...
    by_row = _row_order(idx_in_s)
    # ... in the same image: offset_out + sign * offset_in == 0
    sign = 1 if to_outedge else -1
    in_offset = -sign * graph_in["cell_offset"][by_row]

    def member(r):
        same_anchor = idx_in_t[by_row][None, :] == anchor[r][:, None]
        other_atom = idx_in_s[by_row][None, :] != other[r][:, None]
        return same_anchor & (other_atom | _differ(graph_out["cell_offset"][r], in_offset))

    out, k = _pairs(anchor.numel(), by_row.numel(), member, anchor.device)
    idx = {"in": by_row[k], "out": out}
    if return_agg_idx:
        idx["out_agg"] = _running_number(out, anchor.numel())
    return idx


def quadruplets_ref(main_graph: dict, qint_graph: dict, num_atoms: int) -> dict:
    """See :func:`fastcsi.graph.gemnet_indices.quadruplets`."""
    idx_s = main_graph["edge_index"][0]
    main_offset, qint_offset = main_graph["cell_offset"], qint_graph["cell_offset"]
    trip_in = mixed_triplets_ref(main_graph, qint_graph, num_atoms, to_outedge=True)  # d->b, b->a
    trip_out = mixed_triplets_ref(qint_graph, main_graph, num_atoms, to_outedge=False)  # b->a, c->a
    db, ba_in = trip_in["in"], trip_in["out"]
    ba_out, ca = trip_out["in"], trip_out["out"]

    def member(u):
        # the input triplets of the same qint edge b->a, except d == c in the same image
        # (offset(d->b) + offset(b->a) - offset(c->a) == 0)
        same_qint = ba_in[None, :] == ba_out[u][:, None]
        other_atom = idx_s[db][None, :] != idx_s[ca[u]][:, None]
        return same_qint & (other_atom | _differ(main_offset[ca[u]] - qint_offset[ba_out[u]], main_offset[db]))

    to_out, to_in = _pairs(ca.numel(), db.numel(), member, idx_s.device)
    out = ca[to_out]
    return {
        "triplet_in": trip_in,
        "triplet_out": trip_out,
        "out": out,
        "trip_out_to_quad": to_out,
        "trip_in_to_quad": to_in,
        "out_agg": _running_number(out, idx_s.numel()),
    }
