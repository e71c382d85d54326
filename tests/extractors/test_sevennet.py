"""SevenNet-0 through fastcsi's batched radius graphs: invariant, batch-independent, equal to SevenNet's
own per-structure path, offline."""
import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.pipeline.backbone import load_extractor

from helpers import check_invariance_and_batching, check_protocol, features_of

pytest.importorskip("sevenn")


@pytest.fixture(scope="module")
def sevennet():
    return load_extractor("sevennet-0", dtype="float64")


def test_protocol_and_provenance(sevennet):
    check_protocol(sevennet)
    assert sevennet.name == "sevennet-0" and sevennet.pretrained and sevennet.dim == 128
    assert sevennet.cutoff == 5.0 and {1, 6, 8, 29, 78} <= sevennet.elements and 84 not in sevennet.elements


def test_invariance_and_batch_independence(sevennet, structures):
    # e3nn keeps some constants (Clebsch-Gordan tables) in float32: rotations agree to ~1e-8, not 1e-12
    check_invariance_and_batching(sevennet, structures, atol=1e-6)


def test_batched_graphs_equal_sevennets_own_path(sevennet, structures):
    ours = features_of(sevennet, structures)
    theirs = torch.cat(sevennet.features_per_structure(structures)).to(ours.dtype)
    # SevenNet's own path keeps positions in float32 (its data class), hence not 1e-12
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


def test_all_layers_scalars(structures):
    every = load_extractor("sevennet-0", layer="all", dtype="float64")
    last = load_extractor("sevennet-0", dtype="float64")
    assert every.dim == 5 * 128 and every.fingerprint != last.fingerprint
    both = features_of(every, structures[:2])
    torch.testing.assert_close(both[:, -128:], features_of(last, structures[:2]), atol=1e-10, rtol=0)


def test_refusals_are_one_line(sevennet):
    with pytest.raises(FastCSIError, match="cannot embed atomic number.*84"):
        sevennet.check_elements(torch.tensor([1, 84, 6]), where="po.xyz")
    with pytest.raises(FastCSIError, match="node features only"):
        load_extractor("sevennet-0", kind="edge")
    with pytest.raises(FastCSIError, match="'final'.*'all'"):
        load_extractor("sevennet-0", layer="block2")
