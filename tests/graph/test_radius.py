"""radius_graph / select_neighbors against ase and vesin, and every backend against the reference.

Tolerance table (vectors/distances vs a float64 evaluation of pos[j] + n @ cell - pos[i]):
    float64: atol 1e-10 Å        float32: atol 2e-5 Å (positions up to ~50 Å)
The edge SET never depends on the dtype: the search runs in float64 for every backend.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from ase import Atoms
from ase.build import add_adsorbate, bulk, fcc111, molecule
from ase.neighborlist import neighbor_list

from fastcsi._native import has as native_has
from fastcsi.backend import FallbackWarning
from fastcsi.data.batch import batch_from_atoms
from fastcsi.errors import FastCSIError
from fastcsi.graph import radius_graph, select_neighbors

TOL = {torch.float64: 1e-10, torch.float32: 2e-5}
BACKENDS = ["ref"] + (["cpu"] if native_has("radius_batch") else [])


def canonical_ase(atoms, cutoff):
    """ase's (i, j, S) sorted into our canonical order (target, source, shift); ase's cutoff is
    strict (<), ours inclusive, so callers avoid pairs exactly at the cutoff or widen it."""
    i, j, shifts = neighbor_list("ijS", atoms, cutoff)
    order = np.lexsort((shifts[:, 2], shifts[:, 1], shifts[:, 0], j, i))
    return i[order], j[order], shifts[order]


def assert_same_as_ase(graph, atoms, cutoff, ase_cutoff=None):
    i, j, shifts = canonical_ase(atoms, ase_cutoff or cutoff)
    assert graph.num_edges == len(i)
    np.testing.assert_array_equal(graph.edge_index[1].numpy(), i)
    np.testing.assert_array_equal(graph.edge_index[0].numpy(), j)
    np.testing.assert_array_equal(graph.cell_offsets.numpy(), shifts)


def assert_geometry(graph, batch):
    pos = batch.pos.detach().double()
    cell = batch.cell.detach().double()
    src, dst = graph.edge_index
    expected = pos[src] - pos[dst] + torch.einsum("ek,ekl->el", graph.cell_offsets.double(), cell[batch.batch[src]])
    tol = TOL[batch.pos.dtype]
    assert graph.vectors.dtype == batch.pos.dtype and graph.distances.dtype == batch.pos.dtype
    torch.testing.assert_close(graph.vectors.detach().double(), expected, atol=tol, rtol=0)
    torch.testing.assert_close(graph.distances.detach().double(), expected.norm(dim=1), atol=tol, rtol=0)
    np.testing.assert_array_equal(
        graph.num_neighbors.numpy(), np.bincount(dst.numpy(), minlength=batch.num_atoms)
    )


def rattled(atoms, seed, amount=0.05):
    atoms = atoms.copy()
    atoms.rattle(amount, seed=seed)
    return atoms


def slab_with_adsorbate():
    slab = fcc111("Cu", (2, 2, 3), vacuum=6.0)
    add_adsorbate(slab, "O", 1.6, "fcc")
    slab.pbc = (True, True, False)
    return slab


def triclinic():
    atoms = Atoms("CuAuCu", scaled_positions=[[0.1, 0.2, 0.3], [0.6, 0.5, 0.7], [0.9, 0.9, 0.05]],
                  cell=[[4.0, 0.0, 0.0], [3.1, 2.6, 0.0], [1.7, 1.9, 3.3]], pbc=True)
    return rattled(atoms, 7, 0.1)


CASES = {
    "ethanol": (molecule("CH3CH2OH"), 3.0),
    "slab+O": (slab_with_adsorbate(), 6.0),
    "fcc": (rattled(bulk("Cu", "fcc", a=3.6) * (2, 2, 2), 1), 5.0),
    "hcp": (rattled(bulk("Ti", "hcp", a=2.95, c=4.68) * (2, 2, 2), 2), 5.5),
    "rocksalt": (rattled(bulk("NaCl", "rocksalt", a=5.64) * (2, 1, 1), 3), 6.0),
    "triclinic": (triclinic(), 6.5),
    "fcc-cubic-unwrapped": (rattled(bulk("Cu", "fcc", a=3.6, cubic=True) * (3, 3, 3), 4), 4.5),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_ase(name, backend):
    atoms, cutoff = CASES[name]
    if name.endswith("unwrapped"):  # positions far outside the cell must not matter
        atoms = atoms.copy()
        atoms.positions += atoms.cell.array.sum(0) * 2.3 + 0.7
    batch = batch_from_atoms([atoms], dtype=torch.float64)
    graph = radius_graph(batch, cutoff, backend=backend)
    assert_same_as_ase(graph, atoms, cutoff)
    assert_geometry(graph, batch)


def test_matches_vesin():
    vesin = pytest.importorskip("vesin")
    for name in ("fcc", "hcp", "rocksalt", "triclinic", "ethanol"):
        atoms, cutoff = CASES[name]
        periodic = bool(atoms.pbc.all())
        i, j, shifts = vesin.NeighborList(cutoff=cutoff, full_list=True).compute(
            points=atoms.positions, box=atoms.cell.array if periodic else np.zeros((3, 3)),
            periodic=periodic, quantities="ijS")
        graph = radius_graph(batch_from_atoms([atoms], dtype=torch.float64), cutoff, backend=BACKENDS[-1])
        ours = set(zip(graph.edge_index[1].tolist(), graph.edge_index[0].tolist(), map(tuple, graph.cell_offsets.tolist())))
        theirs = set(zip(i.tolist(), j.tolist(), map(tuple, shifts.tolist())))
        assert ours == theirs, name


@pytest.mark.parametrize("backend", BACKENDS)
def test_one_atom_cell_with_cutoff_three_lattice_constants(backend):
    # a = 4: every coordinate and shift is exact in binary, so the shell at exactly 3a is a clean
    # test of the inclusive cutoff (ase's is strict: widen it by a hair for the comparison)
    atoms = bulk("Cu", "fcc", a=4.0)
    cutoff = 3 * 4.0
    graph = radius_graph(batch_from_atoms([atoms], dtype=torch.float64), cutoff, backend=backend)
    assert_same_as_ase(graph, atoms, cutoff, ase_cutoff=cutoff + 1e-9)
    strict = len(neighbor_list("i", atoms, cutoff))
    assert graph.num_edges - strict == 30  # the 30 images at exactly 3a: (6,0,0)x6 + (4,4,2)x24 in a/2 units
    assert (graph.edge_index == 0).all()


@pytest.mark.parametrize("backend", BACKENDS)
def test_degenerate_structures(backend):
    empty = Atoms()
    single = Atoms("H", positions=[[0.0, 0.0, 0.0]])
    single_periodic = Atoms("Cu", positions=[[0.1, 0.2, 0.3]], cell=np.eye(3) * 2.5, pbc=True)
    duplicated = Atoms("H3", positions=[[0.0, 0.0, 0.0], [0.0, 0.0, 0.0], [0.7, 0.0, 0.0]])
    batch = batch_from_atoms([empty], dtype=torch.float64)
    graph = radius_graph(batch, 5.0, backend=backend)
    assert graph.edge_index.shape == (2, 0) and graph.cell_offsets.shape == (0, 3)
    assert graph.num_neighbors.shape == (0,)
    assert radius_graph(batch_from_atoms([single]), 5.0, backend=backend).num_edges == 0
    graph = radius_graph(batch_from_atoms([single_periodic], dtype=torch.float64), 2.6, backend=backend)
    assert graph.num_edges == 6 and (graph.edge_index == 0).all()  # only its own six images
    graph = radius_graph(batch_from_atoms([duplicated], dtype=torch.float64), 1.0, backend=backend)
    assert_same_as_ase(graph, duplicated, 1.0)
    assert graph.num_edges == 6 and float(graph.distances.min()) == 0.0
    # an empty and a one-atom structure inside a batch change nothing for their neighbours
    mixed = [CASES["fcc"][0], empty, single, CASES["ethanol"][0]]
    graph = radius_graph(batch_from_atoms(mixed, dtype=torch.float64), 3.0, backend=backend)
    parts = [radius_graph(batch_from_atoms([a], dtype=torch.float64), 3.0, backend=backend) for a in mixed]
    assert graph.num_edges == sum(p.num_edges for p in parts)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mixed_batch_is_concatenation_of_structures(backend):
    structures = [CASES[name][0] for name in ("ethanol", "slab+O", "fcc", "triclinic", "rocksalt")]
    cutoff = 4.0
    batch = batch_from_atoms(structures, dtype=torch.float64)
    graph = radius_graph(batch, cutoff, backend=backend)
    offset, pieces = 0, []
    for atoms in structures:
        part = radius_graph(batch_from_atoms([atoms], dtype=torch.float64), cutoff, backend=backend)
        pieces.append((part.edge_index + offset, part.cell_offsets))
        offset += len(atoms)
    torch.testing.assert_close(graph.edge_index, torch.cat([p[0] for p in pieces], 1))
    torch.testing.assert_close(graph.cell_offsets, torch.cat([p[1] for p in pieces]))
    assert_geometry(graph, batch)
    # the molecule next to bulk gets no images, the slab none along z
    molecule_edges = graph.edge_index[1] < len(structures[0])
    assert (graph.cell_offsets[molecule_edges] == 0).all()
    slab_edges = (graph.edge_index[1] >= len(structures[0])) & (graph.edge_index[1] < len(structures[0]) + len(structures[1]))
    assert (graph.cell_offsets[slab_edges, 2] == 0).all() and (graph.cell_offsets[slab_edges, :2] != 0).any()


def test_backends_agree_with_reference_in_both_dtypes():
    structures = [CASES[name][0] for name in CASES if not name.endswith("unwrapped")]
    for dtype in (torch.float32, torch.float64):
        batch = batch_from_atoms(structures, dtype=dtype)
        ref = radius_graph(batch, 5.0, backend="ref")
        assert_geometry(ref, batch)
        for backend in BACKENDS[1:]:
            graph = radius_graph(batch, 5.0, backend=backend)
            assert torch.equal(graph.edge_index, ref.edge_index) and torch.equal(graph.cell_offsets, ref.cell_offsets)
            assert torch.equal(graph.num_neighbors, ref.num_neighbors)
            assert_geometry(graph, batch)


def test_gradients_flow_through_vectors():
    atoms = rattled(bulk("Cu", "fcc", a=3.6), 5, 0.1) * (1, 1, 2)
    batch = batch_from_atoms([atoms], dtype=torch.float64)
    for backend in BACKENDS:
        pos = batch.pos.clone().requires_grad_(True)
        cell = batch.cell.clone().requires_grad_(True)

        def energy(p, c):
            b = type(batch)(**{**batch.__dict__, "pos": p, "cell": c})
            g = radius_graph(b, 3.0, backend=backend)
            return (torch.exp(-g.distances) * g.vectors[:, 0]).sum()

        assert torch.autograd.gradcheck(energy, (pos, cell))
    # distance 0 between duplicated atoms must not poison gradients with NaN
    dup = batch_from_atoms([Atoms("H2", positions=[[0, 0, 0], [0, 0, 0]])], dtype=torch.float64)
    pos = dup.pos.clone().requires_grad_(True)
    g = radius_graph(type(dup)(**{**dup.__dict__, "pos": pos}), 1.0, backend=BACKENDS[-1])
    g.distances.sum().backward()
    assert torch.isfinite(pos.grad).all()


def test_max_neighbors_tie_rule_matches_fairchem():
    # the counts fairchem's own tests assert for fcc Cu (a = 3.58, cutoff 6) with 1-, 2-, 3-D pbc
    expected = {(True, False, False): [(10, 4, 4), (1, 2, 1), (None, 4, 4)],
                (True, True, False): [(20, 18, 18), (2, 6, 2), (None, 18, 18)],
                (True, True, True): [(100, 78, 78), (10, 12, 10), (None, 78, 78)]}
    for pbc, rows in expected.items():
        atoms = bulk("Cu", "fcc", a=3.58)
        atoms.pbc = pbc
        batch = batch_from_atoms([atoms], dtype=torch.float64)
        for k, loose, strict in rows:
            assert radius_graph(batch, 6.0, max_neighbors=k).num_edges == loose
            assert radius_graph(batch, 6.0, max_neighbors=k, strict=True).num_edges == strict


def test_select_neighbors_properties():
    atoms = rattled(bulk("Cu", "fcc", a=3.6, cubic=True) * (2, 2, 2), 9, 0.15)
    graph = radius_graph(batch_from_atoms([atoms], dtype=torch.float64), 6.0)
    small = select_neighbors(graph, cutoff=4.0)
    direct = radius_graph(batch_from_atoms([atoms], dtype=torch.float64), 4.0)
    assert torch.equal(small.edge_index, direct.edge_index) and torch.equal(small.cell_offsets, direct.cell_offsets)
    k = 7
    strict = select_neighbors(graph, max_neighbors=k, strict=True)
    loose = select_neighbors(graph, max_neighbors=k)
    assert (strict.num_neighbors == k).all()
    assert (loose.num_neighbors >= k + 1).all()  # fairchem's rule keeps the (k+1)-th and its ties
    for target in range(len(atoms)):
        d = graph.distances[graph.edge_index[1] == target].sort().values
        kept = strict.distances[strict.edge_index[1] == target].sort().values
        torch.testing.assert_close(kept, d[:k])
        kept_loose = loose.distances[loose.edge_index[1] == target]
        assert float(kept_loose.max()) <= float(d[k]) + 0.01
        assert int((d <= d[k] + 0.01).sum()) == kept_loose.numel()
    # strict ties resolve to the earlier edge (lower source, then shift), deterministically
    lattice = radius_graph(batch_from_atoms([bulk("Cu", "fcc", a=3.6)], dtype=torch.float64), 3.0)
    first = select_neighbors(lattice, max_neighbors=3, strict=True)
    assert first.cell_offsets.tolist() == lattice.cell_offsets[:3].tolist()
    # cutoff and max_neighbors compose: order preserved, edges a subset of the cutoff graph
    both = select_neighbors(graph, cutoff=5.0, max_neighbors=5, strict=True)
    assert (both.distances <= 5.0).all() and (both.num_neighbors <= 5).all()
    assert select_neighbors(graph, max_neighbors=0).num_edges == graph.num_edges


def test_user_errors_are_fastcsi_errors():
    batch = batch_from_atoms([CASES["fcc"][0]])
    with pytest.raises(FastCSIError, match="cutoff"):
        radius_graph(batch, -1.0)
    with pytest.raises(FastCSIError, match="backend"):
        radius_graph(batch, 3.0, backend="gpu")
    bad = batch_from_atoms([CASES["ethanol"][0], CASES["fcc"][0]])
    bad.pos[12, 1] = float("nan")
    with pytest.raises(FastCSIError, match="structure 1"):
        radius_graph(bad, 3.0, backend="ref")
    flat = batch_from_atoms([CASES["fcc"][0]])
    flat.cell[0, 2] = flat.cell[0, 0]
    with pytest.raises(FastCSIError, match="structure 0"):
        radius_graph(flat, 3.0)


def test_auto_falls_back_to_reference_with_a_warning(monkeypatch):
    from fastcsi.graph import radius as radius_module

    monkeypatch.setattr(radius_module._native, "has", lambda symbol: False)
    batch = batch_from_atoms([CASES["ethanol"][0]])
    with pytest.warns(FallbackWarning):
        graph = radius_graph(batch, 3.0)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.equal(graph.edge_index, radius_graph(batch, 3.0, backend="ref").edge_index)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**31 - 1),
    n=st.integers(1, 40),
    pbc=st.tuples(st.booleans(), st.booleans(), st.booleans()),
    cutoff=st.floats(0.5, 5.0),
)
def test_random_cells_match_ase_and_reference(seed, n, pbc, cutoff):
    rng = np.random.default_rng(seed)
    # random, possibly very skewed cells (plane spacing down to ~1.5 Å: many images)
    cell = np.diag(rng.uniform(2.0, 8.0, 3)) + np.triu(rng.uniform(-3.0, 3.0, (3, 3)), 1)
    cell = cell[rng.permutation(3)] if abs(np.linalg.det(cell)) > 1.0 else np.diag([3.0, 4.0, 5.0])
    positions = rng.uniform(-0.5, 1.5, (n, 3)) @ cell  # partly outside the cell
    atoms = Atoms(numbers=np.ones(n, int), positions=positions, cell=cell, pbc=pbc)
    batch = batch_from_atoms([atoms], dtype=torch.float64)
    graph = radius_graph(batch, cutoff, backend=BACKENDS[-1])
    i, j, shifts = canonical_ase(atoms, cutoff)
    ours = np.column_stack([graph.edge_index[1].numpy(), graph.edge_index[0].numpy(), graph.cell_offsets.numpy()])
    theirs = np.column_stack([i, j, shifts])
    # ase is strict at the cutoff, we are inclusive: equal sets unless a pair sits on the cutoff
    on_cutoff = np.isclose(graph.distances.numpy(), cutoff, rtol=0, atol=1e-9)
    if not on_cutoff.any():
        np.testing.assert_array_equal(ours, theirs)
    assert_geometry(graph, batch)
    if n <= 10:
        ref = radius_graph(batch, cutoff, backend="ref")
        assert torch.equal(ref.edge_index, graph.edge_index) and torch.equal(ref.cell_offsets, graph.cell_offsets)
