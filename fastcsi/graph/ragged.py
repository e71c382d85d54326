"""Index helpers over ragged (segmented) int64 data, shared by the graph kernels and the model:
concatenated ranges, positions within sorted groups, and a CSR of edges by target atom.

Plain vectorised torch on any device (sorts, cumulative sums, repeat_interleave), no Python loop
over elements; O(n) each except :func:`csr_by_target` (one stable sort, O(E log E)).
"""
from __future__ import annotations

import torch

__all__ = ["ragged_range", "inner_index", "csr_by_target", "has_images"]


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
