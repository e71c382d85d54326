"""CPU kernel for the streaming covariance op: native one-triangle float64 SYRK, or blocked BLAS.

``method="native"`` (default when ``fastcsi._C`` is built; csrc/covariance.cpp): one C++ call per chunk.
The rows are cut into up to 8 pieces (their number set by the size alone) that threads take from a
shared counter; per block of ``block_rows`` rows the float64 column sums give the block mean,
the block is upcast and centred while being packed into 4-column float64 panels (no float64 copy of
the input ever exists), and an AVX2+FMA register-blocked micro-kernel (4 x 12 doubles, chosen at
run time, portable C++ otherwise) adds only the tiles on or above the diagonal of the scatter:
0.52 of a full GEMM's flops at d = 256. Blocks and pieces are combined by the exact Chan merge, in
row order, so the result is bitwise the same for any thread count.

``method="gemm"`` / ``"syrk"``: the rows are processed in blocks of ``block_rows``; each block is
centred by its own float64 mean into a reused float64 buffer (one fused ``np.subtract``) and its
scatter formed by one BLAS call (full dgemm, or dsyrk on the upper triangle), then Chan-merged.

Why native: ``np.cov`` is an upcast float64 copy, a centring pass and ``dot(X, X.T)``, which numpy
hands to OpenBLAS dsyrk (half the flops; the old "gemm" path's ``centred.T @ centred`` is also
turned into dsyrk by numpy). The native kernel runs its triangle at about that dsyrk's rate but
fuses the upcast and centring into the packing, so nothing is paid for the copy
(``bench/covariance.py`` measures it against np.cov and the "gemm" path in one run).

Complexity: O(n d^2) flops (native n d (d + 12) / 2 multiply-adds; gemm 2 n d^2; syrk n d^2) plus
O(n d) for sums and packing. Extra memory O(8 d^2 + threads * 128 d) native,
O(block_rows * d + d^2) BLAS methods, whatever n is. Accuracy: every product is float64 on centred
data and blocks merge exactly, so the relative error vs ``np.cov`` in float64 is ~1e-15 (tested
<= 1e-12), independent of a common offset in the data.
"""
from __future__ import annotations

import warnings

import numpy as np
from scipy.linalg import blas as _blas

from fastcsi import _native
from fastcsi.backend import FallbackWarning

METHODS = ("native", "gemm", "syrk")
DEFAULT_BLOCK_ROWS = 8192  # BLAS methods: one float64 buffer of this many rows
# Native: rows per block mean / Chan merge. The block is re-read from L2/L3 when packed; the O(d^2)
# merge per block is ~0.1% of the block's SYRK at d = 256.
NATIVE_BLOCK_ROWS = 1024


def native_available() -> bool:
    return _native.has("covariance_moments")


def _float_view(x) -> np.ndarray:
    """A float32/float64 numpy view of a CPU array/tensor, strides kept (both paths read any
    strides); bf16/f16 become float32 (exact; numpy has no bf16)."""
    if hasattr(x, "detach"):
        import torch

        x = x.detach()
        if x.dtype not in (torch.float32, torch.float64):
            x = x.to(torch.float32)  # bf16/f16 -> float32 is exact
        return x.numpy()
    x = np.asarray(x)
    if x.dtype != np.float32 and x.dtype != np.float64:  # float16, big-endian, ...
        x = x.astype(np.float32 if x.dtype.kind == "f" and x.dtype.itemsize <= 4 else np.float64)
    return x


def chunk_moments_cpu(x, block_rows: int | None = None, method: str = "native", num_threads: int = 0):
    """Return (count, mean (d,), scatter (d, d)) of the rows of a CPU array/tensor, float64.

    ``method``: "native" (C++ one-triangle SYRK; falls back to "gemm" with a FallbackWarning when
    the extension is not built), "gemm" or "syrk" (BLAS per block). ``block_rows``: rows per block
    (default 1024 native, 8192 BLAS). ``num_threads`` (native): 0 = all cores, fewer for small
    chunks. See the header for algorithm and accuracy."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if method == "native":
        if native_available():
            with _native.input_errors("covariance"):  # a d too wide for the memory budget
                count, mean, scatter = _native.native.covariance_moments(
                    _float_view(x), block_rows=int(block_rows or NATIVE_BLOCK_ROWS), num_threads=int(num_threads),
                    max_bytes=_native.memory_budget_bytes(),
                )
            return int(count), mean, scatter
        warnings.warn(
            f"covariance: native kernel unavailable ({_native.NATIVE_ERROR or 'fastcsi._C has no covariance_moments'}); "
            "using the BLAS 'gemm' method",
            FallbackWarning,
            stacklevel=2,
        )
        method = "gemm"
    block_rows = int(block_rows or DEFAULT_BLOCK_ROWS)
    n, d = int(x.shape[0]), int(x.shape[1])
    mean = np.zeros(d)
    scatter = np.zeros((d, d), order="F")  # Fortran order lets dsyrk update it in place
    if n == 0:
        return 0, mean, np.ascontiguousarray(scatter)
    buffer = np.empty((min(block_rows, n), d))
    count = 0
    for start in range(0, n, block_rows):
        block = _float_view(x[start : start + block_rows])
        rows = block.shape[0]
        block_mean = block.sum(axis=0, dtype=np.float64) / rows
        centred = buffer[:rows]
        np.subtract(block, block_mean, out=centred)
        if count:
            # Chan merge of the running accumulator with this block (before adding its scatter).
            total = count + rows
            delta = block_mean - mean
            scatter += np.outer(delta, delta) * (count * rows / total)
            mean += delta * (rows / total)
            count = total
        else:
            mean[:] = block_mean
            count = rows
        if method == "syrk":
            # centred.T is the Fortran-ordered (d, rows) matrix A; dsyrk adds A A^T = x_c^T x_c.
            scatter = _blas.dsyrk(1.0, centred.T, beta=1.0, c=scatter, trans=0, lower=0, overwrite_c=1)
        else:
            scatter += centred.T @ centred
    if method == "syrk":
        # dsyrk wrote only the upper triangle; the rank-one merges are full, so the upper triangle
        # holds every term: mirror it.
        scatter = np.triu(scatter) + np.triu(scatter, 1).T
    return count, mean, np.ascontiguousarray(scatter)
