"""The interaction op family (interaction.py dispatcher, interaction_ref.py, interaction_cpu.py,
interaction_triton.py).

The reference (gather, basis product, bilinear contraction, scatter) against a direct per-triplet
sum, on random index sets with empty rows; the fused Triton kernels and the "cpu" gather
formulation against the reference; the dispatcher and ``fastcsi.backend.override``.

Triton runs under TRITON_INTERPRET=1 on CPU tensors (tests/conftest.py), so every shape is tiny: each
program instance (one output row) costs tens of milliseconds in the interpreter.

Tolerances (max |fused - ref| / max |ref|, per output and per gradient; float64 references):
    float64   1e-12   (only the summation order differs)
    float32   1e-5    (``tl.dot`` in IEEE float32, no TF32)
"""
import math
import warnings

import numpy as np
import pytest
import torch
from ase.build import bulk, molecule

from goc_helpers import batch_of, make_model
from fastcsi.backend import FallbackWarning, override
from fastcsi.errors import FastCSIError
from fastcsi.graph.gemnet_indices import inner_index, ragged_range
from fastcsi.model import extract_features
from fastcsi.model.gemnet_oc.blocks import EfficientInteractionBilinear
from fastcsi.model.gemnet_oc.interaction import interaction_bilinear
from fastcsi.model.gemnet_oc.interaction_cpu import interaction_bilinear_cpu, interaction_bilinear_precontracted
from fastcsi.model.gemnet_oc.interaction_ref import interaction_bilinear_ref
from fastcsi.model.gemnet_oc.interaction_triton import interaction_bilinear_triton


# ------------------------------------------------------------------- the reference vs a direct sum
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
    torch.testing.assert_close(auto, got, rtol=1e-12, atol=1e-12)  # CPU tensors: auto runs the cpu formulation
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


# ------------------------------------------------- the fast kernels vs the reference, the dispatcher
REL_TOL = {torch.float64: 1e-12, torch.float32: 1e-5}
DIFF_ARGS = (0, 1, 2, 6)  # rad_W1, sph, x, weight


def make_case(dtype=torch.float64, agg2=False, num_edges=5, num_in=6, n_sph=3, d_interm=4, d_in=5, d_out=3,
              num_atoms=3, max_per_edge=4, seed=0, shuffle=False):
    """Random op inputs laid out as the GemNet index builders lay them out: triplets sorted by output
    edge with their rank inside it, the angular basis a transposed (E, Kmax, n_sph) matrix, and for
    edge -> atom the radial matrix padded per atom (N, d_interm, K2 * n_sph)."""
    gen = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, max_per_edge + 1, (num_edges,), generator=gen)
    out_idx = torch.repeat_interleave(torch.arange(num_edges), counts)
    out_inner = ragged_range(counts)
    gather_idx = torch.randint(0, num_in, (out_idx.numel(),), generator=gen)
    if shuffle:
        perm = torch.randperm(out_idx.numel(), generator=gen)
        out_idx, out_inner, gather_idx = out_idx[perm], out_inner[perm], gather_idx[perm]
    kmax = int(counts.max()) if num_edges else 0
    sph = torch.randn(num_edges, kmax, n_sph, generator=gen, dtype=dtype).transpose(1, 2)
    x = torch.randn(num_in, d_in, generator=gen, dtype=dtype)
    weight = torch.randn(d_out, d_interm * d_in, generator=gen, dtype=dtype)
    if not agg2:
        rad = torch.randn(num_edges, d_interm, n_sph, generator=gen, dtype=dtype)
        return [rad, sph, x, gather_idx, out_idx, out_inner, weight]
    per_atom = torch.bincount(torch.randint(0, num_atoms, (num_edges,), generator=gen), minlength=num_atoms)
    outer = torch.repeat_interleave(torch.arange(num_atoms), per_atom)
    k2 = int(per_atom.max()) if num_edges else 0
    rad = torch.randn(num_atoms, d_interm, k2 * n_sph, generator=gen, dtype=dtype)
    return [rad, sph, x, gather_idx, out_idx, out_inner, weight, outer, ragged_range(per_atom), num_atoms]


def with_grad(args):
    return [a.detach().clone().requires_grad_(True) if i in DIFF_ARGS else a for i, a in enumerate(args)]


def rel_err(got, want):
    got, want = got.detach(), want.detach()
    if want.numel() == 0:
        return 0.0
    scale = want.abs().max().clamp_min(1e-30)
    return float((got - want).abs().max() / scale)


KERNELS = {"triton": interaction_bilinear_triton, "cpu": interaction_bilinear_cpu}


