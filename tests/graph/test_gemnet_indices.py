"""GemNet-OC index sets (fastcsi.graph.gemnet_indices).

1. Every backend (the numba walks of ``cpu``, the vectorised torch of ``cuda``, run here on CPU
   tensors) gives BIT-FOR-BIT the outputs of the oracle gemnet_indices_ref (same elements, same
   order, same dtype), on graphs with and without periodic images, self-image edges, empty and
   one-atom structures.
2. The index sets of GemNet-OC's build_graphs against brute-force enumeration on real periodic
   graphs (symmetrisation, triplets, mixed triplets, quadruplets, the tag convention, helpers).
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from fastcsi.backend import FallbackWarning
from fastcsi.data.batch import batch_from_atoms
from fastcsi.errors import FastCSIError
from fastcsi.graph import gemnet_indices as gi
from fastcsi.graph import gemnet_indices_cuda as device_path
from fastcsi.graph import gemnet_indices_ref as ref
from fastcsi.graph import nearest as nearest_module
from fastcsi.graph import radius_graph, select_neighbors
from fastcsi.model.gemnet_oc.configs import config, normalize_hparams
from fastcsi.model.gemnet_oc.model import build_graphs

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "model"))
from goc_helpers import batch_of, sample_structures  # noqa: E402 - shared with the model tests


def _edges(graph, batch):
    edge_batch = batch.batch[graph.edge_index[1]]
    return {"edge_index": graph.edge_index, "cell_offset": graph.cell_offsets, "distance": graph.distances,
            "vector": -graph.vectors / graph.distances[:, None].clamp_min(1e-12), "edge_batch": edge_batch,
            "num_neighbors": torch.bincount(edge_batch, minlength=batch.num_structures)}


def _graphs(structures, cutoff, k_main, k_qint, qint_cutoff):
    """Main (symmetrised), quadruplet and atom-edge graphs as GemNet-OC's build_graphs makes them."""
    batch = batch_from_atoms(structures, dtype=torch.float64)
    raw = radius_graph(batch, cutoff, max_neighbors=k_main, strict=True, backend="ref")
    main, _ = gi.symmetrize_edges(_edges(raw, batch), batch.num_atoms)
    qint = _edges(select_neighbors(raw, cutoff=qint_cutoff, max_neighbors=k_qint, strict=True), batch)
    aeaint = _edges(select_neighbors(raw, max_neighbors=max(1, k_main // 2), strict=True), batch)
    return main, qint, aeaint, batch.num_atoms


def _assert_identical(new, old):
    if isinstance(old, dict):
        assert new.keys() == old.keys()
        for key in old:
            _assert_identical(new[key], old[key])
        return
    assert new.dtype == old.dtype and new.device == old.device
    assert torch.equal(new, old)


def _slab():
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    slab.rattle(0.05, seed=1)
    return slab


CASES = {
    # periodic images, slab, molecule, one-atom cell (edges to its own images), empty, lone atom
    "mixed": ([molecule("CH3CH2OH"), _slab(), bulk("Cu", "fcc", a=3.6), Atoms(), Atoms("H")], 5.0, 12, 6, 4.0),
    "molecules": ([molecule("C6H6"), molecule("CH3CH2OH")], 4.0, 10, 4, 3.0),  # image-free path
    "bulk_small_cell": ([bulk("Si", "diamond", a=5.43)], 6.0, 20, 8, 4.5),
    "no_edges": ([Atoms("H2", positions=[[0, 0, 0], [0, 0, 9]])], 2.0, 8, 4, 2.0),
}


@pytest.mark.parametrize("case", list(CASES))
def test_walks_equal_the_torch_formulation(case):
    main, qint, aeaint, num_atoms = _graphs(*CASES[case])
    _assert_identical(gi.triplets(main, num_atoms), ref.triplets_ref(main, num_atoms))
    for graph_in, graph_out in ((aeaint, main), (main, aeaint), (main, qint), (qint, main)):
        for to_outedge in (False, True):
            _assert_identical(
                gi.mixed_triplets(graph_in, graph_out, num_atoms, to_outedge=to_outedge, return_agg_idx=True),
                ref.mixed_triplets_ref(graph_in, graph_out, num_atoms, to_outedge=to_outedge, return_agg_idx=True))
    _assert_identical(gi.mixed_triplets(aeaint, main, num_atoms), ref.mixed_triplets_ref(aeaint, main, num_atoms))
    quad = gi.quadruplets(main, qint, num_atoms)
    _assert_identical(quad, ref.quadruplets_ref(main, qint, num_atoms))
    if case in ("mixed", "bulk_small_cell"):
        assert quad["out"].numel() > 0 and bool(main["cell_offset"].any())


def test_other_devices_take_the_torch_formulation():
    # the ``cuda`` backend's vectorised torch (what CUDA tensors get), run on CPU tensors
    main, qint, _, num_atoms = _graphs(*CASES["mixed"])
    _assert_identical(device_path.quadruplets_cuda(main, qint, num_atoms), ref.quadruplets_ref(main, qint, num_atoms))
    for case in CASES:  # the compaction-free torch triplets
        main, _, _, num_atoms = _graphs(*CASES[case])
        _assert_identical(device_path.triplets_cuda(main, num_atoms), ref.triplets_ref(main, num_atoms))


def test_backend_argument(monkeypatch):
    main, qint, _, num_atoms = _graphs(*CASES["molecules"])
    _assert_identical(gi.quadruplets(main, qint, num_atoms, backend="ref"), gi.quadruplets(main, qint, num_atoms))
    with pytest.raises(FastCSIError, match="not available"):
        gi.triplets(main, num_atoms, backend="cuda")  # CPU tensors
    with pytest.raises(FastCSIError, match="unknown backend"):
        gi.triplets(main, num_atoms, backend="numba")
    monkeypatch.setattr(gi, "_numba_available", lambda: False)
    with pytest.warns(FallbackWarning):
        fallback = gi.triplets(main, num_atoms)
    _assert_identical(fallback, ref.triplets_ref(main, num_atoms))


def test_select_neighbors_rank_walk_equals_the_torch_sorts(monkeypatch):
    """select_neighbors ranks edges per target by (distance, edge position) with a numba walk on CPU;
    it must give the two-stable-sorts ranks exactly, ties included (fcc shells are all ties)."""
    slab = _slab()
    batch = batch_from_atoms([bulk("Cu", "fcc", a=3.6), slab, Atoms(), molecule("CH3CH2OH")], dtype=torch.float32)
    graph = radius_graph(batch, 7.0, backend="ref")
    target, n = graph.edge_index[1], batch.num_atoms
    distances = graph.distances.clone()
    distances[::5] = float("inf")  # non-candidates
    shuffled = torch.randperm(graph.num_edges, generator=torch.Generator().manual_seed(0))
    for t, d in ((target, distances), (target[shuffled], distances[shuffled]), (target[:0], distances[:0])):
        assert torch.equal(nearest_module._ranks(t, d, n), nearest_module._ranks_torch(t, d, n))
    fast = [select_neighbors(graph, max_neighbors=k, strict=s) for k in (1, 12, 13) for s in (False, True)]
    monkeypatch.setattr(nearest_module, "_ranks", nearest_module._ranks_torch)
    slow = [select_neighbors(graph, max_neighbors=k, strict=s) for k in (1, 12, 13) for s in (False, True)]
    for a, b in zip(fast, slow):
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.cell_offsets, b.cell_offsets)


# ------------------------------------------------------------------ build_graphs vs brute force
# (the structures of the model tests: a rattled molecule, a slab with adsorbate and OC20 tags, a
# strained rocksalt crystal)
@pytest.fixture(scope="module")
def structures():
    return sample_structures()


@pytest.fixture(scope="module", params=["mixed", "molecules"])
def graphs(structures, request):
    # "molecules" has no cell offsets at all, which takes the index builders' image-free path
    hp = normalize_hparams({**config("gemnet-oc-tiny"), "cutoff": 4.0, "max_neighbors": 12})
    if request.param == "mixed":
        batch = batch_of(structures["molecule"], structures["slab"], structures["bulk"])
    else:
        batch = batch_of(structures["molecule"], structures["molecule"])
    return build_graphs(batch, hp), batch


def rows(g):
    s, t = g["edge_index"].tolist()
    return list(zip(s, t, [tuple(o) for o in g["cell_offset"].tolist()]))


def check_inner(out, out_agg, size):
    counts = torch.bincount(out, minlength=size)
    for e in range(size):
        assert sorted(out_agg[out == e].tolist()) == list(range(int(counts[e])))


def test_symmetrize(graphs):
    g, batch = graphs
    main, swap = g["main"], g["id_swap"]
    edges = rows(main)
    assert len(set(edges)) == len(edges)
    assert torch.equal(swap[swap], torch.arange(len(edges)))
    for e, c in enumerate(swap.tolist()):
        s, t, o = edges[e]
        assert edges[c] == (t, s, tuple(-x for x in o))
    torch.testing.assert_close(main["vector"][swap], -main["vector"])
    torch.testing.assert_close(main["distance"][swap], main["distance"])
    # edges of one structure stay contiguous
    eb = batch.batch[main["edge_index"][1]]
    assert bool((eb[1:] >= eb[:-1]).all())


def test_triplets(graphs):
    g, batch = graphs
    main, trip = g["main"], g["trip_e2e"]
    t = main["edge_index"][1].tolist()
    brute = {(i, o) for o in range(len(t)) for i in range(len(t)) if t[i] == t[o] and i != o}
    got = list(zip(trip["in"].tolist(), trip["out"].tolist()))
    assert len(got) == len(set(got)) and set(got) == brute
    check_inner(trip["out"], trip["out_agg"], len(t))


@pytest.mark.parametrize("to_outedge", [False, True])
def test_mixed_triplets(graphs, to_outedge):
    g, batch = graphs
    gin, gout = g["a2ee2a"], g["main"]
    idx = gi.mixed_triplets(gin, gout, batch.num_atoms, to_outedge=to_outedge, return_agg_idx=True)
    ein, eout = rows(gin), rows(gout)
    brute = set()
    for o, (so, to, oo) in enumerate(eout):
        for i, (si, ti, oi) in enumerate(ein):
            if to_outedge:
                if ti == so and not (si == to and all(a + b == 0 for a, b in zip(oo, oi))):
                    brute.add((i, o))
            elif ti == to and not (si == so and all(a - b == 0 for a, b in zip(oo, oi))):
                brute.add((i, o))
    got = list(zip(idx["in"].tolist(), idx["out"].tolist()))
    assert len(got) == len(set(got)) and set(got) == brute
    check_inner(idx["out"], idx["out_agg"], len(eout))


def test_quadruplets(graphs):
    g, batch = graphs
    main, qint, quad = g["main"], g["qint"], g["quad"]
    em, eq = rows(main), rows(qint)
    brute = set()
    for ca, (c, a, o_ca) in enumerate(em):
        for ba, (b, a2, o_ba) in enumerate(eq):
            if a2 != a or (b == c and o_ba == o_ca):
                continue
            for db, (d, b2, o_db) in enumerate(em):
                if b2 != b or (d == a and all(x + y == 0 for x, y in zip(o_db, o_ba))):
                    continue
                o_cd = [x + y - z for x, y, z in zip(o_db, o_ba, o_ca)]
                if d == c and all(v == 0 for v in o_cd):
                    continue
                brute.add((ca, ba, db))
    t_in, t_out = quad["triplet_in"], quad["triplet_out"]
    got = list(zip(
        quad["out"].tolist(),
        t_out["in"][quad["trip_out_to_quad"]].tolist(),
        t_in["in"][quad["trip_in_to_quad"]].tolist(),
    ))
    assert torch.equal(t_out["out"][quad["trip_out_to_quad"]], quad["out"])
    assert torch.equal(t_in["out"][quad["trip_in_to_quad"]], t_out["in"][quad["trip_out_to_quad"]])
    assert len(brute) > 0 and len(got) == len(set(got)) and set(got) == brute
    check_inner(quad["out"], quad["out_agg"], len(em))


def test_quadruplet_tag_convention(structures):
    """Molecules/bulk (all tags 2) keep every quadruplet-graph edge; on the slab only edges touching
    a surface (1) or adsorbate (2) atom survive."""
    hp = normalize_hparams(config("gemnet-oc-tiny"))
    for kind in ("molecule", "bulk"):
        batch = batch_of(structures[kind])
        assert (batch.tags == 2).all()  # collate's default for structures without tags
        filtered = build_graphs(batch, hp)["qint"]["edge_index"]
        unfiltered = build_graphs(batch, {**hp, "qint_tags": [0, 1, 2]})["qint"]["edge_index"]
        assert filtered.shape[1] > 0 and torch.equal(filtered, unfiltered)
    slab = batch_of(structures["slab"])
    g = build_graphs(slab, hp)
    tags = slab.tags
    s, t = g["qint"]["edge_index"]
    assert bool(((tags[s] >= 1) | (tags[t] >= 1)).all())
    unfiltered = build_graphs(slab, {**hp, "qint_tags": [0, 1, 2]})["qint"]
    us, ut = unfiltered["edge_index"]
    assert int(((tags[us] == 0) & (tags[ut] == 0)).sum()) > 0  # subsurface-only edges exist and were dropped


def test_helpers():
    assert gi.ragged_range(torch.tensor([1, 0, 3, 2])).tolist() == [0, 0, 1, 2, 0, 1]
    assert gi.ragged_range(torch.tensor([1, 0, 3, 2]), total=6).tolist() == [0, 0, 1, 2, 0, 1]  # sum given
    assert gi.inner_index(torch.tensor([0, 0, 2, 2, 2]), 3).tolist() == [0, 1, 0, 1, 2]
    assert gi.ragged_range(torch.tensor([], dtype=torch.long)).numel() == 0
    with pytest.raises(ValueError):
        gi.inner_index(torch.tensor([1, 0]), 2)
