"""Parity with JMP's own GemNet-OC (fixture made by tools/make_gemnet_reference.py, see
tests/model/fixtures/README.md): the JMP state_dict is imported through ``load_backbone`` and must
reproduce JMP's graphs, per-atom features, energies and forces.

Tolerances (relative to the largest reference magnitude of each tensor): float64 1e-5 (observed
~1e-13: only summation order differs), float32 1e-3.
"""
import json
from pathlib import Path

import pytest
import torch

from fastcsi.data.batch import Batch
from fastcsi.model import extract_features, load_backbone
from fastcsi.model.gemnet_oc.configs import ALL_KEYS
from fastcsi.model.gemnet_oc.model import build_graphs

FIXTURES = Path(__file__).resolve().parent / "fixtures"
STATE = FIXTURES / "jmp_state_dict.pt"
CASES = FIXTURES / "reference_cases.pt"
META = FIXTURES / "meta.json"

pytestmark = pytest.mark.skipif(not (STATE.is_file() and CASES.is_file() and META.is_file()),
                                reason="GemNet-OC parity fixture not generated (tools/make_gemnet_reference.py)")

RTOL = {torch.float64: 1e-5, torch.float32: 1e-3}


@pytest.fixture(scope="module")
def meta():
    return json.loads(META.read_text())


@pytest.fixture(scope="module")
def cases():
    return torch.load(CASES, weights_only=True)["cases"]


def hparams_from_meta(meta) -> dict:
    hp = {k: v for k, v in meta["backbone_config"].items() if k in ALL_KEYS}
    graph = meta["graph"]
    hp.update(
        cutoff=graph["cutoff_angstrom"]["main"], cutoff_aeaint=graph["cutoff_angstrom"]["aeaint"],
        cutoff_qint=graph["cutoff_angstrom"]["qint"], cutoff_aint=graph["cutoff_angstrom"]["aint"],
        max_neighbors=graph["max_neighbors"]["main"], max_neighbors_aeaint=graph["max_neighbors"]["aeaint"],
        max_neighbors_qint=graph["max_neighbors"]["qint"], max_neighbors_aint=graph["max_neighbors"]["aint"],
        qint_tags=graph["qint_tags"], head_num_mlps=meta["output_config"]["num_mlps"],
        activation=meta["output_config"]["activation"], num_elements=meta["embedding_config"]["num_elements"],
    )
    return hp


@pytest.fixture(scope="module")
def model(meta):
    return load_backbone(STATE, **hparams_from_meta(meta)).eval()


def to_batch(inputs, dtype=torch.float64) -> Batch:
    return Batch(
        atomic_numbers=inputs["atomic_numbers"].long(), pos=inputs["pos"].to(dtype), batch=inputs["batch"].long(),
        natoms=inputs["natoms"].long(), cell=inputs["cell"].to(dtype), pbc=inputs["pbc"].bool(),
        tags=inputs["tags"].long(),
    )


def close(actual, expected, dtype=torch.float64):
    scale = float(expected.abs().max()) if expected.numel() else 1.0
    torch.testing.assert_close(actual.to(expected.dtype), expected, rtol=RTOL[dtype], atol=RTOL[dtype] * max(scale, 1e-12))


def test_checkpoint_loads_key_for_key(model, meta):
    state = torch.load(STATE, weights_only=True)
    assert set(state) == set(model.state_dict())
    assert model.load_info["layout"] == "jmp" and not model.load_info["heads_initialized"]
    assert all(float(v) != 0 for k, v in model.state_dict().items() if k.endswith("scale_factor"))


