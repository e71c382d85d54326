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


def test_cuda_backend_code_on_cpu_tensors():
    # the float64 GEMM of backend="cuda" (needs a CUDA tensor through the dispatcher) runs on any
    # device: checked here on CPU tensors, several blocks merged
    from fastcsi.stats.covariance_cuda import chunk_moments_cuda

    x = torch.from_numpy(_offset_data(3000, 24)).to(torch.float32)
    exact = x.to(torch.float64).numpy()
    count, mean, scatter = chunk_moments_cuda(x, block_rows=700)
    assert count == 3000
    assert _rel(scatter / (count - 1), np.cov(exact, rowvar=False)) <= 1e-12
    assert np.abs(mean - exact.mean(axis=0)).max() <= 1e-12 * np.abs(exact).max()


def test_cpu_numpy_input_and_method_agree():
    x = _offset_data(5000, 17, seed=1).astype(np.float32)
    reference = np.cov(x.astype(np.float64), rowvar=False)
    for method in ("native", "syrk", "gemm"):
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


# ---------------------------------------------------------------------- native SYRK (csrc/covariance.cpp)
from fastcsi import _native  # noqa: E402
from fastcsi.backend import FallbackWarning  # noqa: E402
from fastcsi.stats import covariance_cpu  # noqa: E402

needs_native = pytest.mark.skipif(
    not covariance_cpu.native_available(), reason=f"fastcsi._C without covariance_moments: {_native.NATIVE_ERROR}"
)
# Both micro-kernels run here when the CPU has AVX2+FMA; the portable one always.
NATIVE_KERNELS = ["portable"] + (["avx2"] if _native.has("covariance_kernel_isa") and _native.native.covariance_kernel_isa() == "avx2" else [])


def _native_moments(x, **options):
    count, mean, scatter = _native.native.covariance_moments(x, **options)
    return int(count), mean, scatter


def _exact_moments(x):
    x64 = np.asarray(x, dtype=np.float64)
    mean = x64.mean(axis=0) if len(x64) else np.zeros(x64.shape[1])
    centred = x64 - mean
    return mean, centred.T @ centred


