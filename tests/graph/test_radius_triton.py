"""The Triton backend against the reference, under TRITON_INTERPRET=1 on CPU tensors (tiny inputs:
the interpreter is slow). On a CUDA machine the same test runs the compiled kernel."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule

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


# ---------------------------------------------------------------------------------------------------
# Cell-list path (radius_triton_cells). Structures of ~100 atoms with short cutoffs give real 3x3x3
# bin scans while staying quick under the interpreter.

from fastcsi.graph import radius_triton_cells as cells  # noqa: E402
from fastcsi.graph.radius_triton import radius_graph_triton  # noqa: E402

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}


def _assert_equal_to_reference(graph, batch, dtype=torch.float64):
    ref = radius_graph(batch.to("cpu"), CUTOFF_OF[id(batch)], backend="ref")
    assert graph.num_edges == ref.num_edges
    assert torch.equal(graph.edge_index.cpu(), ref.edge_index)  # same set AND canonical order
    assert torch.equal(graph.cell_offsets.cpu(), ref.cell_offsets)
    assert torch.equal(graph.num_neighbors.cpu(), ref.num_neighbors)
    torch.testing.assert_close(graph.vectors.cpu(), ref.vectors, atol=TOL[dtype], rtol=0)
    torch.testing.assert_close(graph.distances.cpu(), ref.distances, atol=TOL[dtype], rtol=0)


CUTOFF_OF = {}


def _cells_graph(structures, cutoff, dtype=torch.float64, method="cells"):
    batch = batch_from_atoms(structures, dtype=dtype, device=DEVICE)
    CUTOFF_OF[id(batch)] = cutoff
    return radius_graph_triton(batch, cutoff, method=method), batch


def _assert_equal_to_vesin(graph, atoms, cutoff, first_atom=0):
    vesin = pytest.importorskip("vesin")
    periodic = [bool(p) for p in atoms.pbc]
    box = atoms.cell.array if any(periodic) else np.zeros((3, 3))
    i, j, shifts = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
        points=atoms.positions, box=box, periodic=periodic if any(periodic) else False, quantities="ijS")
    mine = (graph.edge_index[1] >= first_atom) & (graph.edge_index[1] < first_atom + len(atoms))
    ours = set(zip((graph.edge_index[1][mine] - first_atom).tolist(), (graph.edge_index[0][mine] - first_atom).tolist(),
                   map(tuple, graph.cell_offsets[mine].tolist())))
    theirs = set(zip(i.tolist(), j.tolist(), map(tuple, np.asarray(shifts).tolist())))
    assert ours == theirs


def _triclinic(seed=3):
    rng = np.random.default_rng(seed)
    cell = np.array([[9.0, 0.0, 0.0], [5.5, 8.0, 0.0], [-3.0, 4.0, 9.5]])  # strongly skewed
    frac = rng.random((90, 3))
    return Atoms("C90", scaled_positions=frac, cell=cell, pbc=True)


def test_cells_rattled_fcc_bulk_matches_reference_and_vesin():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)  # 108 atoms, 3x3x3 bins at 3 Å
    cu.rattle(0.05, seed=0)
    graph, batch = _cells_graph([cu], 3.0)
    geometry = cells.bin_geometry(torch.tensor(cu.cell.array), torch.ones(3, dtype=torch.bool), [0] * 3,
                                  [1] * 3, len(cu), 3.0)
    assert geometry["nbins"] == [3, 3, 3] and geometry["reach"] == [1, 1, 1]
    assert graph.num_edges == 12 * len(cu)
    _assert_equal_to_reference(graph, batch)
    _assert_equal_to_vesin(graph, cu, 3.0)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cells_skewed_triclinic_cell(dtype):
    atoms = _triclinic()
    graph, batch = _cells_graph([atoms], 3.2, dtype)
    _assert_equal_to_reference(graph, batch, dtype)
    _assert_equal_to_vesin(graph, atoms, 3.2)


def test_cells_slab_and_unwrapped_positions():
    slab = fcc111("Cu", size=(4, 4, 4), vacuum=6.0)  # pbc (T, T, F): bins over the slab's height
    slab.rattle(0.05, seed=2)
    slab.positions += slab.cell[0] * 1.7 - slab.cell[1] * 2.2  # outside the cell: wrapped internally
    graph, batch = _cells_graph([slab], 3.0)
    _assert_equal_to_reference(graph, batch)
    _assert_equal_to_vesin(graph, slab, 3.0)


def test_cells_thinner_than_the_cutoff():
    # one-atom fcc cell, cutoff three lattice constants: one bin per axis scanned 6 bins (images)
    # either way; a = 4 makes the shell at exactly 3a exact in binary (inclusive cutoff: 30 images)
    atoms = bulk("Cu", "fcc", a=4.0)
    graph, batch = _cells_graph([atoms], 12.0)
    _assert_equal_to_reference(graph, batch)
    thin = bulk("Cu", "fcc", a=3.61, cubic=True) * (1, 1, 5)  # 3.61 Å thick along two axes, cutoff 4.5
    thin.rattle(0.05, seed=4)
    graph, batch = _cells_graph([thin], 4.5)
    _assert_equal_to_reference(graph, batch)
    _assert_equal_to_vesin(graph, thin, 4.5)


def test_cells_mixed_batch_degenerate_structures():
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (2, 2, 2)
    cu.rattle(0.05, seed=5)
    duplicated_bulk = bulk("Cu", "fcc", a=3.61, cubic=True)
    duplicated_bulk += Atoms("Cu", positions=[duplicated_bulk.positions[1]])  # distance 0: kept
    duplicated_bulk.pbc = True
    one_periodic = bulk("Cu", "fcc", a=3.61)  # its own images only
    one_free = Atoms("H", positions=[[1.0, 2.0, 3.0]])  # no edge at all
    duplicated = Atoms("H3", positions=[[0, 0, 0], [0, 0, 0], [0.5, 0.2, 0.0]])
    structures = [molecule("CH3CH2OH"), Atoms(), cu, one_free, one_periodic, duplicated, duplicated_bulk]
    graph, batch = _cells_graph(structures, 3.0)
    _assert_equal_to_reference(graph, batch)
    assert graph.num_neighbors[9 + 32] == 0  # the lone free atom (after ethanol's 9 and Cu's 32)
    # both copies of the duplicated bulk atom see each other at distance 0 in the zero image
    n = len(batch.pos)
    dup_a, dup_b = n - 1, n - len(duplicated_bulk) + 1
    pair = (graph.edge_index[0] == dup_a) & (graph.edge_index[1] == dup_b) & (graph.cell_offsets == 0).all(1)
    assert int(pair.sum()) == 1 and float(graph.distances[pair]) == 0.0


def test_cells_empty_batch_and_no_edges():
    graph, batch = _cells_graph([Atoms()], 3.0)
    assert graph.num_edges == 0 and graph.edge_index.shape == (2, 0) and graph.cell_offsets.shape == (0, 3)
    graph, batch = _cells_graph([Atoms("H2", positions=[[0, 0, 0], [0, 0, 9]])], 3.0)
    assert graph.num_edges == 0


def test_auto_routes_large_structures_to_cells_and_merges_with_pairs(monkeypatch):
    """Under ``auto`` the bulk takes the cell list, molecules the all-pairs kernel, and the merged
    output is the reference's; max_neighbors pruning runs through the shared dispatcher path."""
    monkeypatch.setattr(cells, "CELL_MIN_ATOMS", 64)  # ~100-atom structures stay interpreter-sized
    calls = []
    search = cells.search_cells
    monkeypatch.setattr(cells, "search_cells", lambda *a, **k: calls.append(sorted(a[-1])) or search(*a, **k))
    cu = bulk("Cu", "fcc", a=3.61, cubic=True) * (3, 3, 3)
    cu.rattle(0.05, seed=6)
    structures = [molecule("H2O"), cu, molecule("CH4")]
    batch = batch_from_atoms(structures, dtype=torch.float32, device=DEVICE)
    for max_neighbors, strict in ((None, False), (8, True)):
        graph = radius_graph(batch, 3.0, max_neighbors=max_neighbors, strict=strict, backend="triton")
        ref = radius_graph(batch.to("cpu"), 3.0, max_neighbors=max_neighbors, strict=strict, backend="ref")
        assert torch.equal(graph.edge_index.cpu(), ref.edge_index)
        assert torch.equal(graph.cell_offsets.cpu(), ref.cell_offsets)
        torch.testing.assert_close(graph.distances.cpu(), ref.distances, atol=TOL[torch.float32], rtol=0)
    assert calls and all(c == [1] for c in calls)  # only the bulk went through the cell list


