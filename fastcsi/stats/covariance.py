"""Dispatcher for the streaming covariance op: (count, mean, centred scatter) of a feature chunk.

Backends (all return float64 numpy arrays; see each file's header for algorithm and error):
- ``ref``    covariance_ref.py: plain float64 two-pass + GEMM (the oracle).
- ``cpu``    covariance_cpu.py: native C++ one-triangle float64 SYRK with the upcast and centring
             fused into packing (``method="native"``, default), or blocked, centred float64 GEMM /
             SYRK through the BLAS (``method="gemm"|"syrk"``); O(threads * d^2 + block * d) memory.
- ``triton`` covariance_triton.py: fused centring + one-triangle float32 tile math, float64
             accumulation (error <~ 2e-6 relative, "ieee"); CUDA tensors, or CPU under the interpreter.
- ``cuda``   covariance_cuda.py: float64 cuBLAS GEMM on centred blocks on the device.
``auto`` picks ``cpu`` for numpy arrays and CPU tensors, ``cuda`` (float64, exact) for CUDA tensors
because the default path must meet the 1e-12 accuracy target; ask for ``triton`` explicitly for the
faster float32-tile path.
"""
from __future__ import annotations

import numpy as np

from fastcsi.backend import resolve_backend, triton_available, triton_usable
from fastcsi.errors import FastCSIError
from fastcsi.stats.covariance_cpu import chunk_moments_cpu
from fastcsi.stats.covariance_ref import chunk_moments_ref, merge_moments

__all__ = ["chunk_moments", "chunk_moments_ref", "merge_moments"]


def _device_of(x) -> str:
    return str(x.device) if hasattr(x, "device") and hasattr(x, "detach") else "cpu"


def chunk_moments(x, backend: str = "auto", **kernel_options):
    """Return (count, mean (d,), scatter (d, d)) of the rows of ``x`` (n, d), float64 numpy.

    ``x``: numpy array or torch tensor (float32 / bfloat16 / float16 / float64)."""
    if getattr(x, "ndim", None) != 2:
        raise FastCSIError(f"features must be a 2-D (n, d) array; got shape {tuple(getattr(x, 'shape', ()))}")
    device = _device_of(x)
    is_tensor = hasattr(x, "detach")
    on_cpu = device == "cpu"
    available = {
        "cpu": on_cpu,
        "triton": is_tensor and triton_available() and triton_usable(device),
        "cuda": is_tensor and device.startswith("cuda"),
    }
    chosen = resolve_backend("covariance", backend, device, available, auto_order=("cpu", "cuda"))
    if chosen == "ref":
        return chunk_moments_ref(x)
    if chosen == "cpu":
        if not is_tensor:
            x = np.asarray(x)
            if x.dtype.kind != "f":
                x = x.astype(np.float64)
        return chunk_moments_cpu(x, **kernel_options)
    if chosen == "triton":
        from fastcsi.stats.covariance_triton import chunk_moments_triton

        return chunk_moments_triton(x, **kernel_options)
    from fastcsi.stats.covariance_cuda import chunk_moments_cuda

    return chunk_moments_cuda(x, **kernel_options)
