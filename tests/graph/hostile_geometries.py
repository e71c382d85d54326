"""Hostile geometries for the compiled kernels (issue 26): what a wrong unit, a broken writer or a
deliberate attacker can put in a structure file. Shared by the pytest fuzz
(tests/graph/test_hostile_inputs.py) and the sanitizer job (tools/sanitize_fuzz.py).

Each family is a hypothesis strategy of ``ase.Atoms`` (hydrogen only, so every backbone takes the
element); ``hostile_structures`` draws one of them, ``hostile_batches`` mixes several. Sizes stay
small (at most ~200 atoms, images per pair well under the limit where a result is expected) so that
the float64 reference, the oracle every case is checked against, stays fast.

``check_against_reference`` is the property: every backend has the reference's outcome, and
returns the reference's edges (up to pairs within 1e-9 Å of the cutoff, where the order of float64
operations decides) or raises one FastCSIError where the reference does; nothing else, and no crash.
"""
from __future__ import annotations

import numpy as np
from ase import Atoms
from hypothesis import strategies as st

FAR = 2.0**32 * 6.000006  # the issue-26 reproduction: bin counts whose product overflowed int64


def repro_structure() -> Atoms:
    """The issue-26 crash: 58 atoms at x = 0..57 Å, one at x = FAR, one at y = FAR (no cell)."""
    positions = [[float(i), 0.0, 0.0] for i in range(58)] + [[FAR, 0.0, 0.0], [0.0, FAR, 0.0]]
    return Atoms("H60", positions=positions)


def _atoms(positions, cell=None, pbc=False) -> Atoms:
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, 3)
    return Atoms(f"H{len(positions)}" if len(positions) else "", positions=positions,
                 cell=np.zeros((3, 3)) if cell is None else np.asarray(cell, dtype=np.float64), pbc=pbc)


seeds = st.integers(0, 2**31 - 1)


@st.composite
def huge_coordinates(draw):
    """A small molecule moved 10^4 .. 10^300 Å away, or the issue-26 span (past the 1e6 Å limit or not)."""
    if draw(st.booleans()):
        return repro_structure()
    rng = np.random.default_rng(draw(seeds))
    n = draw(st.integers(1, 60))
    offset = 10.0 ** draw(st.floats(4, 300)) * draw(st.sampled_from([1, -1]))
    positions = rng.uniform(0, 8, (n, 3))
    positions[:, draw(st.integers(0, 2))] += offset
    periodic = draw(st.booleans())
    return _atoms(positions, cell=np.eye(3) * 10 if periodic else None, pbc=periodic)


@st.composite
def tiny_coordinates(draw):
    """Coordinates scaled down to 1e-300 Å: every pair sits at distance ~0."""
    rng = np.random.default_rng(draw(seeds))
    n = draw(st.integers(1, 60))
    return _atoms(rng.normal(size=(n, 3)) * 10.0 ** -draw(st.floats(5, 300)))


@st.composite
def coincident_atoms(draw):
    """n atoms at one point (n^2 edges), with or without a cell."""
    n = draw(st.integers(2, 120))
    point = draw(st.lists(st.floats(-50, 50), min_size=3, max_size=3))
    periodic = draw(st.booleans())
    return _atoms([point] * n, cell=np.eye(3) * draw(st.floats(3, 12)) if periodic else None, pbc=periodic)


@st.composite
def thin_cells(draw):
    """A periodic cell 10^-5 .. 1 Å high along one axis: many images per pair, or past the limit."""
    rng = np.random.default_rng(draw(seeds))
    thin = 10.0 ** draw(st.floats(-5, 0))
    lengths = [draw(st.floats(3, 8)), draw(st.floats(3, 8)), thin]
    cell = np.diag(lengths)[rng.permutation(3)]
    n = draw(st.integers(1, 3))
    return _atoms(rng.uniform(0, 1, (n, 3)) @ cell, cell=cell, pbc=True)


@st.composite
def skewed_cells(draw):
    """Strongly triclinic cells (tilts up to 10 cell lengths), right- or left-handed, 1..70 atoms
    (so both the all-pairs path and the cell list run), some wrapped positions far outside."""
    rng = np.random.default_rng(draw(seeds))
    a = draw(st.floats(4, 10))
    cell = np.array([[a, 0, 0], [draw(st.floats(-10, 10)) * a, a, 0],
                     [draw(st.floats(-5, 5)) * a, draw(st.floats(-5, 5)) * a, draw(st.floats(4, 10))]])
    if draw(st.booleans()):  # left-handed: det < 0
        cell = cell[[1, 0, 2]]
    n = draw(st.integers(1, 70))
    positions = rng.uniform(0, 1, (n, 3)) @ cell
    positions += rng.integers(-draw(st.integers(0, 10**4)), 10**4 + 1, (n, 3)) @ cell * draw(st.booleans())
    pbc = draw(st.sampled_from([(True, True, True), (True, True, False), (True, False, False), (False, True, True)]))
    return _atoms(positions, cell=cell, pbc=pbc)


