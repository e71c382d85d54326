"""GemNet-OC index sets against brute-force enumeration on real periodic graphs."""
import pytest
import torch

from goc_helpers import batch_of
from fastcsi.graph import gemnet_indices as gi
from fastcsi.model.gemnet_oc.model import build_graphs
from fastcsi.model.gemnet_oc.configs import config, normalize_hparams


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
    assert gi.inner_index(torch.tensor([0, 0, 2, 2, 2]), 3).tolist() == [0, 1, 0, 1, 2]
    assert gi.ragged_range(torch.tensor([], dtype=torch.long)).numel() == 0
    with pytest.raises(ValueError):
        gi.inner_index(torch.tensor([1, 0]), 2)
