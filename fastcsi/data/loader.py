"""Stream a dataset into :class:`Batch` objects with bounded memory.

Batches are planned from indices (and ``n_atoms_per_structure`` when ``max_atoms`` is set), then
read one batch at a time; with ``num_workers > 0`` a torch DataLoader reads them in worker
processes, each opening its own file handles (datasets drop handles when pickled).
"""
from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np
import torch

from fastcsi.data.batch import Batch, collate
from fastcsi.errors import FastCSIError


def plan_batches(indices: Sequence[int], batch_size: int, n_atoms: np.ndarray | None = None,
                 max_atoms: int | None = None) -> list:
    """Split ``indices`` (in order) into batches of at most ``batch_size`` structures and, when
    ``max_atoms`` is given, at most ``max_atoms`` atoms (a larger structure goes alone)."""
    if batch_size < 1:
        raise FastCSIError(f"batch_size must be at least 1, got {batch_size}")
    batches, current, atoms = [], [], 0
    for i in indices:
        i = int(i)
        size = int(n_atoms[i]) if max_atoms is not None else 0
        if current and (len(current) >= batch_size or (max_atoms is not None and atoms + size > max_atoms)):
            batches.append(current)
            current, atoms = [], 0
        current.append(i)
        atoms += size
    if current:
        batches.append(current)
    return batches


def atom_chunks(structures: Sequence, max_atoms: int | None) -> list:
    """``structures`` in order, cut into runs of at most ``max_atoms`` atoms (one larger structure
    goes alone); all of them in one run when ``max_atoms`` is None."""
    if max_atoms is None or not structures:
        return [list(structures)] if structures else []
    sizes = np.array([s.n_atoms for s in structures], dtype=np.int64)
    plan = plan_batches(range(len(structures)), len(structures), sizes, max_atoms)
    return [[structures[i] for i in part] for part in plan]


def _already_collated(batch):
    return batch


class _BatchReader(torch.utils.data.Dataset):
    def __init__(self, ds, plan, dtype):
        self.ds, self.plan, self.dtype = ds, plan, dtype

    def __len__(self):
        return len(self.plan)

    def __getitem__(self, k) -> Batch:
        return collate([self.ds[i] for i in self.plan[k]], dtype=self.dtype)


def iter_batches(ds, indices=None, batch_size: int = 32, dtype: torch.dtype = torch.float32, device="cpu",
                 num_workers: int = 0, max_atoms: int | None = None) -> Iterator[Batch]:
    """Yield :class:`Batch` objects of ``ds[indices]`` in the order of ``indices`` (all when None)."""
    indices = np.arange(len(ds)) if indices is None else np.asarray(indices, dtype=np.int64)
    n_atoms = ds.n_atoms_per_structure() if max_atoms is not None else None
    plan = plan_batches(indices, batch_size, n_atoms, max_atoms)
    reader = _BatchReader(ds, plan, dtype)
    if num_workers <= 0:
        for k in range(len(plan)):
            yield reader[k].to(device)
        return
    loader = torch.utils.data.DataLoader(reader, batch_size=None, shuffle=False, num_workers=num_workers,
                                         collate_fn=_already_collated, persistent_workers=False)
    for batch in loader:
        yield batch.to(device)
