"""CHGNet 0.3.0 (extra chgnet): last-convolution features, batched forward passes, offline."""
import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.pipeline.backbone import load_extractor

from helpers import check_invariance_and_batching, check_protocol, features_of

pytest.importorskip("chgnet", reason="CHGNet is an optional extra: pip install 'fastcsi[chgnet]'")


@pytest.fixture(scope="module")
def chgnet():
    return load_extractor("chgnet")


def test_protocol_and_provenance(chgnet):
    check_protocol(chgnet)
    assert chgnet.name == "chgnet" and chgnet.pretrained and chgnet.dim == 64 and chgnet.cutoff == 6.0
    assert chgnet.elements == frozenset(range(1, 95))


def test_invariance_and_batch_independence(chgnet, structures):
    check_invariance_and_batching(chgnet, structures, atol=2e-5)  # float32 throughout


def test_batched_forward_equals_chgnets_own_path(chgnet, structures):
    ours = features_of(chgnet, structures)
    # float32: 1e-5 absolute plus 1e-5 relative (a few features near 1.5 differ by 1.1e-5 in the last bits)
    torch.testing.assert_close(ours, torch.cat(chgnet.features_per_structure(structures)), atol=1e-5, rtol=1e-5)


def test_last_convolution_not_atom_fea(chgnet, structures):
    # CHGNet's own atom_fea is the layer before: the features here must differ from it
    from fastcsi.extractors.chgnet import periodic_structure

    atoms = structures[0]
    graph = chgnet.model.graph_converter(periodic_structure(atoms.numbers, atoms.positions, atoms.cell[:], atoms.pbc,
                                                            chgnet.cutoff))
    with torch.inference_mode():
        atom_fea = chgnet.model([graph], return_atom_feas=True)["atom_fea"][0]
    assert atom_fea.shape == (len(atoms), 64)
    assert not torch.allclose(atom_fea, features_of(chgnet, [atoms]), atol=1e-3)


def test_refusals(chgnet):
    with pytest.raises(FastCSIError, match="float32 only"):
        load_extractor("chgnet", dtype="float64")
    with pytest.raises(FastCSIError, match="ships 0.3.0"):
        load_extractor("chgnet:9.9")
    with pytest.raises(FastCSIError, match="cannot embed atomic number.*95"):
        chgnet.check_elements(torch.tensor([6, 95]))
