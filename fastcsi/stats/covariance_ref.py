"""Reference (oracle) for the streaming covariance op: plain float64 two-pass moments + Chan merge.

Algorithm: a chunk x (n, d) is upcast to float64, its mean m = sum(x)/n, its centred scatter
M = (x - m)^T (x - m) (full d x d GEMM). Accumulators are combined with the exact pairwise update
of Chan, Golub & LeVeque (1979):
    n = na + nb,  delta = mb - ma,  mean = ma + delta * nb / n,
    M = Ma + Mb + delta delta^T * na * nb / n
which never forms a raw sum of squares, so a large common offset (mean 1e3, std 1) costs no
accuracy. Complexity: O(n d^2) time, O(n d + d^2) memory (the whole chunk is upcast at once).
"""
from __future__ import annotations

import numpy as np


def to_numpy_float64(x) -> np.ndarray:
    """A (n, d) float64 numpy copy/view of a numpy array or torch tensor (any device, any dtype)."""
    if hasattr(x, "detach"):  # torch tensor; imported lazily so numpy users never need torch here
        import torch

        return x.detach().to(device="cpu", dtype=torch.float64).numpy()
    return np.asarray(x, dtype=np.float64)


def chunk_moments_ref(x):
    """Return (count, mean (d,), scatter (d, d)) of the rows of ``x``, all float64."""
    x64 = to_numpy_float64(x)
    n, d = x64.shape
    if n == 0:
        return 0, np.zeros(d), np.zeros((d, d))
    mean = x64.mean(axis=0)
    centred = x64 - mean
    return n, mean, centred.T @ centred


def merge_moments(n_a, mean_a, scatter_a, n_b, mean_b, scatter_b):
    """Chan et al. pairwise merge of two (count, mean, scatter) triples; returns a new triple.

    Exact in exact arithmetic; in floating point the only rounding is in the rank-one correction,
    whose size is bounded by the spread of the two means (no cancellation of large sums)."""
    if n_b == 0:
        return n_a, np.array(mean_a, dtype=np.float64), np.array(scatter_a, dtype=np.float64)
    if n_a == 0:
        return n_b, np.array(mean_b, dtype=np.float64), np.array(scatter_b, dtype=np.float64)
    n = n_a + n_b
    delta = np.asarray(mean_b, dtype=np.float64) - mean_a
    mean = mean_a + delta * (n_b / n)
    scatter = scatter_a + scatter_b + np.outer(delta, delta) * (n_a * n_b / n)
    return n, mean, scatter
