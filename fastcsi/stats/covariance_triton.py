"""Triton kernel for the streaming covariance op: fused mean shift + one-triangle X^T X (SYRK).

Algorithm: the chunk mean m is summed on the device in float64. The kernel grid is the
(d/B) x (d/B) tiles of the output; tiles below the diagonal exit at once (SYRK: only the upper
triangle, half the work). A tile (i, j) walks the rows in steps of BLOCK_K: it loads the two column
strips, centres them in float64 (x - m, then rounds the centred value once to float32), multiplies
them with ``tl.dot`` in float32 (``input_precision="ieee"``, or "tf32" when asked) and adds each
BLOCK_K-row partial product into a float64 tile accumulator. Across chunks the host merges
(count, mean, scatter) in float64 with the Chan update.

Complexity: n d^2 flops (half a GEMM), reads x once per tile column: n d^2 / BLOCK_D loads;
memory O(d^2) (the float64 output) + the chunk.

Error bound (per entry, relative to sum_k |xc_ki| |xc_kj|): centring is exact to float32 rounding of
the centred value (2^-24 each), the float32 dot over BLOCK_K rows adds <= BLOCK_K * 2^-24, and the
float64 accumulation adds ~n * 2^-53; so |err| <~ (2 + BLOCK_K) * 2^-24 ~ 2e-6 (BLOCK_K = 32) with
"ieee", and ~(2 + BLOCK_K) * 2^-11 ~ 1.6e-2 worst case (typically ~1e-3) with "tf32". Typical errors
are far below these bounds because roundoff errors of random sign partly cancel.

Limits: the kernel's offsets are 32-bit (``rows * stride_row`` into a chunk, ``i * d + j`` into the
output), so the wrapper refuses d >= 46341 (d^2 >= 2^31: a 17 GB output anyway) and the d x d
buffers beyond the device's memory budget (FastCSIError), and feeds rows in slices of fewer than
2^31 elements: scatters about one mean add up, so the slices' outputs are summed.

Roofline (GPU, for reporting): bytes read ~ n d * s * (d / BLOCK_D) (s = 4 for float32; the strips
are re-read per output tile row, mostly from L2), flops ~ n d^2 (one triangle, 2 flops per MAC
counted once for half). Time >= max(n d^2 / peak_flops, n d s / HBM_bandwidth); for d = 256 the
float32 "ieee" path is compute bound (H100: ~60 TFLOP/s fp32 FMA, 3.35 TB/s HBM).
"""
from __future__ import annotations

import numpy as np

from fastcsi._native import check_budget
from fastcsi.errors import FastCSIError

try:
    import triton
    import triton.language as tl
except Exception:  # pragma: no cover - depends on the install
    triton = None
    tl = None


if triton is not None:

    @triton.jit
    def _centred_syrk_kernel(
        x_ptr,
        mean_ptr,
        out_ptr,
        n_rows,
        dim,
        stride_row,
        BLOCK_K: tl.constexpr,
        BLOCK_D: tl.constexpr,
        INPUT_PRECISION: tl.constexpr,
    ):
        tile_i = tl.program_id(0)
        tile_j = tl.program_id(1)
        if tile_i > tile_j:
            return  # lower triangle: mirrored on the host
        cols_i = tile_i * BLOCK_D + tl.arange(0, BLOCK_D)
        cols_j = tile_j * BLOCK_D + tl.arange(0, BLOCK_D)
        valid_i = cols_i < dim
        valid_j = cols_j < dim
        mean_i = tl.load(mean_ptr + cols_i, mask=valid_i, other=0.0)
        mean_j = tl.load(mean_ptr + cols_j, mask=valid_j, other=0.0)
        acc = tl.zeros((BLOCK_D, BLOCK_D), dtype=tl.float64)
        for row0 in range(0, n_rows, BLOCK_K):
            rows = row0 + tl.arange(0, BLOCK_K)
            valid_rows = rows < n_rows
            mask_i = valid_rows[:, None] & valid_i[None, :]
            mask_j = valid_rows[:, None] & valid_j[None, :]
            a = tl.load(x_ptr + rows[:, None] * stride_row + cols_i[None, :], mask=mask_i, other=0.0)
            b = tl.load(x_ptr + rows[:, None] * stride_row + cols_j[None, :], mask=mask_j, other=0.0)
            # Centre in float64, then one rounding to float32; padded rows/cols stay exactly 0.
            a = tl.where(mask_i, a.to(tl.float64) - mean_i[None, :], 0.0).to(tl.float32)
            b = tl.where(mask_j, b.to(tl.float64) - mean_j[None, :], 0.0).to(tl.float32)
            partial = tl.dot(tl.trans(a), b, input_precision=INPUT_PRECISION)
            acc += partial.to(tl.float64)
        out_mask = valid_i[:, None] & valid_j[None, :]
        tl.store(out_ptr + cols_i[:, None] * dim + cols_j[None, :], acc, mask=out_mask)


# the kernel's offsets are int32 (see Limits in the module doc)
_MAX_OFFSET = 2**31


def chunk_moments_triton(x, tf32: bool = False, block_d: int = 32, block_k: int = 32):
    """Return (count, mean (d,), scatter (d, d)) as float64 numpy arrays for a torch tensor ``x``
    on a CUDA device (or on the CPU under TRITON_INTERPRET=1)."""
    import torch

    if triton is None:  # pragma: no cover - the dispatcher checks first
        raise RuntimeError("triton is not installed")
    n, d = int(x.shape[0]), int(x.shape[1])
    if n == 0:
        return 0, np.zeros(d), np.zeros((d, d))
    if d * d >= _MAX_OFFSET:
        raise FastCSIError(f"covariance: {d} features are beyond the Triton kernel (d^2 must stay under 2^31)")
    check_budget(3 * 8.0 * d * d, x.device, f"covariance: the d x d moments of {d} features",
                 "too many features per sample?")
    x = x.detach()
    if x.stride(1) != 1:
        x = x.contiguous()
    mean = x.sum(dim=0, dtype=torch.float64) / n
    out = torch.zeros((d, d), dtype=torch.float64, device=x.device)
    part = torch.zeros_like(out) if (n - 1) * x.stride(0) + d >= _MAX_OFFSET else out
    tiles = triton.cdiv(d, block_d)
    rows_per_slice = max(1, (_MAX_OFFSET - 1 - d) // max(1, x.stride(0)))
    for r0 in range(0, n, rows_per_slice):  # one slice unless x has 2^31 elements or more
        rows = x[r0 : r0 + rows_per_slice]
        _centred_syrk_kernel[(tiles, tiles)](
            rows,
            mean,
            part,
            rows.shape[0],
            d,
            x.stride(0),
            BLOCK_K=block_k,
            BLOCK_D=block_d,
            INPUT_PRECISION="tf32" if tf32 else "ieee",
        )
        if part is not out:
            out += part
    upper = torch.triu(out)
    scatter = upper + torch.triu(upper, 1).T
    return n, mean.cpu().numpy(), scatter.cpu().numpy()
