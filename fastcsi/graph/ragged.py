"""Index helpers over ragged (segmented) int64 data, shared by the graph kernels and the model:
concatenated ranges, positions within sorted groups, and a CSR of edges by target atom.

Plain vectorised torch on any device (sorts, cumulative sums, repeat_interleave), no Python loop
over elements; O(n) each except :func:`csr_by_target` (one stable sort, O(E log E)).
"""
from __future__ import annotations

import torch

__all__ = ["ragged_range", "inner_index", "csr_by_target", "has_images", "quadruplet_triplets"]


def ragged_range(sizes: torch.Tensor, total: int | None = None) -> torch.Tensor:
    """Concatenated ranges: sizes [1, 4, 2] -> [0, 0 1 2 3, 0 1]. ``total``, when the caller already
    has ``sizes.sum()``, saves summing it again (a device sync on CUDA)."""
    sizes = sizes.long()
    if total is None:
        total = int(sizes.sum()) if sizes.numel() else 0
    if total == 0:
        return sizes.new_zeros(0)
    starts = torch.cumsum(sizes, 0) - sizes
    return torch.arange(total, device=sizes.device) - torch.repeat_interleave(starts, sizes, output_size=total)


def inner_index(sorted_index: torch.Tensor, dim_size: int) -> torch.Tensor:
    """Position of each element among the elements sharing its (sorted) index value:
    [0 0 0 1 1 2] -> [0 1 2 0 1 0]. Used to scatter neighbours into a zero-padded dense matrix."""
    if sorted_index.numel() and bool((sorted_index[1:] < sorted_index[:-1]).any()):
        raise ValueError("inner_index needs a sorted index")
    counts = torch.bincount(sorted_index, minlength=dim_size)
    return ragged_range(counts)


def csr_by_target(targets: torch.Tensor, sources: torch.Tensor, num_atoms: int):
    """Edge ids sorted by (target, source) (stable: equal pairs keep their edge order), the row
    pointer over target atoms and the row sizes (in-degrees): JMP's ``SparseTensor`` row layout."""
    key = targets.long() * max(num_atoms, 1) + sources.long()
    order = torch.sort(key, stable=True).indices
    counts = torch.bincount(targets, minlength=num_atoms)
    rowptr = torch.cumsum(counts, 0) - counts
    return order, rowptr, counts


def has_images(*graphs) -> bool:
    """Any non-zero cell offset? Without one (molecules) the same-image tests reduce to atom tests."""
    return any(bool(g["cell_offset"].any()) for g in graphs)


def quadruplet_triplets(mixed_triplets, main_graph: dict, qint_graph: dict, num_atoms: int):
    """The two triplet sets GemNet-OC's quadruplets d->b->a<-c are joined from, by one backend's
    ``mixed_triplets``: ``trip_in`` (d->b meeting qint b->a at b) and ``trip_out`` (qint b->a meeting
    c->a at a), and the CSR of ``trip_in`` over qint edges (it is grouped by its sorted output edge):
    returns (trip_in, trip_out, start, size) with trip_in's entries of qint edge q at start[q]:+size[q]."""
    trip_in = mixed_triplets(main_graph, qint_graph, num_atoms, to_outedge=True)
    trip_out = mixed_triplets(qint_graph, main_graph, num_atoms, to_outedge=False)
    per_qint = torch.bincount(trip_in["out"], minlength=qint_graph["edge_index"].shape[1])
    return trip_in, trip_out, torch.cumsum(per_qint, 0) - per_qint, per_qint