def compare(args, dtype, kernel="triton"):
    ref_in, fused_in = with_grad(args), with_grad(args)
    out_ref = interaction_bilinear_ref(*ref_in)
    out_fused = KERNELS[kernel](*fused_in)
    assert out_fused.shape == out_ref.shape and out_fused.dtype == dtype
    assert rel_err(out_fused, out_ref) < REL_TOL[dtype]
    grad_out = torch.randn(out_ref.shape, dtype=dtype, generator=torch.Generator().manual_seed(9))
    out_ref.backward(grad_out)
    out_fused.backward(grad_out)
    for i in DIFF_ARGS:
        assert fused_in[i].grad.shape == ref_in[i].grad.shape
        assert rel_err(fused_in[i].grad, ref_in[i].grad) < REL_TOL[dtype], f"gradient of argument {i}"
    return out_ref


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("agg2", [False, True], ids=["edge", "edge_to_atom"])
def test_forward_backward_match_reference(dtype, agg2, kernel):
    out = compare(make_case(dtype, agg2=agg2), dtype, kernel)
    assert out.abs().max() > 0  # the case is not trivially zero


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_unsorted_triplets_match_reference(kernel):
    compare(make_case(torch.float64, shuffle=True, seed=3), torch.float64, kernel)


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_quadruplet_like_widths(kernel):
    # n_sph = 9 (legendre_outer of 3) and d_interm, d_in not powers of two: padding masks matter
    compare(make_case(torch.float32, n_sph=9, d_interm=3, d_in=7, d_out=2, num_edges=3, max_per_edge=6, seed=4),
            torch.float32, kernel)


