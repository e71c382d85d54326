"""The numba walks of fastcsi.graph.gemnet_indices give BIT-FOR-BIT the outputs of the torch
formulation kept in gemnet_indices_ref (same elements, same order, same dtype), on graphs with and
without periodic images, self-image edges, empty and one-atom structures."""
from __future__ import annotations

import pytest
import torch
from ase import Atoms
from ase.build import bulk, fcc111, molecule

from fastcsi.data.batch import batch_from_atoms
from fastcsi.graph import gemnet_indices as gi
from fastcsi.graph import gemnet_indices_ref as ref
from fastcsi.graph import radius_graph, select_neighbors


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


def test_other_devices_take_the_torch_formulation(monkeypatch):
    # without the CPU walks (numba missing, or CUDA tensors) the same dicts come from the torch path
    main, qint, _, num_atoms = _graphs(*CASES["mixed"])
    monkeypatch.setattr(gi, "_use_numba", lambda index: False)
    _assert_identical(gi.quadruplets(main, qint, num_atoms), ref.quadruplets_ref(main, qint, num_atoms))
    for case in CASES:  # the compaction-free torch triplets
        main, _, _, num_atoms = _graphs(*CASES[case])
        _assert_identical(gi.triplets(main, num_atoms), ref.triplets_ref(main, num_atoms))


def test_select_neighbors_rank_walk_equals_the_torch_sorts(monkeypatch):
    """select_neighbors ranks edges per target by (distance, edge position) with a numba walk on CPU;
    it must give the two-stable-sorts ranks exactly, ties included (fcc shells are all ties)."""
    from fastcsi.graph import radius as radius_module

    slab = _slab()
    batch = batch_from_atoms([bulk("Cu", "fcc", a=3.6), slab, Atoms(), molecule("CH3CH2OH")], dtype=torch.float32)
    graph = radius_graph(batch, 7.0, backend="ref")
    target, n = graph.edge_index[1], batch.num_atoms
    distances = graph.distances.clone()
    distances[::5] = float("inf")  # non-candidates
    shuffled = torch.randperm(graph.num_edges, generator=torch.Generator().manual_seed(0))
    for t, d in ((target, distances), (target[shuffled], distances[shuffled]), (target[:0], distances[:0])):
        assert torch.equal(radius_module._ranks(t, d, n), radius_module._ranks_torch(t, d, n))
    fast = [select_neighbors(graph, max_neighbors=k, strict=s) for k in (1, 12, 13) for s in (False, True)]
    monkeypatch.setattr(radius_module, "_ranks", radius_module._ranks_torch)
    slow = [select_neighbors(graph, max_neighbors=k, strict=s) for k in (1, 12, 13) for s in (False, True)]
    for a, b in zip(fast, slow):
        assert torch.equal(a.edge_index, b.edge_index) and torch.equal(a.cell_offsets, b.cell_offsets)
