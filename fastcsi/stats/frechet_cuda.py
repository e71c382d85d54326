"""The ``cuda`` backend of the Fréchet distance's trace term: the Cholesky reduction of
``frechet_cpu`` in float64 with torch.linalg on the tensors' device (a declared exception to the
Triton kernel of the other op families: a d x d factorisation and eigenproblem are what cuSOLVER
already does; nothing to tile). The same code runs on CPU tensors, which is how the tests check it
without a GPU.

Algorithm: L = cholesky(S1), C = L^T S2 L (similar to S1 S2, so eig(C) = eig(S1^1/2 S2 S1^1/2)),
tr = sum sqrt(eigvalsh(C)) clipped at 0; when S1 is singular (cholesky_ex reports it), the symmetric
2-eigh formulation on the device: S1^1/2 = V diag(sqrt w) V^T with w clipped at 0, then
eigvalsh(S1^1/2 S2 S1^1/2). O(d^3) time, O(d^2) device memory.
"""
from __future__ import annotations

__all__ = ["trace_sqrt_product_cuda", "frechet_distance_cuda"]


def trace_sqrt_product_cuda(sigma1, sigma2) -> float:
    """tr (S1^1/2 S2 S1^1/2)^1/2 for PSD torch tensors S1, S2 on one device (computed in float64)."""
    import torch

    s1 = sigma1.to(torch.float64)
    s2 = sigma2.to(device=s1.device, dtype=torch.float64)
    s1 = (s1 + s1.T) * 0.5
    s2 = (s2 + s2.T) * 0.5
    factor, info = torch.linalg.cholesky_ex(s1)
    if int(info) != 0:
        w, v = torch.linalg.eigh(s1)
        root1 = (v * w.clamp(min=0).sqrt()) @ v.T
        middle = root1 @ s2 @ root1
    else:
        middle = factor.T @ s2 @ factor
    eig = torch.linalg.eigvalsh((middle + middle.T) * 0.5)
    return float(eig.clamp(min=0).sqrt().sum())


def frechet_distance_cuda(mu1, sigma1, mu2, sigma2) -> float:
    """The whole distance from torch tensors on one device, unvalidated (benchmarks and checks that
    time or test this path on CPU tensors; users call ``frechet_distance(..., backend="cuda")``)."""
    import torch

    diff = (mu1.to(torch.float64) - mu2.to(device=mu1.device, dtype=torch.float64))
    traces = torch.trace(sigma1.to(torch.float64)) + torch.trace(sigma2.to(torch.float64))
    return float(diff @ diff + traces) - 2.0 * trace_sqrt_product_cuda(sigma1, sigma2)
