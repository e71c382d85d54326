"""CPU kernel of the Fréchet distance's trace term: Cholesky reduction to one symmetric eigenproblem,
eigenvalues only (LAPACK through scipy, float64).

Algorithm: Cholesky S1 = L L^T (potrf, d^3/3), the symmetric reduction C = L^T S2 L (sygst itype=2,
~d^3, uses symmetry), then the eigenvalues of C only (syevd without vectors: tridiagonalisation,
4/3 d^3); tr (S1^1/2 S2 S1^1/2)^1/2 = sum sqrt(eig(C)), clipped at 0. ~2.7 d^3 flops and no
eigenvectors, against ~14 d^3 for the reference's two eigendecompositions.

Why it is exact: C = L^{-1} (L L^T S2) L = L^{-1} (S1 S2) L is similar to S1 S2, and
S1 S2 = S1^1/2 (S1^1/2 S2) has the same eigenvalues as (S1^1/2 S2) S1^1/2 = M (AB and BA share
eigenvalues). So eig(C) = eig(M) exactly; only roundoff differs (both are backward stable symmetric
eigenproblems; tests require 1e-10 relative agreement). When S1 is singular (Cholesky fails: fewer
samples than d, constant features) the reference formulation runs, which handles rank deficiency by
clipping. O(d^3) time, O(d^2) memory.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg as sla
from scipy.linalg import lapack as _lapack

from fastcsi.stats.frechet_ref import trace_sqrt_product_ref

__all__ = ["trace_sqrt_product_cpu"]


def trace_sqrt_product_cpu(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr (S1^1/2 S2 S1^1/2)^1/2 for symmetric PSD float64 S1, S2."""
    factor, info = _lapack.dpotrf(sigma1, lower=1, clean=1)
    if info != 0:  # S1 not positive definite (rank deficient): exact clipped formulation
        return trace_sqrt_product_ref(sigma1, sigma2)
    reduced, info = _lapack.dsygst(np.asfortranarray(sigma2), factor, itype=2, lower=1)
    if info != 0:  # pragma: no cover - sygst only fails on bad arguments
        return trace_sqrt_product_ref(sigma1, sigma2)
    eig = sla.eigvalsh(reduced, lower=True, overwrite_a=True, check_finite=False, driver="evd")
    return float(np.sqrt(np.clip(eig, 0.0, None)).sum())
