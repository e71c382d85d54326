"""Checkpoint round trip, JMP / fairchem layouts and the errors for bad checkpoints."""
import copy

import pytest
import torch

from goc_helpers import batch_of, make_model
from fastcsi.errors import FastCSIError
from fastcsi.model import check_elements, load_backbone, save_checkpoint


@pytest.fixture(scope="module")
def model():
    return make_model(direct_forces=True)


def outputs(model, batch):
    out = model(batch)
    return out["energy"].detach(), out["forces"].detach()


def test_round_trip(tmp_path, model, structures):
    path = save_checkpoint(model, tmp_path / "m.pt", extra={"epoch": 3})
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "fastcsi-gemnet-oc/1" and raw["extra"] == {"epoch": 3} and "torch" in raw["versions"]
    loaded = load_backbone(path).eval()
    assert loaded.hparams == model.hparams and loaded.dtype == torch.float64
    batch = batch_of(structures["slab"])
    for a, b in zip(outputs(model, batch), outputs(loaded, batch)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not list(tmp_path.glob(".*tmp"))  # atomic write left no temp file


def jmp_state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_jmp_layouts(tmp_path, model, structures):
    batch = batch_of(structures["molecule"])
    ref = outputs(model, batch)
    hp = {k: v for k, v in model.hparams.items()}
    # Lightning checkpoint with a DDP prefix
    state = {"module." + k: v for k, v in jmp_state(model).items()}
    torch.save({"state_dict": state, "epoch": 1}, tmp_path / "ddp.ckpt")
    loaded = load_backbone(tmp_path / "ddp.ckpt", **hp).eval()
    torch.testing.assert_close(outputs(loaded, batch)[0], ref[0], rtol=0, atol=0)
    assert loaded.load_info["layout"] == "jmp" and not loaded.load_info["heads_initialized"]
    # JMP pretraining layout: atom_embedding + output.* heads, no fine-tuning heads
    pre = {k: v for k, v in jmp_state(model).items() if not k.startswith(("out_energy", "out_forces"))}
    pre["embedding.atom_embedding.weight"] = pre.pop("embedding.weight")
    pre["output.out_energy.0.weight"] = torch.zeros(3, 3)
    torch.save(pre, tmp_path / "pre.pt")
    loaded = load_backbone(tmp_path / "pre.pt", **hp).eval()
    assert loaded.load_info["heads_initialized"] and loaded.load_info["dropped_keys"] == ["output.out_energy.0.weight"]
    from fastcsi.model import extract_features

    torch.testing.assert_close(extract_features(loaded, batch), extract_features(model, batch), rtol=0, atol=0)


def test_bad_checkpoints(tmp_path, model):
    hp = dict(model.hparams)
    state = jmp_state(model)
    missing = {k: v for k, v in state.items() if k != "backbone.int_blocks.0.dense_ca.linear.weight"}
    torch.save(missing, tmp_path / "missing.pt")
    with pytest.raises(FastCSIError, match="missing key.*int_blocks.0.dense_ca.linear.weight"):
        load_backbone(tmp_path / "missing.pt", **hp)
    extra = {**state, "backbone.bogus.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(FastCSIError, match="unexpected key.*backbone.bogus.weight"):
        load_backbone(tmp_path / "extra.pt", **hp)
    scale_key = next(k for k in state if k.endswith("scale_factor"))
    no_scale = {k: v for k, v in state.items() if k != scale_key}
    torch.save(no_scale, tmp_path / "noscale.pt")
    with pytest.raises(FastCSIError, match="scale-factor"):
        load_backbone(tmp_path / "noscale.pt", **hp)
    # ... unless a fitted scale file supplies it
    name = scale_key[len("backbone."):-len(".scale_factor")]
    torch.save({name: float(state[scale_key])}, tmp_path / "scales.pt")
    loaded = load_backbone(tmp_path / "noscale.pt", **{**hp, "scale_file": str(tmp_path / "scales.pt")})
    assert float(loaded.state_dict()[scale_key]) == float(state[scale_key])
    partial_heads = {k: v for k, v in state.items() if k != "out_energy.0.weight"}
    torch.save(partial_heads, tmp_path / "heads.pt")
    with pytest.raises(FastCSIError, match="out_energy.0.weight"):
        load_backbone(tmp_path / "heads.pt", **hp)
    wrong = copy.deepcopy(hp)
    wrong["emb_size_rbf"] = 4  # same keys, other shapes
    torch.save(state, tmp_path / "ok.pt")
    with pytest.raises(FastCSIError, match="shape mismatch"):
        load_backbone(tmp_path / "ok.pt", **wrong)
    # no hyperparameters stored: read off the shapes, unless the tensors that show them are absent
    assert load_backbone(tmp_path / "ok.pt").load_info["hparams"] == "inferred from tensor shapes"
    torch.save({k: v for k, v in state.items() if not k.startswith("backbone.bases.mlp_cbf_tint.")},
               tmp_path / "no_cbf.pt")
    with pytest.raises(FastCSIError, match="num_spherical, emb_size_cbf cannot be inferred.*--base"):
        load_backbone(tmp_path / "no_cbf.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(FastCSIError, match="junk.pt"):
        load_backbone(tmp_path / "junk.pt", **hp)
    with pytest.raises(FastCSIError, match="not found"):
        load_backbone(tmp_path / "absent.pt", **hp)


def test_fairchem_layout(tmp_path, structures):
    model = make_model(direct_forces=True, head_num_mlps=1)
    mapping = {
        "embedding.weight": "atom_emb.embeddings.weight",
        "out_energy.0.weight": "out_energy.linear.weight",
        "out_forces.0.weight": "out_forces.linear.weight",
    }
    fair = {}
    for key, value in model.state_dict().items():
        if key in mapping:
            new = mapping[key]
        elif key.startswith("backbone.bases."):
            new = key[len("backbone.bases."):]
        elif key.startswith(("backbone.out_mlp_E.out_mlp.", "backbone.out_mlp_F.out_mlp.")):
            new = key.replace("backbone.", "").replace(".out_mlp.", ".", 1)
        else:
            new = key[len("backbone."):]
        fair["module." + new] = value
    cfg = {k: v for k, v in model.hparams.items()}
    cfg.update(name="gemnet_oc", num_atoms=0, bond_feat_dim=0)
    torch.save({"state_dict": fair, "config": {"model": cfg}}, tmp_path / "fair.pt")
    loaded = load_backbone(tmp_path / "fair.pt").eval()
    assert loaded.load_info["layout"] == "fairchem"
    batch = batch_of(structures["bulk"])
    for a, b in zip(outputs(model, batch), outputs(loaded, batch)):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_elements_out_of_range(model):
    from ase import Atoms

    check_elements(model, torch.tensor([1, 6, 118]))
    with pytest.raises(FastCSIError, match="121"):
        check_elements(model, torch.tensor([1, 121]))
    with pytest.raises(FastCSIError, match="0"):
        model(batch_of(Atoms(numbers=[0, 1], positions=[[0, 0, 0], [0, 0, 1.0]])))
    small = make_model(num_elements=10)
    with pytest.raises(FastCSIError, match="1..10"):
        small(batch_of(Atoms("HNa", positions=[[0, 0, 0], [0, 0, 1.5]])))
