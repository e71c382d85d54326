"""Reference (oracle) for the Fréchet distance between two Gaussians: the symmetric "2-eigh"
formulation in float64 numpy.

    FD = |mu1 - mu2|^2 + tr S1 + tr S2 - 2 tr (S1^1/2 S2 S1^1/2)^1/2

Algorithm: S1 = V diag(w) V^T by eigh (w clipped at 0, so rank-deficient S1 is exact),
S1^1/2 = V diag(sqrt w) V^T, M = S1^1/2 S2 S1^1/2 symmetrised, tr M^1/2 = sum sqrt(eigvalsh(M)),
eigenvalues clipped at 0 (M is PSD; tiny negative ones are roundoff). No complex matrix square root
is ever formed. ~(9 + 4 + 4/3) d^3 flops, O(d^2) memory. Inputs are taken as they are (the
dispatcher ``frechet.py`` validates user input).
"""
from __future__ import annotations

import numpy as np

__all__ = ["trace_sqrt_product_ref", "frechet_distance_ref"]


def trace_sqrt_product_ref(sigma1, sigma2) -> float:
    """tr (S1^1/2 S2 S1^1/2)^1/2 for symmetric PSD S1, S2 (float64)."""
    sigma1, sigma2 = np.asarray(sigma1, dtype=np.float64), np.asarray(sigma2, dtype=np.float64)
    w, v = np.linalg.eigh(sigma1)
    root1 = (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T
    middle = root1 @ sigma2 @ root1
    eig = np.linalg.eigvalsh((middle + middle.T) * 0.5)
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())


def frechet_distance_ref(mu1, sigma1, mu2, sigma2) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64 numpy."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, dtype=np.float64)), np.atleast_1d(np.asarray(mu2, dtype=np.float64))
    sigma1 = np.atleast_2d(np.asarray(sigma1, dtype=np.float64))
    sigma2 = np.atleast_2d(np.asarray(sigma2, dtype=np.float64))
    sigma1, sigma2 = (sigma1 + sigma1.T) * 0.5, (sigma2 + sigma2.T) * 0.5
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt_product_ref(sigma1, sigma2))