@st.composite
def singular_cells(draw):
    """A periodic cell with a zero, repeated or coplanar lattice vector (refused)."""
    rng = np.random.default_rng(draw(seeds))
    kind = draw(st.sampled_from(["zero", "repeated", "coplanar"]))
    cell = np.diag([5.0, 6.0, 7.0])
    if kind == "zero":
        cell[draw(st.integers(0, 2))] = 0.0
    elif kind == "repeated":
        cell[2] = cell[0]
    else:
        cell[2] = cell[0] * 0.3 + cell[1] * 0.7
    return _atoms(rng.uniform(0, 5, (draw(st.integers(1, 5)), 3)), cell=cell, pbc=True)


@st.composite
def small_cells(draw):
    """Cells smaller than the cutoff (1-3 Å at cutoffs up to 8 Å): hundreds of images per pair."""
    rng = np.random.default_rng(draw(seeds))
    cell = np.diag(rng.uniform(1.0, 3.0, 3)) + rng.uniform(-0.3, 0.3, (3, 3))
    return _atoms(rng.uniform(0, 1, (draw(st.integers(1, 3)), 3)) @ cell, cell=cell, pbc=True)


@st.composite
def empty_or_single(draw):
    """Zero or one atom, with or without a cell."""
    n = draw(st.integers(0, 1))
    periodic = draw(st.booleans())
    return _atoms(np.zeros((n, 3)) + 1.5, cell=np.eye(3) * 4 if periodic else None, pbc=periodic)


@st.composite
def mixed_periodicity(draw):
    """Random cells with a random subset of periodic axes (slabs, wires, molecules), 1..200 atoms."""
    rng = np.random.default_rng(draw(seeds))
    cell = np.diag(rng.uniform(4, 20, 3)) + rng.uniform(-2, 2, (3, 3))
    pbc = tuple(draw(st.lists(st.booleans(), min_size=3, max_size=3)))
    n = draw(st.sampled_from([1, 2, 30, 49, 64, 200]))
    return _atoms(rng.uniform(0, 1, (n, 3)) @ cell, cell=cell, pbc=pbc)


FAMILIES = {
    "huge": huge_coordinates(),
    "tiny": tiny_coordinates(),
    "coincident": coincident_atoms(),
    "thin": thin_cells(),
    "skewed": skewed_cells(),
    "singular": singular_cells(),
    "small-cell": small_cells(),
    "empty-or-single": empty_or_single(),
    "mixed-pbc": mixed_periodicity(),
}


def hostile_structures():
    return st.one_of(*FAMILIES.values())


def hostile_batches(max_size: int = 4):
    return st.lists(hostile_structures(), min_size=1, max_size=max_size)


cutoffs = st.one_of(st.sampled_from([6.0, 1.0, 8.0]), st.floats(0.01, 10.0))


def edge_keys(graph) -> dict:
    """{(target, source, n0, n1, n2): distance} of a RadiusGraph."""
    t = graph.edge_index[1].tolist()
    s = graph.edge_index[0].tolist()
    shifts = graph.cell_offsets.tolist()
    return {(a, b, *n): float(d) for a, b, n, d in zip(t, s, shifts, graph.distances.double().tolist())}


def same_edges(graph, reference, cutoff: float) -> str | None:
    """None when ``graph`` has the reference's edges in the same order (or differs only by pairs
    within 1e-9 Å of the cutoff, where rounding decides); else a description of the difference."""
    import torch

    if torch.equal(graph.edge_index, reference.edge_index) and torch.equal(graph.cell_offsets, reference.cell_offsets):
        return None
    mine, theirs = edge_keys(graph), edge_keys(reference)
    borderline = 1e-9 * max(1.0, cutoff)
    extra = [k for k in mine.keys() - theirs.keys() if abs(mine[k] - cutoff) > borderline]
    missing = [k for k in theirs.keys() - mine.keys() if abs(theirs[k] - cutoff) > borderline]
    if extra or missing:
        return f"{len(extra)} extra edges (e.g. {extra[:2]}), {len(missing)} missing (e.g. {missing[:2]})"
    return None


def refusal(exc) -> str:
    """The outcome a FastCSIError stands for: "budget error" when the backend's memory / edge budget
    refused the batch (csrc/radius.cpp, radius_ref.py both name the budget), else "error"."""
    assert "\n" not in str(exc), str(exc)
    return "budget error" if "budget" in str(exc) else "error"


