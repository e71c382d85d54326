"""Covariance op: every backend against the float64 reference and np.cov.

Tolerance table (max |error| / max |np.cov|, np.cov computed in float64 on the same input values):
    backend   float64 in   float32 in   bfloat16 in
    ref       1e-12        1e-12        1e-12
    cpu       1e-12        1e-12        1e-12
    triton    1e-5         1e-5         1e-5     (float32 tiles, "ieee"; bound ~2e-6 in its header)
"""
import numpy as np
import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.stats.covariance import chunk_moments, merge_moments

TOL = {"ref": 1e-12, "cpu": 1e-12, "triton": 1e-5}


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


def _offset_data(n, d, seed=0, offset=1e3):
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ mixing + offset + rng.standard_normal(d)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("backend", ["ref", "cpu"])
def test_cpu_backends_match_np_cov_with_large_offset(backend, dtype):
    x = torch.from_numpy(_offset_data(3000, 24)).to(dtype)
    exact = x.to(torch.float64).numpy()  # the values the kernel actually sees
    count, mean, scatter = chunk_moments(x, backend=backend, **({"block_rows": 700} if backend == "cpu" else {}))
    assert count == 3000
    assert _rel(scatter / (count - 1), np.cov(exact, rowvar=False)) <= TOL[backend]
    assert np.abs(mean - exact.mean(axis=0)).max() <= 1e-12 * np.abs(exact).max()


def test_cpu_numpy_input_and_method_agree():
    x = _offset_data(5000, 17, seed=1).astype(np.float32)
    reference = np.cov(x.astype(np.float64), rowvar=False)
    for method in ("syrk", "gemm"):
        count, _, scatter = chunk_moments(x, backend="cpu", block_rows=1024, method=method)
        assert _rel(scatter / (count - 1), reference) <= 1e-12
        assert np.array_equal(scatter, scatter.T)


def test_naive_sum_of_squares_would_fail_here():
    # Guards the test above: the offset is large enough that a one-pass E[x^2] - E[x]^2 loses digits.
    x = _offset_data(3000, 8, seed=2)
    naive = (x.T @ x - len(x) * np.outer(x.mean(0), x.mean(0))) / (len(x) - 1)
    assert _rel(naive, np.cov(x, rowvar=False)) > 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_triton_matches_reference_under_interpreter(dtype):
    # Small on purpose: the Triton interpreter is slow. d=40 spans two 32-wide tiles (a masked edge).
    x = torch.from_numpy(_offset_data(70, 40, seed=3)).to(dtype)
    count_ref, mean_ref, scatter_ref = chunk_moments(x, backend="ref")
    count, mean, scatter = chunk_moments(x, backend="triton")
    assert count == count_ref
    assert np.abs(mean - mean_ref).max() <= 1e-12 * 1e3
    assert _rel(scatter, scatter_ref) <= TOL["triton"]
    assert np.array_equal(scatter, scatter.T)


def test_degenerate_inputs():
    for backend in ("ref", "cpu"):
        count, mean, scatter = chunk_moments(np.zeros((0, 5), dtype=np.float32), backend=backend)
        assert count == 0 and mean.shape == (5,) and scatter.shape == (5, 5) and not scatter.any()
        count, mean, scatter = chunk_moments(np.arange(5.0)[None], backend=backend)
        assert count == 1 and np.array_equal(mean, np.arange(5.0)) and not scatter.any()
    with pytest.raises(FastCSIError, match="2-D"):
        chunk_moments(np.zeros(5))
    with pytest.raises(FastCSIError, match="unknown backend"):
        chunk_moments(np.zeros((3, 2)), backend="gpu")
    with pytest.raises(FastCSIError, match="not available"):
        chunk_moments(np.zeros((3, 2)), backend="cuda")


def test_chan_merge_equals_whole_for_any_split():
    x = _offset_data(400, 6, seed=4)
    whole = chunk_moments(x, backend="ref")
    rng = np.random.default_rng(0)
    for _ in range(5):
        cuts = np.sort(rng.choice(np.arange(1, 400), size=3, replace=False))
        acc = (0, np.zeros(6), np.zeros((6, 6)))
        for part in np.split(x, cuts):
            acc = merge_moments(*acc, *chunk_moments(part, backend="ref"))
        assert acc[0] == 400
        assert np.abs(acc[1] - whole[1]).max() <= 1e-12 * 1e3
        assert _rel(acc[2], whole[2]) <= 1e-12


def test_row_order_and_batching_do_not_matter():
    x = _offset_data(1000, 9, seed=5)
    permuted = x[np.random.default_rng(1).permutation(1000)]
    _, mean_a, scatter_a = chunk_moments(x, backend="cpu", block_rows=128)
    _, mean_b, scatter_b = chunk_moments(permuted, backend="cpu", block_rows=333)
    assert np.abs(mean_a - mean_b).max() <= 1e-12 * 1e3
    assert _rel(scatter_a, scatter_b) <= 1e-12
