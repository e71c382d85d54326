"""Fréchet distance between two Gaussians, robust and fast (the CSI of fastcsi): the dispatcher of
the frechet op.

    FD = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2

Only the eigenvalues of M = S1^1/2 S2 S1^1/2 are needed: tr M^1/2 = sum sqrt(eig(M)), eig clipped at
0 (M is PSD; tiny negative eigenvalues are roundoff). No complex matrix square root (the
``scipy.linalg.sqrtm(S1 @ S2)`` of pytorch-fid) is ever formed, so results are float64 and never
complex or NaN for PSD inputs, singular ones included.

Backends (``backend=``, through :func:`fastcsi.backend.resolve_backend`; each file states its
algorithm):
- ``ref``  frechet_ref.py: the oracle, two symmetric eigendecompositions ("2-eigh"), float64 numpy.
- ``cpu``  frechet_cpu.py: Cholesky reduction to one eigenvalues-only problem (LAPACK), exact up
  to roundoff; the reference formulation when S1 is singular.
- ``cuda`` frechet_cuda.py: the same reduction with torch.linalg in float64 on the CUDA device of
  the inputs (needs CUDA tensors).
``auto``: ``cuda`` for CUDA tensors, else ``cpu``. This module validates the inputs (shapes,
finiteness) and symmetrises the covariances (built by accumulation, they are symmetric only to
roundoff). Complexity O(d^3) time, O(d^2) memory. Non-finite inputs or wrong shapes raise
FastCSIError.
"""
from __future__ import annotations

import numpy as np

from fastcsi.backend import resolve_backend
from fastcsi.errors import FastCSIError
from fastcsi.stats.frechet_cpu import trace_sqrt_product_cpu
from fastcsi.stats.frechet_cuda import trace_sqrt_product_cuda
from fastcsi.stats.frechet_ref import frechet_distance_ref, trace_sqrt_product_ref

__all__ = ["frechet_distance", "frechet_terms", "frechet_distance_ref", "trace_sqrt_product"]


def _is_tensor(x) -> bool:
    return hasattr(x, "detach") and hasattr(x, "device")


def _as_float64(x, name: str) -> np.ndarray:
    if _is_tensor(x):
        import torch

        x = x.detach().to(device="cpu", dtype=torch.float64).numpy()
    try:
        return np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise FastCSIError(f"frechet_distance: {name} is not a numeric array ({exc})") from None


def _validate(mu1, sigma1, mu2, sigma2):
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    d = mu1.shape[0]
    if mu1.ndim != 1 or mu2.shape != (d,):
        raise FastCSIError(f"frechet_distance: mean vectors have different shapes {mu1.shape} and {mu2.shape}")
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if sigma.shape != (d, d):
            raise FastCSIError(f"frechet_distance: {name} has shape {sigma.shape}, expected ({d}, {d})")
    for name, arr in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(arr).all():
            raise FastCSIError(f"frechet_distance: {name} contains NaN or inf")
    # Symmetrise: covariances built by accumulation are symmetric only to roundoff.
    return mu1, (sigma1 + sigma1.T) * 0.5, mu2, (sigma2 + sigma2.T) * 0.5


def _device(x):
    return x.device if _is_tensor(x) else "cpu"


def _on_cuda(x) -> bool:
    return _is_tensor(x) and x.device.type == "cuda"


def _choose(sigma1, backend: str) -> str:
    """The backend for inputs like ``sigma1`` ("cpu" takes any input: it is copied to numpy first)."""
    on_cuda = _on_cuda(sigma1)
    return resolve_backend("frechet_distance", backend, _device(sigma1), {"cpu": True, "cuda": on_cuda},
                           auto_order=("cuda", "cpu") if on_cuda else ("cpu",))


def _trace_sqrt(sigma1: np.ndarray, sigma2: np.ndarray, chosen: str, device) -> float:
    """The trace term of validated float64 covariances by the chosen backend."""
    if chosen == "cuda":
        import torch

        return trace_sqrt_product_cuda(torch.from_numpy(sigma1).to(device), torch.from_numpy(sigma2).to(device))
    return trace_sqrt_product_ref(sigma1, sigma2) if chosen == "ref" else trace_sqrt_product_cpu(sigma1, sigma2)


def trace_sqrt_product(sigma1, sigma2, backend: str = "auto") -> float:
    """tr (S1^1/2 S2 S1^1/2)^1/2 for PSD S1, S2 (numpy or torch), float64."""
    chosen = _choose(sigma1, backend)
    s1, s2 = _as_float64(sigma1, "sigma1"), _as_float64(sigma2, "sigma2")
    return _trace_sqrt((s1 + s1.T) * 0.5, (s2 + s2.T) * 0.5, chosen, _device(sigma1))


def frechet_terms(mu1, sigma1, mu2, sigma2, backend: str = "auto") -> tuple[float, float]:
    """Return (mean_term, trace_term): |mu1 - mu2|^2 and tr S1 + tr S2 - 2 tr sqrt(S1^1/2 S2 S1^1/2).

    Identical inputs give 0 up to roundoff: |trace_term| <= ~1e-12 (tr S1 + tr S2) in float64."""
    arrays = [_as_float64(a, n) for a, n in ((mu1, "mu1"), (sigma1, "sigma1"), (mu2, "mu2"), (sigma2, "sigma2"))]
    mu1_, s1_, mu2_, s2_ = _validate(*arrays)
    chosen = _choose(sigma1, backend)
    diff = mu1_ - mu2_
    mean_term = float(diff @ diff)
    root_trace = _trace_sqrt(s1_, s2_, chosen, _device(sigma1))
    trace_term = float(np.trace(s1_) + np.trace(s2_) - 2.0 * root_trace)
    return mean_term, trace_term


def frechet_distance(mu1, sigma1, mu2, sigma2, backend: str = "auto") -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2) (pytorch-fid argument order)."""
    mean_term, trace_term = frechet_terms(mu1, sigma1, mu2, sigma2, backend=backend)
    return mean_term + trace_term