@needs_native
@pytest.mark.parametrize("kernel", NATIVE_KERNELS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("d", [1, 3, 7, 13, 257])
def test_native_matches_float64_oracle_for_ragged_widths(d, dtype, kernel):
    # d not a multiple of the 4-wide panel or the 12-wide tile; rows cross block (100) and packing
    # depth (40) boundaries, including a final block of one row; offset 1e3 as in the features.
    for rows in (0, 1, 2, 39, 40, 41, 201):
        x = _offset_data(rows, d, seed=rows + d).astype(dtype)
        count, mean, scatter = _native_moments(x, block_rows=100, depth=40, kernel=kernel, num_threads=1)
        mean_ref, scatter_ref = _exact_moments(x)
        assert count == rows and mean.shape == (d,) and scatter.shape == (d, d)
        assert np.abs(mean - mean_ref).max(initial=0) <= 1e-12 * 1e3
        if rows < 2:
            assert not scatter.any()
            continue
        assert _rel(scatter, scatter_ref) <= 1e-12
        assert np.array_equal(scatter, scatter.T)


@needs_native
@pytest.mark.parametrize("kernel", NATIVE_KERNELS)
def test_native_large_offset_against_np_cov(kernel):
    # Mean 1e3, std ~1: a raw sum of squares would lose ~6 digits (see the guard test above).
    x = _offset_data(4000, 40, seed=11).astype(np.float32)
    count, _, scatter = _native_moments(x, block_rows=512, kernel=kernel, num_threads=1)
    assert _rel(scatter / (count - 1), np.cov(x.astype(np.float64), rowvar=False)) <= 1e-12


@needs_native
def test_native_result_is_bitwise_independent_of_threads():
    # 8 pieces (fixed by the size), handed to threads dynamically and merged in row order.
    x = _offset_data(12000, 100, seed=12).astype(np.float32)
    _, mean_1, scatter_1 = _native_moments(x, block_rows=256, num_threads=1)
    assert _rel(scatter_1, _exact_moments(x)[1]) <= 1e-12
    for threads in (2, 3, 5, 0):
        for _ in range(2):
            _, mean_t, scatter_t = _native_moments(x, block_rows=256, num_threads=threads)
            assert np.array_equal(mean_t, mean_1) and np.array_equal(scatter_t, scatter_1), threads


@needs_native
def test_native_reads_any_strides():
    base = _offset_data(900, 40, seed=13)
    views = {
        "rows step 2": base.astype(np.float32)[::2],
        "columns step 3": base.astype(np.float32)[:, ::3],
        "fortran order": np.asfortranarray(base),
        "negative strides": base[::-1, ::-1],
    }
    for name, view in views.items():
        count, mean, scatter = chunk_moments(view, backend="cpu", block_rows=128)
        mean_ref, scatter_ref = _exact_moments(view)
        assert count == len(view), name
        assert np.abs(mean - mean_ref).max() <= 1e-12 * 1e3, name
        assert _rel(scatter, scatter_ref) <= 1e-12, name
    tensor = torch.from_numpy(base.astype(np.float32)).t().contiguous().t()[::3]  # column-major rows
    assert not tensor.is_contiguous()
    _, _, scatter = chunk_moments(tensor, backend="cpu")
    assert _rel(scatter, _exact_moments(tensor.numpy())[1]) <= 1e-12


@needs_native
def test_native_nan_and_inf_mark_their_columns_like_the_blas_path():
    x = _offset_data(700, 9, seed=14).astype(np.float32)
    x[333, 4] = np.nan
    x[500, 7] = np.inf
    _, mean_native, scatter_native = chunk_moments(x, backend="cpu", block_rows=128)
    with np.errstate(invalid="ignore"):  # the BLAS path warns on the NaN it propagates
        _, mean_gemm, scatter_gemm = chunk_moments(x, backend="cpu", block_rows=128, method="gemm")
    assert np.array_equal(np.isfinite(mean_native), np.isfinite(mean_gemm))
    assert np.array_equal(np.isfinite(scatter_native), np.isfinite(scatter_gemm))
    assert not np.isfinite(scatter_native[4, 4]) and not np.isfinite(scatter_native[7, 7])
    clean = [0, 1, 2, 3, 5, 6, 8]
    assert np.isfinite(scatter_native[np.ix_(clean, clean)]).all()
    from fastcsi.stats import FeatureStats

    stats = FeatureStats(9)
    with pytest.raises(FastCSIError, match="NaN or inf"):
        stats.update(x)
    assert stats.count == 0  # nothing was added


@needs_native
def test_native_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel"):
        _native.native.covariance_moments(np.zeros((4, 3)), kernel="avx512")
    with pytest.raises(ValueError, match="block_rows"):
        _native.native.covariance_moments(np.zeros((4, 3)), block_rows=0)
    with pytest.raises(ValueError, match="float32 or float64"):
        _native.native.covariance_moments(np.zeros((4, 3), dtype=np.int64))
    with pytest.raises(ValueError, match="unknown method"):
        chunk_moments(np.zeros((4, 3)), backend="cpu", method="blas")


def test_cpu_falls_back_to_blas_with_a_warning_without_the_extension(monkeypatch):
    monkeypatch.setattr(covariance_cpu, "native_available", lambda: False)
    x = _offset_data(300, 6, seed=15)
    with pytest.warns(FallbackWarning, match="native kernel unavailable"):
        count, _, scatter = chunk_moments(x, backend="cpu")
    assert count == 300 and _rel(scatter, _exact_moments(x)[1]) <= 1e-12


@needs_native
def test_feature_stats_streaming_matches_np_cov():
    from fastcsi.stats import FeatureStats

    x = _offset_data(5000, 64, seed=16).astype(np.float32)
    stats = FeatureStats(64)
    for start in range(0, 5000, 1234):
        stats.update(x[start : start + 1234])
    assert _rel(stats.covariance(), np.cov(x.astype(np.float64), rowvar=False)) <= 1e-12
