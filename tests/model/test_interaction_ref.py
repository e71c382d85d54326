"""The interaction op (gather, basis product, bilinear contraction, scatter) against a direct
per-triplet sum, on random index sets with empty rows; and its dispatcher."""
import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.graph.gemnet_indices import inner_index
from fastcsi.model.gemnet_oc.interaction import interaction_bilinear, interaction_bilinear_ref


def random_case(seed, num_out=7, num_in=9, num_trip=30, n_sph=4, d_interm=3, d_in=5, d_out=6):
    gen = torch.Generator().manual_seed(seed)
    out_idx = torch.sort(torch.randint(0, num_out - 1, (num_trip,), generator=gen)).values  # last row empty
    out_inner = inner_index(out_idx, num_out)
    kmax = int(out_inner.max()) + 1
    sph = torch.zeros(num_out, n_sph, kmax, dtype=torch.float64)
    sph_t = torch.randn(num_trip, n_sph, generator=gen, dtype=torch.float64)
    sph[out_idx, :, out_inner] = sph_t
    return dict(
        rad_W1=torch.randn(num_out, d_interm, n_sph, generator=gen, dtype=torch.float64),
        sph=sph, sph_t=sph_t,
        x=torch.randn(num_in, d_in, generator=gen, dtype=torch.float64),
        gather_idx=torch.randint(0, num_in, (num_trip,), generator=gen),
        out_idx=out_idx, out_inner=out_inner,
        weight=torch.randn(d_out, d_interm * d_in, generator=gen, dtype=torch.float64),
    )


def direct(c):
    """out[e] = W vec(sum_{t -> e} (rad_W1[e] sph_t) outer x[gather_t])."""
    acc = torch.zeros(c["rad_W1"].shape[0], c["rad_W1"].shape[1], c["x"].shape[1], dtype=torch.float64)
    for t in range(c["out_idx"].numel()):
        e = int(c["out_idx"][t])
        acc[e] += torch.outer(c["rad_W1"][e] @ c["sph_t"][t], c["x"][c["gather_idx"][t]])
    return acc.reshape(acc.shape[0], -1) @ c["weight"].T


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_edge_output_matches_direct_sum(seed):
    c = random_case(seed)
    got = interaction_bilinear_ref(c["rad_W1"], c["sph"], c["x"], c["gather_idx"], c["out_idx"], c["out_inner"], c["weight"])
    torch.testing.assert_close(got, direct(c), rtol=1e-12, atol=1e-12)
    auto = interaction_bilinear(c["rad_W1"], c["sph"], c["x"], c["gather_idx"], c["out_idx"], c["out_inner"], c["weight"])
    torch.testing.assert_close(auto, got, rtol=1e-12, atol=1e-12)  # CPU tensors: auto runs the reference
    assert torch.equal(got[-1], torch.zeros_like(got[-1]))  # an output edge without triplets gets 0


def test_second_aggregation_onto_atoms():
    c = random_case(3)
    num_out = c["sph"].shape[0]
    atom_of_edge = torch.tensor([0, 0, 1, 1, 1, 3, 3])[:num_out]
    inner2 = inner_index(atom_of_edge, 4)
    k2, n_sph, d_interm = int(inner2.max()) + 1, c["sph"].shape[1], c["rad_W1"].shape[1]
    rad_atoms = torch.randn(4, d_interm, k2 * n_sph, dtype=torch.float64)
    got = interaction_bilinear_ref(rad_atoms, c["sph"], c["x"], c["gather_idx"], c["out_idx"], c["out_inner"],
                                   c["weight"], atom_of_edge, inner2, 4)
    acc = torch.zeros(4, d_interm, c["x"].shape[1], dtype=torch.float64)
    for t in range(c["out_idx"].numel()):
        e = int(c["out_idx"][t])
        a, k = int(atom_of_edge[e]), int(inner2[e])
        acc[a] += torch.outer(rad_atoms[a][:, k * n_sph:(k + 1) * n_sph] @ c["sph_t"][t], c["x"][c["gather_idx"][t]])
    torch.testing.assert_close(got, acc.reshape(4, -1) @ c["weight"].T, rtol=1e-12, atol=1e-12)


def test_empty_and_dispatch():
    c = random_case(4)
    empty = torch.zeros(0, dtype=torch.long)
    got = interaction_bilinear(c["rad_W1"], c["sph"][..., :0], c["x"], empty, empty, empty, c["weight"])
    assert torch.equal(got, torch.zeros(c["sph"].shape[0], c["weight"].shape[0], dtype=torch.float64))
    with pytest.raises(FastCSIError, match="not available"):
        interaction_bilinear(c["rad_W1"], c["sph"], c["x"], c["gather_idx"], c["out_idx"], c["out_inner"],
                             c["weight"], backend="cuda")  # no CUDA-C kernel for this op
    with pytest.raises(FastCSIError, match="unknown backend"):
        interaction_bilinear(c["rad_W1"], c["sph"], c["x"], c["gather_idx"], c["out_idx"], c["out_inner"],
                             c["weight"], backend="fast")