def test_routing_rule():
    cell = torch.eye(3, dtype=torch.float64) * 30.0
    pbc = torch.ones(3, dtype=torch.bool)
    big, small = cells.CELL_MIN_ATOMS * 4, cells.CELL_MIN_ATOMS // 2
    lo, hi = torch.zeros(1, 3), torch.ones(1, 3)
    args = (torch.stack([cell, cell]), torch.stack([pbc, pbc]), [big, small])
    chosen = cells.plan_cells(*args, torch.cat([lo, lo]), torch.cat([hi, hi]), 6.0, [0, 1], "auto")
    assert list(chosen) == [0]  # the small structure keeps the all-pairs kernel
    # a cell that holds a single bin prunes nothing: all pairs even when large
    tiny = torch.eye(3, dtype=torch.float64) * 5.0
    chosen = cells.plan_cells(tiny[None], pbc[None], [big], lo, hi, 6.0, [0], "auto")
    assert chosen == {}
    with pytest.raises(Exception, match="unknown Triton method"):
        radius_graph_triton(batch_from_atoms([molecule("H2O")], device=DEVICE), 2.0, method="grid")


def test_bench_triton_rows_run_under_the_interpreter(monkeypatch):
    """bench/radius.py's --device cuda rows, exercised on a tiny structure (correctness check
    against the reference, then the timed calls of each row)."""
    from fastcsi._bench import radius as bench
    from fastcsi._bench.harness import run_case

    monkeypatch.setattr(cells, "CELL_MIN_ATOMS", 16)  # the auto row takes the cell list here too
    (case,) = bench.triton_cases(True, DEVICE, sizes=(2,), cutoff=3.0)
    case.repeats, case.warmup = 1, 0
    keys, _ = case.reference(case.inputs())
    assert len(keys) == 12 * case.size
    rows = run_case(case, DEVICE, log=lambda *a, **k: None)
    assert [r["method"] for r in rows if r["role"] == "ours"] == ["triton cells", "triton auto (api)"]
    assert all(r["status"] == "ok" and r["seconds"] > 0 for r in rows if r["status"] != "skipped")


