"""The triplet/quadruplet interaction op of GemNet-OC, in one place so a fused kernel can replace it.

Op (per interaction, "efficient bilinear" reformulation of GemNet-OC):
    x_g      = x[gather_idx]                                     (T, d_in)   gather neighbour embeddings
    M        = zero-padded (E_out, Kmax, d_in), M[out, inner] = x_g          group them per output edge
    S        = sph @ M                         (E_out, n_sph, d_in)          multiply by the angular basis
    [S2      = padded again per output atom when aggregating twice (edge -> atom)]
    R        = rad_W1 @ S                      (E_out, d_interm, d_in)       radial basis contraction
    out      = R.flatten(1) @ weight.T         (E_out, d_out)                bilinear layer
Complexity: O(E_out * Kmax * n_sph * d_in + E_out * d_interm * n_sph * d_in + E_out * d_interm * d_in * d_out)
time, O(E_out * Kmax * d_in) extra memory for the padded matrix (Kmax = most neighbours of one
output edge). Backends: "ref" (this plain torch code; the oracle, and what "auto" runs on CPU
tensors, where it was measured the fastest: see bench/gemnet.py) and "triton" (interaction_triton.py:
fused gather -> basis -> radial contraction without the padded matrices, forward and backward; what
"auto" runs on CUDA tensors). "cpu" and "cuda" have no separate kernel for this op.
"""
from __future__ import annotations

import torch

from fastcsi.backend import resolve_backend, triton_usable

OP_NAME = "gemnet_oc.interaction_bilinear"


def interaction_bilinear_ref(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                             agg2_outer=None, agg2_inner=None, agg2_size=None):
    """Plain torch reference. ``rad_W1`` (E_out or N, d_interm, n_sph[*K2]); ``sph`` (E_out, n_sph,
    Kmax); ``x`` (E_in, d_in); ``gather_idx``/``out_idx``/``out_inner`` (T,); ``weight`` (d_out,
    d_interm * d_in). When ``agg2_*`` are given, edge results are further aggregated onto atoms."""
    num_out = sph.shape[0]
    d_in = x.shape[-1]
    x_g = x[gather_idx] if gather_idx is not None else x
    kmax = int(out_inner.max()) + 1 if out_inner.numel() else 0
    padded = x.new_zeros(num_out, kmax, d_in)
    padded[out_idx, out_inner] = x_g
    sph_m = torch.matmul(sph, padded)  # (E_out, n_sph, d_in)
    if agg2_outer is not None:
        k2 = int(agg2_inner.max()) + 1 if agg2_inner.numel() else 0
        sph_m_padded = sph_m.new_zeros(agg2_size, k2, sph_m.shape[1], d_in)
        sph_m_padded[agg2_outer, agg2_inner] = sph_m
        sph_m = sph_m_padded.reshape(agg2_size, k2 * sph_m.shape[1], d_in)
    contracted = torch.matmul(rad_W1, sph_m)  # (E_out|N, d_interm, d_in)
    return contracted.reshape(contracted.shape[0], contracted.shape[1] * contracted.shape[2]) @ weight.T


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
    """The "cpu" backend (see the module docstring); arguments as ``interaction_bilinear_ref``."""
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
    """The op with ``basis = rad_W1 @ sph`` (E_out, d_interm, Kmax) contracted beforehand: every
    interaction block shares the same bases, so the model's fused path contracts them once per
    forward and each block then costs one (d_interm x Kmax) @ (Kmax x d_in) product per output edge
    instead of two (n_sph x Kmax x d_in + d_interm x n_sph x d_in). Same value as
    ``interaction_bilinear_ref(rad_W1, sph, ...)`` up to summation order; no edge -> atom form."""
    num_out, _, kmax = basis.shape
    src = padded_source(out_idx, out_inner, num_out, kmax, x.shape[0], gather_idx)
    contracted = torch.matmul(basis, gather_padded(x, src, num_out, kmax))  # (E_out, d_interm, d_in)
    return contracted.reshape(num_out, contracted.shape[1] * contracted.shape[2]) @ weight.T


def interaction_bilinear(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                         agg2_outer=None, agg2_inner=None, agg2_size=None, backend: str = "auto"):
    """Dispatcher. ``auto``: the fused Triton kernel on CUDA tensors (the reference with a
    FallbackWarning when Triton is missing), the "cpu" gather formulation on CPU tensors (fastest
    there, even when the Triton interpreter is on). An explicit backend that cannot run raises
    FastCSIError."""
    on_cuda = x.device.type == "cuda"
    if backend == "auto" and not on_cuda:
        chosen = "cpu"
    else:
        usable = x.dtype in (torch.float32, torch.float64) and triton_usable(x.device)
        chosen = resolve_backend(OP_NAME, backend, x.device, available={"triton": usable, "cpu": not on_cuda},
                                 auto_order=("triton",))
    if chosen == "cpu":
        return interaction_bilinear_cpu(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                                        agg2_outer, agg2_inner, agg2_size)
    if chosen == "triton":
        from fastcsi.model.gemnet_oc.interaction_triton import interaction_bilinear_triton

        return interaction_bilinear_triton(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                                           agg2_outer, agg2_inner, agg2_size)
    return interaction_bilinear_ref(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                                    agg2_outer, agg2_inner, agg2_size)
