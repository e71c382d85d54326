"""Feature extraction: layers, kinds, consistency with the full forward, fingerprints."""
import copy

import pytest
import torch

from goc_helpers import batch_of, make_model
from fastcsi.errors import FastCSIError
from fastcsi.model import build_model, extract_features, extractor_fingerprint, feature_dim
from fastcsi.model.gemnet_oc.layers import scatter_sum
from fastcsi.model.gemnet_oc.model import build_graphs


@pytest.fixture(scope="module")
def model():
    return make_model(direct_forces=True)


@pytest.fixture(scope="module")
def batch(structures):
    return batch_of(structures["molecule"], structures["slab"], structures["bulk"])


def full_run(model, batch):
    batch = model.prepare(batch)
    g = build_graphs(batch, model.hparams)
    with torch.no_grad():
        return model.backbone(model.embed(batch), g), g


def test_final_node_features_feed_the_energy_head(model, batch):
    feats = extract_features(model, batch)
    assert feats.shape == (batch.num_atoms, feature_dim(model)) and feats.dtype == torch.float64
    assert not feats.requires_grad and feats.is_inference()
    energy = scatter_sum(model.out_energy(feats.clone())[:, 0], batch.batch, batch.num_structures)
    torch.testing.assert_close(energy, model(batch)["energy"].detach())


@pytest.mark.parametrize("kind", ["node", "edge"])
def test_every_layer_matches_the_full_forward(model, batch, kind):
    out, g = full_run(model, batch)
    idx_t = g["main"]["edge_index"][1]
    count = torch.bincount(idx_t, minlength=batch.num_atoms).clamp(min=1).double()[:, None]
    layers = ["final"] + [f"block{k}" for k in range(model.hparams["num_blocks"] + 1)]
    for layer in layers:
        feats = extract_features(model, batch, layer=layer, kind=kind)
        if kind == "node":
            want = out["energy"] if layer == "final" else out["xs_E"][int(layer[5:])]
        else:
            edge = out["forces"] if layer == "final" else out["xs_F"][int(layer[5:])]
            want = scatter_sum(edge, idx_t, batch.num_atoms) / count
        assert feats.shape == (batch.num_atoms, feature_dim(model, layer, kind))
        torch.testing.assert_close(feats, want, rtol=1e-12, atol=1e-12)


def test_features_are_per_structure(model, structures, batch):
    together = extract_features(model, batch)
    start = 0
    for kind in ("molecule", "slab", "bulk"):
        alone = extract_features(model, batch_of(structures[kind]))
        torch.testing.assert_close(together[start : start + len(alone)], alone, rtol=1e-9, atol=1e-9)
        start += len(alone)


def test_features_ignore_training_mode_dropout(batch):
    model = make_model(direct_forces=True, dropout=0.5, edge_dropout=0.3)
    reference = extract_features(model, batch)
    model.train()
    torch.testing.assert_close(extract_features(model, batch), reference, rtol=0, atol=0)
    assert model.training  # restored
    out_a, out_b = model(batch)["energy"], model(batch)["energy"]
    assert not torch.allclose(out_a, out_b)  # the dropout is real in training forward passes


def test_bad_requests(model, batch):
    with pytest.raises(FastCSIError, match="layer"):
        extract_features(model, batch, layer="block9")
    with pytest.raises(FastCSIError, match="kind"):
        extract_features(model, batch, kind="bond")
    grad_model = make_model(direct_forces=False)
    with pytest.raises(FastCSIError, match="direct_forces"):
        extract_features(grad_model, batch, kind="edge")
    assert extract_features(grad_model, batch).shape == (batch.num_atoms, 32)


def test_fingerprint(model):
    fp = extractor_fingerprint(model)
    assert fp == extractor_fingerprint(copy.deepcopy(model))
    assert fp != extractor_fingerprint(model, layer="block1")
    assert fp != extractor_fingerprint(model, kind="edge")
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.backbone.out_mlp_E.out_mlp[0].linear.weight[0, 0] += 1e-6
    assert fp != extractor_fingerprint(other)
    assert fp != extractor_fingerprint(make_model(direct_forces=True, cutoff=5.0, absolute_rbf_cutoff=6.0))


def test_seeded_weights_do_not_depend_on_thread_count():
    threads = torch.get_num_threads()
    prints = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            torch.manual_seed(0)
            prints.append(extractor_fingerprint(build_model("gemnet-oc-tiny")))
    finally:
        torch.set_num_threads(threads)
    assert len(set(prints)) == 1


def test_named_configs_build():
    tiny = build_model("gemnet-oc-tiny")
    assert tiny.hparams["max_neighbors_qint"] == 8 and tiny.hparams["max_neighbors_aeaint"] == 20
    assert tiny.hparams["max_neighbors_aint"] == 1000
    import json

    json.dumps(tiny.hparams)
    with pytest.raises(FastCSIError, match="unknown model"):
        build_model("gemnet-xl")
    with pytest.raises(FastCSIError, match="unknown hyperparameter"):
        build_model("gemnet-oc-tiny", emb_size_atoms=3)


def test_graph_timer_wraps_graph_building_in_forward_and_extraction(model, batch):
    """The model's timing hook (what the pipeline and the training loop profile the ``graph``
    stage with): entered once per graph construction, around it, and unset after the block."""
    import contextlib

    from fastcsi.model.gemnet_oc import model as model_module

    events = []
    real_build = model_module.build_graphs

    @contextlib.contextmanager
    def timer():
        events.append("enter")
        yield
        events.append("exit")

    def recording_build(*args, **kwargs):
        events.append("build")
        return real_build(*args, **kwargs)

    model_module.build_graphs = recording_build
    try:
        with model.timing_graphs(timer):
            features = extract_features(model, batch)
            model(batch)
        assert events == ["enter", "build", "exit"] * 2
        assert model.graph_timer is None
        events.clear()
        torch.testing.assert_close(extract_features(model, batch), features)  # the hook changes no value
        assert events == ["build"]
    finally:
        model_module.build_graphs = real_build
