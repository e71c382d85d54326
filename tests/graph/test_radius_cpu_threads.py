"""The C++ kernel's threaded paths (big structures split over threads, batches split over
structures) give exactly the single-threaded output, in the canonical order, with the vesin pair set.

The existing radius tests use small structures, which the kernel keeps on one thread (it needs about
1M candidate pair tests per thread), so these cases are big enough to take the threaded paths.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk

from fastcsi._native import has as native_has
from fastcsi.data.batch import batch_from_atoms
from fastcsi.graph.radius_cpu import search_cpu

pytestmark = pytest.mark.skipif(not native_has("radius_batch"), reason="fastcsi._C not built")


def rattled_fcc(repeats, seed):
    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * repeats
    atoms.rattle(0.05, seed=seed)
    return atoms


def random_triclinic(n, pbc, seed):
    rng = np.random.default_rng(seed)
    cell = rng.normal(size=(3, 3)) * 1.5 + np.eye(3) * (n ** (1 / 3) * 2.3)
    # some atoms outside the cell: wrapping must be undone in the shifts
    return Atoms("H" * n, scaled_positions=rng.random((n, 3)) * 1.2 - 0.1, cell=cell, pbc=pbc)


def assert_identical(results):
    first = results[0]
    for other in results[1:]:
        for a, b in zip(first, other):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def assert_canonical(edge_index, shifts, degree):
    key = np.column_stack([edge_index[1], edge_index[0], shifts])
    order = np.lexsort(key.T[::-1])
    np.testing.assert_array_equal(order, np.arange(len(order)))
    np.testing.assert_array_equal(degree, np.bincount(edge_index[1], minlength=len(degree)))


@pytest.mark.parametrize("single", [False, True])
def test_big_periodic_structure_same_for_every_thread_count(single):
    atoms = rattled_fcc((10, 10, 11), seed=3)  # 4,400 atoms: split over threads
    batch = batch_from_atoms([atoms], dtype=torch.float32 if single else torch.float64)
    results = [search_cpu(batch, 5.0, threads, single=single) for threads in (1, 2, 3)]
    assert_identical(results)
    edge_index, shifts, _, _, degree = results[0]
    assert_canonical(edge_index, shifts, degree)
    vesin = pytest.importorskip("vesin")
    i, j, s = vesin.NeighborList(cutoff=5.0, full_list=True).compute(
        points=atoms.positions, box=atoms.cell.array, periodic=True, quantities="ijS")
    ours = np.column_stack([edge_index[1], edge_index[0], shifts])
    theirs = np.column_stack([i, j, s])
    theirs = theirs[np.lexsort(theirs.T[::-1])]
    np.testing.assert_array_equal(ours, theirs)


def test_mixed_batch_same_for_every_thread_count():
    structures = [random_triclinic(n, pbc, seed) for seed, (n, pbc) in enumerate(
        [(3000, (True, True, True)), (40, (True, False, True)), (700, (True, True, False)),
         (5, (False, False, False)), (2500, (False, True, False))])]
    structures.append(rattled_fcc((2, 2, 2), seed=1))
    batch = batch_from_atoms(structures, dtype=torch.float64)
    results = [search_cpu(batch, 4.5, threads) for threads in (1, 2, 4)]
    assert_identical(results)
    edge_index, shifts, vectors, distances, degree = results[0]
    assert_canonical(edge_index, shifts, degree)
    assert (distances <= 4.5).all() and (edge_index[0] != edge_index[1]).any()