def test_cpu_kernel_larger_case_and_gradcheck():
    # many triplets per edge, several edges per atom: the slot map and both paddings are exercised
    for agg2 in (False, True):
        compare(make_case(torch.float64, agg2=agg2, num_edges=40, num_in=30, max_per_edge=9, num_atoms=7, seed=11,
                          shuffle=not agg2), torch.float64, "cpu")
    args = with_grad(make_case(torch.float64, agg2=True, num_edges=4, num_in=3, n_sph=2, d_interm=2, d_in=2,
                               d_out=2, num_atoms=2, max_per_edge=3, seed=5))

    def fn(rad, sph, x, weight):
        return interaction_bilinear_cpu(rad, sph, x, *args[3:6], weight, *args[7:])

    assert torch.autograd.gradcheck(fn, (args[0], args[1], args[2], args[6]), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("shuffle", [False, True])
def test_precontracted_basis_matches_reference(shuffle):
    """(rad_W1 @ sph) contracted first, as the model's fused CPU path does: values and gradients."""
    args = make_case(torch.float64, num_edges=12, max_per_edge=5, seed=13, shuffle=shuffle)
    ref_in, pre_in = with_grad(args), with_grad(args)
    want = interaction_bilinear_ref(*ref_in)
    rad, sph, x, gather_idx, out_idx, out_inner, weight = pre_in
    got = interaction_bilinear_precontracted(rad @ sph, x, gather_idx, out_idx, out_inner, weight)
    assert want.abs().max() > 0 and rel_err(got, want) < 1e-12
    grad_out = torch.randn(want.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    want.backward(grad_out)
    got.backward(grad_out)
    for i in DIFF_ARGS:
        assert rel_err(pre_in[i].grad, ref_in[i].grad) < 1e-12, f"gradient of argument {i}"


def test_gradcheck_float64():
    args = with_grad(make_case(torch.float64, agg2=True, num_edges=3, num_in=3, n_sph=2, d_interm=2, d_in=2,
                               d_out=2, num_atoms=2, max_per_edge=2, seed=5))

    def fn(rad, sph, x, weight):
        return interaction_bilinear_triton(rad, sph, x, *args[3:6], weight, *args[7:])

    assert torch.autograd.gradcheck(fn, (args[0], args[1], args[2], args[6]), eps=1e-6, atol=1e-8, fast_mode=True)


def test_double_backward_uses_a_differentiable_path():
    # gradient forces while training differentiate the backward itself (create_graph=True)
    args = make_case(torch.float64, num_edges=3, num_in=3, max_per_edge=3, seed=6)
    results = []
    for fn in (interaction_bilinear_ref, interaction_bilinear_triton):
        inputs = with_grad(args)
        out = fn(*inputs)
        (grad_x,) = torch.autograd.grad(out.square().sum(), inputs[2], create_graph=True)
        grad_x.square().sum().backward()
        results.append([inputs[i].grad for i in (0, 1, 6)])
    for got, want in zip(results[1], results[0]):
        assert rel_err(got, want) < 1e-12


def test_double_backward_with_inputs_that_share_history():
    # GemNet-OC's later blocks get an x that is itself a function of the bases: the double backward
    # must differentiate w.r.t. the saved inputs, not through them (a total derivative was off by
    # ~1e-2 in parameter gradients of an energy + force loss)
    base = make_case(torch.float64, num_edges=4, num_in=4, max_per_edge=3, seed=11)
    results = []
    for fn in (interaction_bilinear_ref, interaction_bilinear_triton):
        p = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, requires_grad=True)
        weight = base[6].detach().clone().requires_grad_(True)
        rad, sph = base[0] * (1 + p[0]), base[1] * (1 + p[1])
        x = base[2] * (1 + p[2]) + 0.01 * (rad.sum() + sph.sum())
        energy = fn(rad, sph, x, *base[3:6], weight).sin().sum()
        (force,) = torch.autograd.grad(energy, p, create_graph=True)
        force.square().sum().backward()
        results.append((force.detach(), p.grad, weight.grad))
    for got, want in zip(results[1], results[0]):
        assert rel_err(got, want) < 1e-10


def test_batch_independence():
    # two problems stacked into one (indices offset) give each problem's own rows
    a = make_case(torch.float64, num_edges=3, max_per_edge=3, seed=7)
    b = make_case(torch.float64, num_edges=2, max_per_edge=3, seed=8)
    b[6] = a[6]  # one shared weight, as in a model
    kmax = max(a[1].shape[2], b[1].shape[2])

    def pad(sph):
        return torch.nn.functional.pad(sph.transpose(1, 2), (0, 0, 0, kmax - sph.shape[2])).transpose(1, 2)

    stacked = [torch.cat([a[0], b[0]]), torch.cat([pad(a[1]), pad(b[1])]), torch.cat([a[2], b[2]]),
               torch.cat([a[3], b[3] + a[2].shape[0]]), torch.cat([a[4], b[4] + a[1].shape[0]]),
               torch.cat([a[5], b[5]]), a[6]]
    together = interaction_bilinear_triton(*stacked)
    alone = torch.cat([interaction_bilinear_triton(*a), interaction_bilinear_triton(*b)])
    assert rel_err(together, alone) < 1e-14


@pytest.mark.parametrize("kernel", list(KERNELS))
@pytest.mark.parametrize("agg2", [False, True], ids=["edge", "edge_to_atom"])
def test_no_triplets(agg2, kernel):
    args = make_case(torch.float64, agg2=agg2, max_per_edge=0)
    assert args[3].numel() == 0 and args[1].shape[2] == 0
    out = compare(args, torch.float64, kernel)
    assert out.shape[0] == (3 if agg2 else 5) and not out.any()


@pytest.mark.parametrize("kernel", list(KERNELS))
def test_one_edge_and_no_edges(kernel):
    compare(make_case(torch.float64, num_edges=1, num_in=1, max_per_edge=1, seed=2), torch.float64, kernel)
    args = make_case(torch.float64, num_edges=0, num_in=2, max_per_edge=0)
    out = KERNELS[kernel](*args)
    assert out.shape == (0, 3)


def test_nan_propagates_like_reference():
    args = make_case(torch.float64, seed=1)
    args[2][args[3][0]] = math.nan  # one gathered row
    want = interaction_bilinear_ref(*args)
    for kernel in KERNELS.values():
        got = kernel(*args)
        assert torch.isnan(want).any() and torch.equal(torch.isnan(got), torch.isnan(want))
        finite = ~torch.isnan(want)
        assert rel_err(got[finite], want[finite]) < 1e-12


def test_dispatcher_choices():
    args = make_case(torch.float64, num_edges=2, max_per_edge=2)
    want = interaction_bilinear_ref(*args)
    with warnings.catch_warnings():
        warnings.simplefilter("error", FallbackWarning)  # CPU auto is the "cpu" formulation, no fallback
        assert torch.equal(interaction_bilinear(*args), interaction_bilinear_cpu(*args))
    assert torch.equal(interaction_bilinear(*args, backend="ref"), want)
    assert rel_err(interaction_bilinear(*args, backend="cpu"), want) < 1e-12
    assert rel_err(interaction_bilinear(*args, backend="triton"), want) < 1e-12  # interpreter here
    for backend in ("cuda", "fast"):
        with pytest.raises(FastCSIError):
            interaction_bilinear(*args, backend=backend)


def check_interaction_modules(model):
    """The modules ``override(interaction=...)`` switches: guards the model tests below against a
    model that runs no interaction op."""
    modules = [m for m in model.modules() if isinstance(m, EfficientInteractionBilinear)]
    assert len(modules) == 8  # 2 blocks x (triplet, quadruplet, atom-edge, edge-atom)


def count_paths(monkeypatch):
    """Calls per interaction path (every module of the model goes through these names)."""
    from fastcsi.model.gemnet_oc import blocks, interaction, interaction_triton

    counts = {}

    def counted(module, name, label):
        real = getattr(module, name)

        def wrapper(*args, **kwargs):
            counts[label] = counts.get(label, 0) + 1
            return real(*args, **kwargs)
        monkeypatch.setattr(module, name, wrapper)

    counted(interaction, "interaction_bilinear_ref", "ref")
    counted(interaction, "interaction_bilinear_cpu", "cpu")
    counted(blocks, "interaction_bilinear_precontracted", "cpu")
    counted(interaction_triton, "interaction_bilinear_triton", "triton")
    return counts


def test_override_switches_every_interaction_of_the_model(monkeypatch):
    """``override(interaction=...)`` reaches all 8 interactions of a forward pass (so the model
    comparisons below really compare two paths); without it CPU tensors run the "cpu" paths."""
    water, _ = small_structures()
    model = make_model(direct_forces=True, max_neighbors=6)
    check_interaction_modules(model)
    batch = batch_of(water)
    counts = count_paths(monkeypatch)
    model(batch)
    assert counts == {"cpu": 8}
    counts.clear()
    with override(interaction="ref"):
        model(batch)
    assert counts == {"ref": 8}
    counts.clear()
    with override(interaction="ref"):
        interaction_bilinear(*make_case(torch.float64, num_edges=2, max_per_edge=2), backend="cpu")
    assert counts == {"cpu": 1}  # an explicit backend argument wins over the override


def small_structures():
    water = molecule("H2O")
    water.rattle(0.05, seed=1)
    # one-atom periodic crystal, strained so images do not tie in distance
    metal = bulk("Cu", "fcc", a=3.6)
    metal.set_cell(np.asarray(metal.cell) @ (np.eye(3) + 0.03 * np.array([[1, 0.2, 0], [0, -0.5, 0.1], [0, 0, 0.7]])),
                   scale_atoms=True)
    return water, metal


def test_tiny_model_fused_equals_reference():
    """Energy, forces (direct and gradient) and features of the float64 tiny model agree."""
    water, metal = small_structures()
    hp = dict(max_neighbors=6)  # few edges: the interpreter runs one program per output row
    for direct in (True, False):
        # gradient forces run the backward kernel (grads through x, sph and rad); one structure will do
        batch = batch_of(water, metal) if direct else batch_of(water)
        model = make_model(direct_forces=direct, **hp)
        check_interaction_modules(model)
        outputs = {}
        for backend in ("ref", "triton"):
            with override(interaction=backend):
                out = model(batch)
                outputs[backend] = {k: v.detach() for k, v in out.items()}
                if direct:
                    outputs[backend]["features"] = extract_features(model, batch)
        for key, want in outputs["ref"].items():
            got = outputs["triton"][key]
            assert want.abs().max() > 0
            assert rel_err(got, want) < 1e-10, f"{key} (direct_forces={direct})"


def test_tiny_model_fused_float32(monkeypatch):
    water, _ = small_structures()
    model = make_model(direct_forces=True).float()
    batch = batch_from_atoms_f32([water])
    check_interaction_modules(model)
    with override(interaction="ref"):
        want = model(batch)
    counts = count_paths(monkeypatch)
    with override(interaction="triton"):
        got = model(batch)
    assert counts == {"triton": 8}
    for key in ("energy", "forces"):
        assert rel_err(got[key].detach(), want[key].detach()) < 1e-5


def batch_from_atoms_f32(atoms):
    from fastcsi.data.batch import batch_from_atoms

    return batch_from_atoms(atoms, dtype=torch.float32)


def test_water_has_triplets_and_quadruplets():
    # guards the model test above against silently running an empty interaction
    from fastcsi.model.gemnet_oc.model import build_graphs

    water, metal = small_structures()
    model = make_model(direct_forces=True, max_neighbors=6)
    g = build_graphs(model.prepare(batch_of(water, metal)), model.hparams)
    assert g["trip_e2e"]["in"].numel() > 0 and g["quad"]["out"].numel() > 0
    assert g["trip_a2e"]["in"].numel() > 0 and g["trip_e2a"]["in"].numel() > 0