def edge_budget(backend: str, dtype) -> float:
    """How many edges ``backend`` may return under its default memory budget (the reference keeps
    more per edge than the kernel, so it has the smaller budget)."""
    import torch

    from fastcsi._native import memory_budget_bytes, native
    from fastcsi.graph.radius_ref import _BYTES_PER_EDGE

    if backend == "ref":
        return memory_budget_bytes() // _BYTES_PER_EDGE
    if backend == "cpu":
        single = "float32" if dtype == torch.float32 else "float64"
        return memory_budget_bytes() / native.radius_limits[f"bytes_per_edge_{single}"]
    raise ValueError(f"no edge budget known for backend {backend!r}")


def explained_by_budget(outcome: str, reference_outcome: str, backend: str, dtype) -> bool:
    """True when ``outcome`` differs from the reference's only because one of the two ran out of
    its own, smaller, edge budget: that side raised the budget error, the other returned the edges."""
    if {outcome, reference_outcome} != {"ok", "budget error"}:
        return False
    refused, computed = (backend, "ref") if outcome == "budget error" else ("ref", backend)
    return edge_budget(refused, dtype) < edge_budget(computed, dtype)


def check_against_reference(atoms_list, cutoff: float, dtype, backends=("cpu",)) -> dict:
    """Run the reference and ``backends`` on one batch. Each outcome is "ok", "error" or "budget
    error"; every backend's outcome must be the reference's (a backend that refuses what the
    reference computes, or computes what it refuses, fails), except where :func:`explained_by_budget`;
    a wrong result or any exception but FastCSIError fails (AssertionError / the exception itself)."""
    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.errors import FastCSIError
    from fastcsi.graph import radius_graph

    batch = batch_from_atoms(atoms_list, dtype=dtype)
    outcomes, messages = {}, {}
    try:
        reference = radius_graph(batch, cutoff, backend="ref")
        outcomes["ref"] = "ok"
    except FastCSIError as exc:
        reference, outcomes["ref"], messages["ref"] = None, refusal(exc), str(exc)
    for backend in backends:
        try:
            graph = radius_graph(batch, cutoff, backend=backend)
            outcomes[backend] = "ok"
        except FastCSIError as exc:
            graph, outcomes[backend], messages[backend] = None, refusal(exc), str(exc)
        if outcomes[backend] != outcomes["ref"]:
            assert explained_by_budget(outcomes[backend], outcomes["ref"], backend, dtype), (
                f"{backend} {outcomes[backend]} but ref {outcomes['ref']} at cutoff {cutoff}, {dtype}: "
                f"{messages.get(backend) or messages.get('ref')}")
        if graph is not None and reference is not None:
            difference = same_edges(graph, reference, cutoff)
            assert difference is None, f"{backend} vs ref at cutoff {cutoff}: {difference}"
    return outcomes


def representatives() -> dict:
    """One fixed structure of every family (name -> ase.Atoms), for the CLI runs: files need
    concrete structures, and a few seconds per command allow one of each, not a hypothesis search."""
    rng = np.random.default_rng(26)
    chain_far = repro_structure()
    molecule = rng.uniform(0, 4, (12, 3))
    thin = np.diag([5.0, 6.0, 0.05])
    skewed = np.array([[6.0, 0, 0], [40.0, 6.0, 0], [-15.0, 20.0, 7.0]])[[1, 0, 2]]  # left-handed
    small = np.diag([1.3, 1.6, 2.0]) + 0.2
    slab = np.diag([9.0, 9.0, 30.0])
    return {
        "issue-26 span": chain_far,
        "offset 1e10": _atoms(molecule + [1e10, 0, 0]),
        "scaled 1e-200": _atoms(molecule * 1e-200),
        "60 coincident": _atoms(np.ones((60, 3))),
        "thin cell 1e-4": _atoms(rng.uniform(0, 1, (2, 3)) @ np.diag([5.0, 6.0, 1e-4]),
                                 cell=np.diag([5.0, 6.0, 1e-4]), pbc=True),
        "thin cell 0.05": _atoms(rng.uniform(0, 1, (2, 3)) @ thin, cell=thin, pbc=True),
        "skewed left-handed": _atoms(rng.uniform(0, 1, (60, 3)) @ skewed + 1e4 * skewed[0], cell=skewed, pbc=True),
        "singular": _atoms(rng.uniform(0, 3, (3, 3)), cell=np.diag([5.0, 0.0, 5.0]), pbc=True),
        "cell below cutoff": _atoms(rng.uniform(0, 1, (2, 3)) @ small, cell=small, pbc=True),
        "one atom": _atoms([[0.5, 0.5, 0.5]]),
        "one atom periodic": _atoms([[0.5, 0.5, 0.5]], cell=np.eye(3) * 2.5, pbc=True),
        "slab": _atoms(rng.uniform(0, 1, (40, 3)) @ np.diag([9.0, 9.0, 8.0]), cell=slab, pbc=(True, True, False)),
    }
