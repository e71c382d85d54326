"""GPU-only paths against their CPU references, on a real device.

Skipped everywhere else (see tests/conftest.py); run on a CUDA machine with
``FASTCSI_TEST_GPU=1 python -m pytest -q -m gpu`` (``tools/gpu_check.py`` does, as its
``pytest_gpu`` item). Tolerances: float64 1e-10 relative; float32 kernels as stated per test.
"""
import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


def _atoms_batch(device, dtype=torch.float64):
    from ase.build import bulk, fcc111, molecule

    from fastcsi.data import batch_from_atoms

    slab = fcc111("Cu", size=(3, 3, 3), vacuum=6.0)
    frames = [molecule("CH3CH2OH"), bulk("Cu", "fcc", a=3.6, cubic=True).repeat((3, 3, 3)), slab]
    rng = np.random.default_rng(0)
    for atoms in frames:
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
    return batch_from_atoms(frames, dtype=dtype, device=device)


@pytest.mark.parametrize("method_cutoff", [4.0, 6.0])
def test_radius_graph_triton_equals_reference(method_cutoff):
    from fastcsi.graph import radius_graph

    got = radius_graph(_atoms_batch("cuda"), method_cutoff, backend="triton")
    want = radius_graph(_atoms_batch("cpu"), method_cutoff, backend="ref")
    assert torch.equal(got.edge_index.cpu(), want.edge_index)
    assert torch.equal(got.cell_offsets.cpu(), want.cell_offsets)
    torch.testing.assert_close(got.distances.cpu(), want.distances, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend, rtol", [("triton", 1e-5), ("cuda", 1e-10)])
def test_covariance_on_the_device_equals_reference(backend, rtol):
    from fastcsi.stats import FeatureStats

    rng = np.random.default_rng(1)
    x = rng.standard_normal((5000, 96)) + 10.0
    want = FeatureStats(96).update(x, backend="ref")
    got = FeatureStats(96).update(torch.tensor(x, dtype=torch.float32 if backend == "triton" else torch.float64,
                                               device="cuda"), backend=backend)
    np.testing.assert_allclose(got.mean, want.mean, rtol=rtol, atol=rtol)
    np.testing.assert_allclose(got.covariance(), want.covariance(), rtol=rtol, atol=rtol * np.abs(want.covariance()).max())


def test_frechet_on_the_device_equals_reference():
    from fastcsi.stats import frechet_distance

    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((800, 64)), rng.standard_normal((800, 64)) * 1.5
    args = [a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T)]
    want = frechet_distance(*args, backend="ref")
    got = frechet_distance(*[torch.tensor(v, device="cuda") for v in args], backend="cuda")
    assert got == pytest.approx(want, rel=1e-10)


@pytest.mark.parametrize("dtype, rtol", [(torch.float64, 1e-10), (torch.float32, 1e-4)])
def test_gemnet_oc_on_the_device_equals_cpu(dtype, rtol):
    from fastcsi.model import build_model

    torch.manual_seed(0)
    model = build_model("gemnet-oc-tiny").to(dtype)
    cpu = model(_atoms_batch("cpu", dtype))
    gpu = model.to("cuda")(_atoms_batch("cuda", dtype))
    for key in ("energy", "forces"):
        torch.testing.assert_close(gpu[key].cpu(), cpu[key], rtol=rtol, atol=rtol * float(cpu[key].detach().abs().max()))