@pytest.mark.parametrize("case", ["molecule", "slab", "bulk"])
def test_graphs_match(model, cases, case):
    ref = cases[case]["graph"]
    batch = model.prepare(to_batch(cases[case]["inputs"]))
    g = build_graphs(batch, model.hparams)
    main = g["main"]

    def keyed(edge_index, offsets):
        return [(int(s), int(t), tuple(int(round(float(x))) for x in o)) for (s, t), o in zip(edge_index.T, offsets)]

    ours = keyed(main["edge_index"], main["cell_offset"])
    theirs = keyed(ref["main_edge_index"], ref["main_cell_offset"])
    assert sorted(ours) == sorted(theirs)
    position = {k: i for i, k in enumerate(ours)}
    order = torch.tensor([position[k] for k in theirs])
    close(main["distance"][order], ref["main_distance"])
    # the counter-edge of each of their edges is the counter-edge of the same edge in ours
    assert torch.equal(order[ref["main_id_swap"]], g["id_swap"][order])
    assert sorted(keyed(g["qint"]["edge_index"], g["qint"]["cell_offset"])) == sorted(
        keyed(ref["qint_edge_index"], ref["qint_cell_offset"]))
    assert sorted(keyed(g["a2ee2a"]["edge_index"], g["a2ee2a"]["cell_offset"])) == sorted(
        keyed(ref["a2ee2a_edge_index"], ref["a2ee2a_cell_offset"]))
    counts = {
        "num_edges_main": main["edge_index"].shape[1],
        "num_edges_a2a": g["a2a"]["edge_index"].shape[1],
        "num_edges_a2ee2a": g["a2ee2a"]["edge_index"].shape[1],
        "num_edges_qint": g["qint"]["edge_index"].shape[1],
        "num_triplets_e2e": g["trip_e2e"]["in"].numel(),
        "num_triplets_a2e": g["trip_a2e"]["in"].numel(),
        "num_triplets_e2a": g["trip_e2a"]["in"].numel(),
        "num_quad_triplets_in": g["quad"]["triplet_in"]["in"].numel(),
        "num_quad_triplets_out": g["quad"]["triplet_out"]["in"].numel(),
        "num_quadruplets": g["quad"]["out"].numel(),
    }
    assert counts == {k: int(ref[k]) for k in counts}


@pytest.mark.parametrize("case", ["molecule", "slab", "bulk", "batch"])
def test_features_energy_forces_float64(model, cases, case):
    ref = cases[case]["outputs"]
    batch = to_batch(cases[case]["inputs"])
    close(model.embed(batch).detach(), ref["atom_embedding"])
    close(extract_features(model, batch), ref["node_features"])
    close(extract_features(model, batch, layer="block1"), ref["block_x_E"][1])  # stops early
    if case != "batch":
        prepared = model.prepare(batch)
        with torch.no_grad():
            out = model.backbone(model.embed(prepared), build_graphs(prepared, model.hparams))
        for k in range(ref["block_x_E"].shape[0]):
            close(out["xs_E"][k], ref["block_x_E"][k])
        close(out["h"], ref["block_h"][-1])
    pos = batch.pos.clone().requires_grad_(True)
    batch.pos = pos
    out = model(batch)
    close(out["energy"].detach(), ref["energy"])
    close(out["forces"].detach(), ref["forces_direct"])
    (grad,) = torch.autograd.grad(out["energy"].sum(), pos)
    close(-grad, ref["forces_gradient"])


@pytest.mark.parametrize("case", ["molecule", "slab", "bulk"])
def test_edge_features_float64(model, cases, case):
    ref_out, ref_graph = cases[case]["outputs"], cases[case]["graph"]
    batch = model.prepare(to_batch(cases[case]["inputs"]))
    g = build_graphs(batch, model.hparams)
    with torch.no_grad():
        edge = model.backbone(model.embed(batch), g)["forces"]
    keys = [(int(s), int(t), tuple(int(round(float(x))) for x in o))
            for (s, t), o in zip(g["main"]["edge_index"].T, g["main"]["cell_offset"])]
    position = {k: i for i, k in enumerate(keys)}
    order = torch.tensor([position[(int(s), int(t), tuple(int(round(float(x))) for x in o))]
                          for (s, t), o in zip(ref_graph["main_edge_index"].T, ref_graph["main_cell_offset"])])
    close(edge[order], ref_out["edge_features"])


def test_float32(model, cases):
    import copy

    model32 = copy.deepcopy(model).float()
    ref = cases["batch"]["outputs"]
    batch = to_batch(cases["batch"]["inputs"], torch.float32)
    close(extract_features(model32, batch), ref["node_features"], torch.float32)
    out = model32(batch)
    close(out["energy"].detach(), ref["energy"], torch.float32)
    close(out["forces"].detach(), ref["forces_direct"], torch.float32)