@pytest.mark.parametrize("method", ["cells", "pairs"])
def test_inclusive_cutoff_is_tested_in_float64(method):
    # 2.1^2 rounds DOWN in float32: a cutoff squared passed as a (fp32-typed) scalar would drop this
    # pair at exactly the cutoff, which the float64 reference keeps
    pair = Atoms("H2", positions=[[0.0, 0.0, 0.0], [2.1, 0.0, 0.0]])
    graph = radius_graph_triton(batch_from_atoms([pair], dtype=torch.float64, device=DEVICE), 2.1, method=method)
    assert graph.num_edges == 2


def test_cells_random_skewed_partly_periodic_batches():
    """Seeded random batches: skewed cells, random pbc per axis, positions up to half a cell outside,
    random cutoffs (often larger than the cell): the cell list gives the reference's edges."""
    rng = np.random.default_rng(11)
    for _ in range(3):
        structures = []
        for _ in range(2):
            n = int(rng.integers(1, 40))
            cell = rng.normal(size=(3, 3)) * 2 + np.diag(rng.uniform(3, 12, 3))
            frac = rng.uniform(-0.5, 1.5, size=(n, 3))
            structures.append(Atoms(numbers=[1] * n, positions=frac @ cell, cell=cell, pbc=rng.random(3) < 0.6))
        graph, batch = _cells_graph(structures, float(rng.uniform(1.0, 6.0)))
        _assert_equal_to_reference(graph, batch)


# The sm_90 compile check of these kernels (and of every other Triton kernel of the package) is in
# tests/test_triton_compile.py.


def test_cells_with_the_gpu_tile_shapes(monkeypatch):
    """The GPU's tiles (16 centres x 64 candidates): a 20-atom cluster in one bin (two programs, the
    second partly masked) and a one-atom cell whose 125 image candidates take two tiles."""
    monkeypatch.setattr(cells, "BLOCK_I", 16)
    monkeypatch.setattr(cells, "BLOCK_J", 64)
    cluster = Atoms("C20", positions=np.random.default_rng(8).uniform(0.0, 3.0, size=(20, 3)))
    graph, batch = _cells_graph([cluster, bulk("Cu", "fcc", a=3.61)], 4.0)
    _assert_equal_to_reference(graph, batch)
