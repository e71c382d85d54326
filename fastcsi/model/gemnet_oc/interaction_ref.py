"""The plain reference of GemNet-OC's triplet/quadruplet interaction op (the oracle the fused paths
are tested against; it shares no code with them).

Op (per interaction, "efficient bilinear" reformulation of GemNet-OC):
    x_g      = x[gather_idx]                                     (T, d_in)   gather neighbour embeddings
    M        = zero-padded (E_out, Kmax, d_in), M[out, inner] = x_g          group them per output edge
    S        = sph @ M                         (E_out, n_sph, d_in)          multiply by the angular basis
    [S2      = padded again per output atom when aggregating twice (edge -> atom)]
    R        = rad_W1 @ S                      (E_out, d_interm, d_in)       radial basis contraction
    out      = R.flatten(1) @ weight.T         (E_out, d_out)                bilinear layer
Complexity: O(E_out * Kmax * n_sph * d_in + E_out * d_interm * n_sph * d_in + E_out * d_interm * d_in * d_out)
time, O(E_out * Kmax * d_in) extra memory for the padded matrix (Kmax = most neighbours of one
output edge).
"""
from __future__ import annotations

import torch


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
