"""Physical invariances of the tiny GemNet-OC in float64 (direct and gradient forces)."""
import copy

import numpy as np
import pytest
import torch

from goc_helpers import batch_of, random_rotation

KINDS = ["molecule", "slab", "bulk"]
# float64 everywhere: only rounding separates the two sides
RTOL, ATOL = 1e-9, 1e-9


def run(model, *atoms):
    out = model(batch_of(*atoms))
    return out["energy"].detach(), out["forces"].detach()


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("forces", ["direct", "grad"])
def test_rotation_and_translation(kind, forces, structures, model_direct, model_grad):
    model = model_direct if forces == "direct" else model_grad
    atoms = structures[kind]
    e0, f0 = run(model, atoms)
    rot = random_rotation(7)
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T + np.array([0.3, -1.2, 2.5])
    moved.cell = np.asarray(atoms.cell) @ rot.T
    e1, f1 = run(model, moved)
    torch.testing.assert_close(e1, e0, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(f1, f0 @ torch.as_tensor(rot.T), rtol=1e-7, atol=1e-8)
    assert f0.abs().max() > 1e-6  # forces are not trivially zero


@pytest.mark.parametrize("kind", KINDS)
def test_permutation(kind, structures, model_direct):
    atoms = structures[kind]
    perm = np.random.default_rng(3).permutation(len(atoms))
    e0, f0 = run(model_direct, atoms)
    e1, f1 = run(model_direct, atoms[perm])
    torch.testing.assert_close(e1, e0, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(f1, f0[perm], rtol=1e-7, atol=1e-8)


@pytest.mark.parametrize("kind", ["slab", "bulk"])
def test_periodic_image_choice(kind, structures, model_grad):
    atoms = structures[kind]
    e0, f0 = run(model_grad, atoms)
    shifted = atoms.copy()
    cell = np.asarray(atoms.cell)
    shifted.positions[0] += cell[0] - cell[1]
    shifted.positions[-1] -= cell[0]
    e1, f1 = run(model_grad, shifted)
    torch.testing.assert_close(e1, e0, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(f1, f0, rtol=1e-7, atol=1e-8)
    wrapped = atoms.copy()
    wrapped.wrap()
    e2, _ = run(model_grad, wrapped)
    torch.testing.assert_close(e2, e0, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("kind", KINDS)
def test_gradient_forces_are_minus_dE_dx(kind, structures, model_grad):
    atoms = structures[kind]
    _, forces = run(model_grad, atoms)
    h = 1e-5
    for atom, axis in [(0, 0), (len(atoms) - 1, 2)]:
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += h
        minus.positions[atom, axis] -= h
        numeric = -(run(model_grad, plus)[0] - run(model_grad, minus)[0]) / (2 * h)
        assert abs(float(numeric) - float(forces[atom, axis])) < 1e-6 * max(1.0, abs(float(numeric)))


def test_gradient_forces_sum_to_zero(structures, model_grad, model_direct):
    # translation invariance of E makes conservative forces sum to zero (molecule and periodic);
    # direct forces carry no such guarantee, only finiteness
    for kind in KINDS:
        _, f = run(model_grad, structures[kind])
        torch.testing.assert_close(f.sum(0), torch.zeros(3, dtype=f.dtype), rtol=0, atol=1e-10)
    _, f = run(model_direct, structures["molecule"])
    assert torch.isfinite(f).all() and f.abs().sum() > 0


@pytest.mark.parametrize("forces", ["direct", "grad"])
def test_batch_equals_each_alone(forces, structures, model_direct, model_grad):
    model = model_direct if forces == "direct" else model_grad
    items = [structures["molecule"], structures["slab"], structures["bulk"], structures["molecule"]]
    e_all, f_all = run(model, *items)
    start = 0
    for i, atoms in enumerate(items):
        e, f = run(model, atoms)
        torch.testing.assert_close(e_all[i : i + 1], e, rtol=RTOL, atol=ATOL)
        torch.testing.assert_close(f_all[start : start + len(atoms)], f, rtol=1e-8, atol=1e-9)
        start += len(atoms)


def test_degenerate_inputs(model_direct, model_grad):
    from ase import Atoms

    from fastcsi.errors import FastCSIError

    single = Atoms("O", positions=[[0.0, 0.0, 0.0]])
    far_pair = Atoms("HH", positions=[[0, 0, 0], [0, 0, 50.0]])
    for model in (model_direct, model_grad):
        e, f = run(model, single, far_pair)
        assert torch.isfinite(e).all() and e.shape == (2,)
        # isolated atoms feel no force; the energy is extensive (two isolated H = 2 x one H)
        torch.testing.assert_close(f, torch.zeros_like(f))
    e_h, _ = run(model_direct, Atoms("H", positions=[[0, 0, 0]]))
    e_pair, _ = run(model_direct, far_pair)
    torch.testing.assert_close(e_pair, 2 * e_h)
    intensive = copy.deepcopy(model_direct)
    intensive.hparams = {**intensive.hparams, "extensive": False}
    torch.testing.assert_close(run(intensive, far_pair)[0], e_h)
    from fastcsi.data.batch import collate

    empty = model_grad(collate([], dtype=torch.float64))
    assert empty["energy"].shape == (0,) and empty["forces"].shape == (0, 3)
    nan = Atoms("HH", positions=[[0, 0, 0], [0, 0, np.nan]])
    with pytest.raises(FastCSIError, match="NaN"):
        model_direct(batch_of(nan))


def test_float32_matches_float64(structures, model_direct):
    import copy

    model32 = copy.deepcopy(model_direct).float()
    from fastcsi.data.batch import batch_from_atoms

    b = batch_from_atoms([structures["molecule"], structures["slab"]], dtype=torch.float32)
    out32 = model32(b)
    e64, f64 = run(model_direct, structures["molecule"], structures["slab"])
    torch.testing.assert_close(out32["energy"].double(), e64, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out32["forces"].double(), f64, rtol=1e-3, atol=1e-4)


def test_gradient_forces_under_inference_mode(structures, model_grad):
    e0, f0 = run(model_grad, structures["slab"])
    with torch.inference_mode():
        out = model_grad(batch_of(structures["slab"]))
    torch.testing.assert_close(out["energy"], e0, rtol=0, atol=0)
    torch.testing.assert_close(out["forces"], f0, rtol=0, atol=0)


@pytest.mark.parametrize("overrides", [
    {"quad_interaction": False},
    {"atom_edge_interaction": False, "edge_atom_interaction": False, "atom_interaction": False},
    {"sbf": {"name": "spherical_harmonics"}, "cbf": {"name": "gaussian"}},
    {"rbf": {"name": "spherical_bessel"}, "envelope": {"name": "exponential"}, "absolute_rbf_cutoff": None},
    {"rbf": {"name": "bernstein"}, "sbf": {"name": "gaussian_outer"}, "num_atom_emb_layers": 0, "scale_basis": True},
])
def test_variants_are_invariant(overrides, structures):
    from goc_helpers import make_model

    model = make_model(direct_forces=False, **overrides)
    atoms = structures["slab"]
    e0, f0 = run(model, atoms)
    rot = random_rotation(11)
    moved = atoms.copy()
    moved.positions = atoms.positions @ rot.T
    moved.cell = np.asarray(atoms.cell) @ rot.T
    e1, f1 = run(model, moved)
    torch.testing.assert_close(e1, e0, rtol=RTOL, atol=ATOL)
    torch.testing.assert_close(f1, f0 @ torch.as_tensor(rot.T), rtol=1e-7, atol=1e-8)
    assert torch.isfinite(f0).all() and f0.abs().max() > 1e-6
