"""The fused fast paths (folded scales, per-atom edge embeddings, merged GEMMs, gathered padding)
compute the same function as the plain JMP-shaped path: float64 features, energies, forces and
every parameter gradient agree to ~1e-12 relative, with fitted and with unfitted scale factors."""
import pytest
import torch

from goc_helpers import batch_of, make_model
from fastcsi.model import extract_features
from fastcsi.backend import fused_enabled, override

RTOL = 1e-12


def rel_err(a, b):
    return float((a - b).abs().max() / b.abs().max().clamp(min=1e-300))


@pytest.fixture(scope="module")
def batch(structures):
    return batch_of(structures["molecule"], structures["slab"], structures["bulk"])


def train_step(model, batch):
    model.train()
    model.zero_grad(set_to_none=True)
    out = model(batch)
    loss = out["energy"].pow(2).sum() + out["forces"].pow(2).sum()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    model.eval()
    return {k: v.detach() for k, v in out.items()}, grads


def test_unfused_switch_restores():
    assert fused_enabled()
    with override(fused=False):
        assert not fused_enabled()
    assert fused_enabled()


@pytest.mark.parametrize("layer,kind", [("final", "node"), ("final", "edge"), ("block1", "node")])
def test_features_equal_unfused(batch, layer, kind):
    model = make_model(direct_forces=True)
    fast = extract_features(model, batch, layer=layer, kind=kind)
    with override(fused=False):
        plain = extract_features(model, batch, layer=layer, kind=kind)
    assert fast.shape == plain.shape
    assert rel_err(fast, plain) < RTOL


@pytest.mark.parametrize("direct", [True, False])
def test_train_outputs_and_gradients_equal_unfused(batch, direct):
    model = make_model(direct_forces=direct)
    out_fast, grads_fast = train_step(model, batch)
    with override(fused=False):
        out_plain, grads_plain = train_step(model, batch)
    for key in ("energy", "forces"):
        assert rel_err(out_fast[key], out_plain[key]) < RTOL, key
    assert grads_fast.keys() == grads_plain.keys() and len(grads_plain) > 50
    worst = max(grads_plain, key=lambda k: rel_err(grads_fast[k], grads_plain[k]))
    assert rel_err(grads_fast[worst], grads_plain[worst]) < 1e-10, worst


def test_unfitted_scale_factors_equal_unfused(batch):
    model = make_model(direct_forces=True)
    for name, buf in model.named_buffers():
        if name.endswith("scale_factor"):
            buf.zero_()  # unfitted: identity
    fast = extract_features(model, batch, kind="edge")
    with override(fused=False):
        plain = extract_features(model, batch, kind="edge")
    assert rel_err(fast, plain) < RTOL


def test_fused_path_sees_parameter_updates(batch):
    """Nothing is cached from the weights: an optimiser step changes the fused output exactly as
    it changes the plain one."""
    model = make_model(direct_forces=True)
    before = extract_features(model, batch)
    with torch.no_grad():
        model.backbone.int_blocks[0].dense_ca.linear.weight.mul_(1.5)
        model.backbone.int_blocks[0].trip_interaction.scale_rbf.scale_factor.mul_(2.0)
    after = extract_features(model, batch)
    with override(fused=False):
        plain = extract_features(model, batch)
    assert rel_err(after, before) > 1e-3
    assert rel_err(after, plain) < RTOL
