"""The "cpu" backend of GemNet-OC's interaction op (op and shapes: interaction_ref.py): the same
contraction with the zero-padded per-edge matrix built as one gather instead of a scatter into zeros.

Algorithm: every padded slot (output row, rank inside it) gets the index of the source row it reads
(``padded_source``; empty slots read an appended zero row), so the padded (E_out, Kmax, d_in) matrix
is one ``index_select`` (``gather_padded``); its backward is one ``index_add`` instead of the
reference's scatter-with-zeros, and the edge -> atom padding reuses the same two steps. Then
S = sph @ M, R = rad_W1 @ S and out = R.flatten(1) @ weight.T as in the reference. Complexity as the
reference: O(E_out * Kmax * n_sph * d_in + rows * d_interm * n_sph * d_in + rows * d_interm * d_in *
d_out) time, O(E_out * Kmax * d_in) extra memory.

``interaction_bilinear_precontracted`` is the model's fused CPU path: every interaction block
shares the bases, so ``rad_W1 @ sph`` is contracted once per forward and each block then costs one
(d_interm x Kmax) @ (Kmax x d_in) product per output edge instead of two.
``padded_source`` / ``gather_padded`` also build the padded basis matrices in bases.py and blocks.py.
"""
from __future__ import annotations

import torch


def padded_source(out_idx, out_inner, num_out: int, kmax: int, num_src: int, gather_idx=None) -> torch.Tensor:
    """(num_out * kmax,) source row of every padded slot: slot (out_idx[t], out_inner[t]) reads
    row ``gather_idx[t]`` (``t`` without gather_idx); empty slots read row ``num_src`` (the zero row
    ``gather_padded`` appends). O(num_out * kmax)."""
    src = torch.full((num_out * kmax,), num_src, dtype=torch.long, device=out_idx.device)
    rows = gather_idx if gather_idx is not None else torch.arange(out_idx.numel(), device=out_idx.device)
    src[out_idx * kmax + out_inner] = rows
    return src


def gather_padded(x: torch.Tensor, src: torch.Tensor, num_out: int, kmax: int) -> torch.Tensor:
    """The zero-padded (num_out, kmax, *x.shape[1:]) grouping of rows of ``x`` as one gather."""
    x_ext = torch.cat([x, x.new_zeros((1,) + tuple(x.shape[1:]))])
    return x_ext.index_select(0, src).view((num_out, kmax) + tuple(x.shape[1:]))


def interaction_bilinear_cpu(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                             agg2_outer=None, agg2_inner=None, agg2_size=None):
    """The "cpu" backend; arguments as ``interaction_bilinear_ref``."""
    num_out, n_sph, kmax = sph.shape
    d_in = x.shape[-1]
    src = padded_source(out_idx, out_inner, num_out, kmax, x.shape[0], gather_idx)
    sph_m = torch.matmul(sph, gather_padded(x, src, num_out, kmax))  # (E_out, n_sph, d_in)
    if agg2_outer is not None:
        k2 = rad_W1.shape[-1] // n_sph if n_sph else 0
        src2 = padded_source(agg2_outer, agg2_inner, agg2_size, k2, num_out)
        sph_m = gather_padded(sph_m, src2, agg2_size, k2).reshape(agg2_size, k2 * n_sph, d_in)
    contracted = torch.matmul(rad_W1, sph_m)  # (E_out|N, d_interm, d_in)
    return contracted.reshape(contracted.shape[0], contracted.shape[1] * contracted.shape[2]) @ weight.T


def interaction_bilinear_precontracted(basis, x, gather_idx, out_idx, out_inner, weight):
    """The op with ``basis = rad_W1 @ sph`` (E_out, d_interm, Kmax) contracted beforehand (see the
    module docstring). Same value as ``interaction_bilinear_ref(rad_W1, sph, ...)`` up to summation
    order; no edge -> atom form."""
    num_out, _, kmax = basis.shape
    src = padded_source(out_idx, out_inner, num_out, kmax, x.shape[0], gather_idx)
    contracted = torch.matmul(basis, gather_padded(x, src, num_out, kmax))  # (E_out, d_interm, d_in)
    return contracted.reshape(num_out, contracted.shape[1] * contracted.shape[2]) @ weight.T
