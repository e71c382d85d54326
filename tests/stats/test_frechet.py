"""Fréchet distance: agreement with the sqrtm formula, closed forms, symmetry, singular inputs.

Tolerances (float64): vs the scipy.linalg.sqrtm formula on well-conditioned inputs <= 1e-10 relative;
between our backends <= 1e-10 relative; identical distributions -> |FD| <= 1e-10 * (tr S1 + tr S2).
"""
import numpy as np
import pytest
import scipy.linalg
import torch

from fastcsi.errors import FastCSIError
from fastcsi.stats import frechet as frechet_module
from fastcsi.stats import frechet_distance, frechet_terms


@pytest.fixture(params=["ref", "cpu", "torch"])
def backend(request, monkeypatch):
    """The backend name to pass; "torch" runs the ``cuda`` backend (torch.linalg) through the
    dispatcher on CPU tensors, as if they were on a CUDA device (the same code; no GPU here)."""
    if request.param == "torch":
        monkeypatch.setattr(frechet_module, "_on_cuda", lambda x: True)
        return "cuda"
    return request.param


def _gaussian(d, n, seed, scale=1.0, shift=0.0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d)) @ (rng.standard_normal((d, d)) / np.sqrt(d) + np.eye(d)) * scale + shift
    return x.mean(0), np.atleast_2d(np.cov(x, rowvar=False))


def _sqrtm_formula(mu1, s1, mu2, s2):
    root = scipy.linalg.sqrtm(s1 @ s2).real
    return float((mu1 - mu2) @ (mu1 - mu2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


@pytest.mark.parametrize("d", [1, 7, 64])
def test_matches_sqrtm_formula(backend, d):
    mu1, s1 = _gaussian(d, 5 * d + 20, seed=d)
    mu2, s2 = _gaussian(d, 5 * d + 20, seed=d + 100, scale=1.5, shift=0.3)
    expected = _sqrtm_formula(mu1, s1, mu2, s2)
    assert abs(frechet_distance(mu1, s1, mu2, s2, backend=backend) - expected) <= 1e-10 * abs(expected)


def test_torch_inputs_and_terms():
    mu1, s1 = _gaussian(10, 80, seed=1)
    mu2, s2 = _gaussian(10, 80, seed=2, shift=1.0)
    mean_term, trace_term = frechet_terms(torch.tensor(mu1), torch.tensor(s1), mu2, s2)
    assert mean_term == pytest.approx(float((mu1 - mu2) @ (mu1 - mu2)), rel=1e-14)
    assert mean_term + trace_term == pytest.approx(_sqrtm_formula(mu1, s1, mu2, s2), rel=1e-10)
    assert isinstance(frechet_distance(mu1, s1, mu2, s2), float)


def test_identical_distributions_give_zero(backend):
    mu, s = _gaussian(50, 300, seed=3)
    assert abs(frechet_distance(mu, s, mu, s, backend=backend)) <= 1e-10 * 2 * np.trace(s)


def test_diagonal_closed_form(backend):
    rng = np.random.default_rng(4)
    a, b = rng.uniform(0.1, 3, 20), rng.uniform(0.1, 3, 20)
    mu1, mu2 = rng.standard_normal(20), rng.standard_normal(20)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b), backend=backend)
    assert got == pytest.approx(expected, rel=1e-12)


def test_symmetric_in_arguments(backend):
    mu1, s1 = _gaussian(30, 200, seed=5)
    mu2, s2 = _gaussian(30, 200, seed=6, scale=0.7)
    forward = frechet_distance(mu1, s1, mu2, s2, backend=backend)
    assert frechet_distance(mu2, s2, mu1, s1, backend=backend) == pytest.approx(forward, rel=1e-10)


def test_rank_deficient_covariances_are_finite_and_agree(backend):
    # fewer samples than dimensions: both covariances singular; one feature constant.
    rng = np.random.default_rng(7)
    x, y = rng.standard_normal((10, 40)), rng.standard_normal((15, 40)) + 0.2
    x[:, 3] = 1.0
    mu1, s1, mu2, s2 = x.mean(0), np.cov(x, rowvar=False), y.mean(0), np.cov(y, rowvar=False)
    got = frechet_distance(mu1, s1, mu2, s2, backend=backend)
    assert np.isfinite(got) and isinstance(got, float)
    reference = frechet_distance(mu1, s1, mu2, s2, backend="ref")
    assert got == pytest.approx(reference, rel=1e-8)
    # zero covariances: FD is the squared mean distance
    assert frechet_distance(mu1, np.zeros((40, 40)), mu2, np.zeros((40, 40)), backend=backend) == pytest.approx(
        float((mu1 - mu2) @ (mu1 - mu2)), rel=1e-12
    )


def test_bad_inputs_raise_clear_errors():
    mu, s = _gaussian(4, 30, seed=8)
    bad = s.copy()
    bad[0, 1] = np.nan
    with pytest.raises(FastCSIError, match="NaN or inf"):
        frechet_distance(mu, bad, mu, s)
    with pytest.raises(FastCSIError, match="NaN or inf"):
        frechet_distance(mu * np.inf, s, mu, s)
    with pytest.raises(FastCSIError, match="shape"):
        frechet_distance(mu, s, mu[:3], s[:3, :3])
    with pytest.raises(FastCSIError, match="not available"):
        frechet_distance(mu, s, mu, s, backend="cuda")
    with pytest.raises(FastCSIError, match="not available"):
        frechet_distance(mu, s, mu, s, backend="triton")


@pytest.mark.parametrize("backend", ["cpu", "torch"], indirect=True)
def test_invariant_under_common_rotation_and_translation(backend):
    mu1, s1 = _gaussian(12, 100, seed=9)
    mu2, s2 = _gaussian(12, 100, seed=10, scale=1.3)
    q, _ = np.linalg.qr(np.random.default_rng(11).standard_normal((12, 12)))
    shift = np.full(12, 1e3)
    before = frechet_distance(mu1, s1, mu2, s2, backend=backend)
    after = frechet_distance(q @ mu1 + shift, q @ s1 @ q.T, q @ mu2 + shift, q @ s2 @ q.T, backend=backend)
    assert after == pytest.approx(before, rel=1e-9)
