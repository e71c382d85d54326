"""The Triton backend against the reference, under TRITON_INTERPRET=1 on CPU tensors (tiny inputs:
the interpreter is slow). On a CUDA machine the same test runs the compiled kernel."""
from __future__ import annotations

import pytest
import torch
from ase import Atoms
from ase.build import bulk, molecule

from fastcsi.backend import triton_usable
from fastcsi.data.batch import batch_from_atoms
from fastcsi.graph import radius_graph

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
pytestmark = pytest.mark.skipif(not triton_usable(DEVICE), reason="triton is not installed")


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_triton_matches_reference(dtype):
    cu = bulk("Cu", "fcc", a=3.6) * (2, 1, 1)
    cu.rattle(0.1, seed=1)
    slab = bulk("Cu", "fcc", a=4.0, cubic=True)
    slab.pbc = (True, True, False)
    duplicated = Atoms("H3", positions=[[0, 0, 0], [0, 0, 0], [0.5, 0.2, 0.0]])
    structures = [molecule("H2O"), Atoms(), cu, slab, duplicated]
    batch = batch_from_atoms(structures, dtype=dtype, device=DEVICE)
    graph = radius_graph(batch, 3.0, backend="triton")
    ref = radius_graph(batch.to("cpu"), 3.0, backend="ref")
    assert graph.num_edges == ref.num_edges > 0
    assert torch.equal(graph.edge_index.cpu(), ref.edge_index)
    assert torch.equal(graph.cell_offsets.cpu(), ref.cell_offsets)
    assert torch.equal(graph.num_neighbors.cpu(), ref.num_neighbors)
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    torch.testing.assert_close(graph.vectors.cpu(), ref.vectors, atol=tol, rtol=0)
    torch.testing.assert_close(graph.distances.cpu(), ref.distances, atol=tol, rtol=0)


def test_triton_is_not_picked_by_auto_on_cpu():
    batch = batch_from_atoms([molecule("H2O")])
    graph = radius_graph(batch, 2.0)  # must not run the (slow) interpreter: cpu kernel or ref
    assert graph.num_edges == 6
