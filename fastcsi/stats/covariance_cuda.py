"""The ``cuda`` backend of the streaming covariance op: float64 GEMM (cuBLAS) on centred blocks on
the tensor's device, the exact path ``auto`` takes for CUDA tensors (the float32-tile Triton kernel,
``covariance_triton.py``, is faster but only accurate to ~2e-6 relative).

Algorithm: rows in blocks of ``block_rows``; each block is upcast to float64 on the device, centred
by its own mean, its scatter formed by one GEMM (centred^T centred), and the blocks are combined on
the host by the exact Chan merge of ``covariance_ref.merge_moments``. Complexity 2 n d^2 float64
flops (float64 math is much slower than float32 on consumer GPUs, not on data-centre ones), memory
O(block_rows * d + d^2) on the device.
"""
from __future__ import annotations

import numpy as np

from fastcsi.stats.covariance_ref import merge_moments

__all__ = ["chunk_moments_cuda"]


def chunk_moments_cuda(x, block_rows: int = 1 << 16):
    """Return (count, mean (d,), scatter (d, d)) as float64 numpy arrays for a torch tensor ``x``
    on its device (a CUDA device through the dispatcher; any device works)."""
    import torch

    n, d = int(x.shape[0]), int(x.shape[1])
    if n == 0:
        return 0, np.zeros(d), np.zeros((d, d))
    count, mean, scatter = 0, np.zeros(d), np.zeros((d, d))
    for start in range(0, n, block_rows):
        block = x[start : start + block_rows].detach().to(torch.float64)
        block_mean = block.mean(dim=0)
        centred = block - block_mean
        block_scatter = centred.T @ centred
        count, mean, scatter = merge_moments(
            count, mean, scatter, block.shape[0], block_mean.cpu().numpy(), block_scatter.cpu().numpy()
        )
    return count, mean, scatter
