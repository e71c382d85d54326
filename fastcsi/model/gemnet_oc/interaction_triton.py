"""Fused Triton kernels for GemNet-OC's triplet/quadruplet interaction (``interaction_bilinear``).

Op (see interaction_ref.py for the plain reference): for every output row r (an output edge, or an
output atom when the result is aggregated twice edge -> atom) and every edge e of that row,
    S_e[s, j] = sum_{t in seg(e)} sph[e, s, inner[t]] * x[gather[t], j]      (n_sph, d_in)
    R_r       = sum_{e in row r} rad_e @ S_e                                   (d_interm, d_in)
    out_r     = flatten(R_r) @ weight.T                                        (d_out,)
where seg(e) are the triplets/quadruplets whose output is e and rad_e is e's radial matrix
(d_interm, n_sph) (for the twice-aggregated case it is cut out of the padded per-atom matrix).

What is fused and why: the reference materialises the gathered rows x[gather] (T, d_in), the
zero-padded (E_out, Kmax, d_in) matrix, S (E_out, n_sph, d_in) and, for edge -> atom, a second
padded (N, K2 * n_sph, d_in) matrix; each is written to and re-read from memory once. The forward
kernel does gather -> angular-basis multiply -> radial contraction in one pass per output row with S
living in registers only (two ``tl.dot`` per triplet block / edge), and stores R. The bilinear layer
``R @ weight.T`` is one dense GEMM left to cuBLAS (it is compute-bound and has no padding).

Scatter strategy and determinism: triplets are sorted by output edge (the index builders guarantee
it; unsorted input is sorted here once) and, in the edge -> atom case, edges by output atom, so the
forward walks contiguous segments (CSR row pointers) and needs no atomics: the forward is
deterministic. The backward produces d sph and d rad per edge (each written by exactly one program)
and d x by ``tl.atomic_add`` into the gathered rows, so d x is summed in a run-dependent order on a
GPU (float32 results may differ in the last bits between runs; float64 to ~1e-16 relative).

Complexity (T triplets, E_out edges, rows = E_out or N): time O(T * n_sph * d_in + E_out * d_interm *
n_sph * d_in) in the kernels plus O(rows * d_interm * d_in * d_out) for the GEMM, as the reference;
extra memory O(rows * d_interm * d_in) for R (saved for the weight gradient) instead of
O(E_out * Kmax * d_in + T * d_in + ...). Backward: same order; it recomputes S instead of storing it.

Dtypes: float32 (``tl.dot`` with input_precision="ieee": no TF32, ~1e-6 relative) and float64.
Designed for an H100: one program per output row, blocks padded to powers of two >= 16 so that
``tl.dot`` maps to MMA (n_sph = 7 -> 16, 49 -> 64; d_in 32/64; d_interm 16/32), BLOCK_T = 32
triplets per step, 4 warps. Only verified here under TRITON_INTERPRET=1 (no GPU on the build machine).

Double backward (gradient forces while training): the backward of this Function is not itself
differentiable by the kernels; when autograd asks for a differentiable backward (create_graph=True)
it recomputes the gradients through the plain reference, so results stay correct, at reference cost.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

BLOCK_T = 32
NUM_WARPS = 4


def _block(n: int) -> int:
    return max(16, triton.next_power_of_2(max(int(n), 1)))


@triton.jit
def _mma(a, b, IEEE: tl.constexpr):
    """a @ b on the tensor cores; IEEE: exact float32 products (no TF32)."""
    if IEEE:
        return tl.dot(a, b, input_precision="ieee")
    return tl.dot(a, b)


@triton.jit
def _edge_range(row_ptr, row, HAS_AGG2: tl.constexpr):
    """The edges an output row sums over: its CSR segment (edge -> atom), else the row itself."""
    if HAS_AGG2:
        return tl.load(row_ptr + row), tl.load(row_ptr + row + 1)
    return row, row + 1


@triton.jit
def _edge_at(edge_ids_ptr, pos, HAS_AGG2: tl.constexpr):
    if HAS_AGG2:
        return tl.load(edge_ids_ptr + pos).to(tl.int64)
    return pos


@triton.jit
def _tile(D_IN, N_SPH, D_INTERM, BLOCK_T: tl.constexpr, B_IN: tl.constexpr, B_SPH: tl.constexpr,
          B_INTERM: tl.constexpr):
    """Offsets of one program's tiles (input width, angular basis, intermediate width, triplet
    block) and the masks of the padded parts."""
    offs_j = tl.arange(0, B_IN)
    offs_s = tl.arange(0, B_SPH)
    offs_i = tl.arange(0, B_INTERM)
    return offs_j, offs_s, offs_i, tl.arange(0, BLOCK_T), offs_j < D_IN, offs_s < N_SPH, offs_i < D_INTERM


@triton.jit
def _forward_kernel(
    x_ptr, sph_ptr, rad_ptr, out_ptr,
    gather_ptr, inner_ptr, trip_ptr, row_ptr, edge_ids_ptr,
    stride_x, stride_se, stride_ss, stride_sk, stride_re, stride_ri, stride_rs,
    D_IN, N_SPH, D_INTERM,
    HAS_AGG2: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, B_IN: tl.constexpr, B_SPH: tl.constexpr, B_INTERM: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs_j, offs_s, offs_i, offs_t, mask_j, mask_s, mask_i = _tile(D_IN, N_SPH, D_INTERM, BLOCK_T, B_IN, B_SPH,
                                                                   B_INTERM)
    acc = tl.zeros((B_INTERM, B_IN), dtype=out_ptr.dtype.element_ty)
    e_start, e_end = _edge_range(row_ptr, row, HAS_AGG2)
    for pos in range(e_start, e_end):
        edge = _edge_at(edge_ids_ptr, pos, HAS_AGG2)
        t_start = tl.load(trip_ptr + edge)
        t_end = tl.load(trip_ptr + edge + 1)
        s_acc = tl.zeros((B_SPH, B_IN), dtype=out_ptr.dtype.element_ty)
        for t0 in range(t_start, t_end, BLOCK_T):
            t = t0 + offs_t
            mask_t = t < t_end
            src = tl.load(gather_ptr + t, mask=mask_t, other=0).to(tl.int64)
            k = tl.load(inner_ptr + t, mask=mask_t, other=0).to(tl.int64)
            xg = tl.load(x_ptr + src[:, None] * stride_x + offs_j[None, :],
                         mask=mask_t[:, None] & mask_j[None, :], other=0.0)
            sp = tl.load(sph_ptr + edge * stride_se + offs_s[:, None] * stride_ss + k[None, :] * stride_sk,
                         mask=mask_s[:, None] & mask_t[None, :], other=0.0)
            s_acc += _mma(sp, xg, IEEE)
        rad = tl.load(rad_ptr + edge * stride_re + offs_i[:, None] * stride_ri + offs_s[None, :] * stride_rs,
                      mask=mask_i[:, None] & mask_s[None, :], other=0.0)
        acc += _mma(rad, s_acc, IEEE)
    out_offs = row * D_INTERM * D_IN + offs_i[:, None] * D_IN + offs_j[None, :]
    tl.store(out_ptr + out_offs, acc, mask=mask_i[:, None] & mask_j[None, :])


@triton.jit
def _backward_kernel(
    x_ptr, sph_ptr, rad_ptr, grad_r_ptr,
    grad_x_ptr, grad_sph_ptr, grad_rad_ptr,
    gather_ptr, inner_ptr, trip_ptr, row_ptr, edge_ids_ptr,
    stride_x, stride_se, stride_ss, stride_sk, stride_re, stride_ri, stride_rs,
    stride_gse, stride_gss, stride_gsk,
    D_IN, N_SPH, D_INTERM,
    HAS_AGG2: tl.constexpr, IEEE: tl.constexpr,
    BLOCK_T: tl.constexpr, B_IN: tl.constexpr, B_SPH: tl.constexpr, B_INTERM: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs_j, offs_s, offs_i, offs_t, mask_j, mask_s, mask_i = _tile(D_IN, N_SPH, D_INTERM, BLOCK_T, B_IN, B_SPH,
                                                                   B_INTERM)
    mask_ij = mask_i[:, None] & mask_j[None, :]
    mask_is = mask_i[:, None] & mask_s[None, :]
    g_r = tl.load(grad_r_ptr + row * D_INTERM * D_IN + offs_i[:, None] * D_IN + offs_j[None, :],
                  mask=mask_ij, other=0.0)
    e_start, e_end = _edge_range(row_ptr, row, HAS_AGG2)
    for pos in range(e_start, e_end):
        edge = _edge_at(edge_ids_ptr, pos, HAS_AGG2)
        rad = tl.load(rad_ptr + edge * stride_re + offs_i[:, None] * stride_ri + offs_s[None, :] * stride_rs,
                      mask=mask_is, other=0.0)
        g_s = _mma(tl.trans(rad), g_r, IEEE)  # (B_SPH, B_IN)
        t_start = tl.load(trip_ptr + edge)
        t_end = tl.load(trip_ptr + edge + 1)
        s_acc = tl.zeros((B_SPH, B_IN), dtype=g_r.dtype)
        for t0 in range(t_start, t_end, BLOCK_T):
            t = t0 + offs_t
            mask_t = t < t_end
            src = tl.load(gather_ptr + t, mask=mask_t, other=0).to(tl.int64)
            k = tl.load(inner_ptr + t, mask=mask_t, other=0).to(tl.int64)
            mask_tj = mask_t[:, None] & mask_j[None, :]
            mask_st = mask_s[:, None] & mask_t[None, :]
            xg = tl.load(x_ptr + src[:, None] * stride_x + offs_j[None, :], mask=mask_tj, other=0.0)
            sp = tl.load(sph_ptr + edge * stride_se + offs_s[:, None] * stride_ss + k[None, :] * stride_sk,
                         mask=mask_st, other=0.0)
            s_acc += _mma(sp, xg, IEEE)
            g_sp = _mma(g_s, tl.trans(xg), IEEE)  # (B_SPH, BLOCK_T)
            g_xg = _mma(tl.trans(sp), g_s, IEEE)  # (BLOCK_T, B_IN)
            tl.store(grad_sph_ptr + edge * stride_gse + offs_s[:, None] * stride_gss + k[None, :] * stride_gsk,
                     g_sp, mask=mask_st)
            tl.atomic_add(grad_x_ptr + src[:, None] * D_IN + offs_j[None, :], g_xg, mask=mask_tj)
        g_rad = _mma(g_r, tl.trans(s_acc), IEEE)  # (B_INTERM, B_SPH)
        tl.store(grad_rad_ptr + edge * D_INTERM * N_SPH + offs_i[:, None] * N_SPH + offs_s[None, :], g_rad,
                 mask=mask_is)


def _segment_pointer(sorted_index: torch.Tensor, size: int) -> torch.Tensor:
    """CSR row pointer (size + 1,) of a sorted index."""
    counts = torch.bincount(sorted_index, minlength=size) if sorted_index.numel() else sorted_index.new_zeros(size)
    ptr = sorted_index.new_zeros(size + 1)
    torch.cumsum(counts, 0, out=ptr[1:])
    return ptr


def _is_sorted(index: torch.Tensor) -> bool:
    return index.numel() < 2 or not bool((index[1:] < index[:-1]).any())


class _Plan:
    """Index bookkeeping shared by forward and backward: triplet segments per edge, edge segments
    per output row, the per-edge radial matrices and their layout."""

    def __init__(self, rad_W1, sph, gather_idx, out_idx, out_inner, agg2_outer, agg2_inner, agg2_size):
        num_edges, n_sph = sph.shape[0], sph.shape[1]
        if not _is_sorted(out_idx):
            order = torch.sort(out_idx, stable=True).indices
            out_idx, gather_idx, out_inner = out_idx[order], gather_idx[order], out_inner[order]
        self.gather = gather_idx.contiguous()
        self.inner = out_inner.contiguous()
        self.trip_ptr = _segment_pointer(out_idx, num_edges)
        self.has_agg2 = agg2_outer is not None
        self.num_edges, self.n_sph = num_edges, n_sph
        if self.has_agg2:
            self.num_rows = int(agg2_size)
            self.k2 = rad_W1.shape[2] // n_sph
            self.agg2_outer, self.agg2_inner = agg2_outer, agg2_inner
            self.edge_ids = torch.sort(agg2_outer, stable=True).indices if not _is_sorted(agg2_outer) else \
                torch.arange(num_edges, device=sph.device)
            self.row_ptr = _segment_pointer(agg2_outer[self.edge_ids], self.num_rows)
        else:
            self.num_rows = num_edges
            self.edge_ids = self.row_ptr = self.trip_ptr  # unused by the kernels (HAS_AGG2=False)

    def edge_rad(self, rad_W1):
        """(E_out, d_interm, n_sph): the radial matrix each edge multiplies its S_e with."""
        if not self.has_agg2:
            return rad_W1
        d_interm = rad_W1.shape[1]
        padded = rad_W1.reshape(self.num_rows, d_interm, self.k2, self.n_sph)
        return padded[self.agg2_outer, :, self.agg2_inner, :]

    def rad_grad_to_input(self, grad_edge_rad, rad_W1):
        if not self.has_agg2:
            return grad_edge_rad.reshape(rad_W1.shape)
        d_interm = rad_W1.shape[1]
        grad = grad_edge_rad.new_zeros(self.num_rows, d_interm, self.k2, self.n_sph)
        grad[self.agg2_outer, :, self.agg2_inner, :] = grad_edge_rad
        return grad.reshape(rad_W1.shape)


def _meta(x, sph, rad):
    return dict(
        IEEE=x.dtype == torch.float32, BLOCK_T=BLOCK_T, B_IN=_block(x.shape[1]), B_SPH=_block(sph.shape[1]),
        B_INTERM=_block(rad.shape[1]), num_warps=NUM_WARPS,
    )


def contract_triton(plan: _Plan, x, sph, rad_e):
    """R (rows, d_interm * d_in): the fused gather -> basis -> radial contraction."""
    d_in, d_interm = x.shape[1], rad_e.shape[1]
    out = x.new_empty(plan.num_rows, d_interm * d_in)
    if plan.num_rows == 0 or out.numel() == 0:
        return out.zero_()
    _forward_kernel[(plan.num_rows,)](
        x, sph, rad_e, out, plan.gather, plan.inner, plan.trip_ptr, plan.row_ptr, plan.edge_ids,
        x.stride(0), sph.stride(0), sph.stride(1), sph.stride(2), rad_e.stride(0), rad_e.stride(1), rad_e.stride(2),
        d_in, sph.shape[1], d_interm, HAS_AGG2=plan.has_agg2, **_meta(x, sph, rad_e),
    )
    return out


def contract_backward_triton(plan: _Plan, x, sph, rad_e, grad_r):
    """Gradients of R w.r.t. x (E_in, d_in), sph (like sph) and the per-edge radial matrices."""
    d_in, d_interm = x.shape[1], rad_e.shape[1]
    grad_x = torch.zeros_like(x, memory_format=torch.contiguous_format)
    grad_sph = torch.zeros_like(sph)  # keeps sph's (possibly transposed) strides
    grad_rad = x.new_zeros(plan.num_edges, d_interm, sph.shape[1])
    if plan.num_rows == 0 or grad_r.numel() == 0:
        return grad_x, grad_sph, grad_rad
    grad_r = grad_r.contiguous()
    _backward_kernel[(plan.num_rows,)](
        x, sph, rad_e, grad_r, grad_x, grad_sph, grad_rad,
        plan.gather, plan.inner, plan.trip_ptr, plan.row_ptr, plan.edge_ids,
        x.stride(0), sph.stride(0), sph.stride(1), sph.stride(2), rad_e.stride(0), rad_e.stride(1), rad_e.stride(2),
        grad_sph.stride(0), grad_sph.stride(1), grad_sph.stride(2),
        d_in, sph.shape[1], d_interm, HAS_AGG2=plan.has_agg2, **_meta(x, sph, rad_e),
    )
    return grad_x, grad_sph, grad_rad


class FusedInteractionBilinear(torch.autograd.Function):
    """Autograd wrapper: gradients w.r.t. rad_W1, sph, x and weight (index tensors get none)."""

    @staticmethod
    def forward(ctx, rad_W1, sph, x, weight, gather_idx, out_idx, out_inner, agg2_outer, agg2_inner, agg2_size):
        plan = _Plan(rad_W1, sph, gather_idx, out_idx, out_inner, agg2_outer, agg2_inner, agg2_size)
        contracted = contract_triton(plan, x.contiguous(), sph, plan.edge_rad(rad_W1))
        ctx.plan = plan
        ctx.index_args = (gather_idx, out_idx, out_inner, agg2_outer, agg2_inner, agg2_size)
        ctx.save_for_backward(rad_W1, sph, x, weight, contracted)
        return contracted @ weight.T

    @staticmethod
    def backward(ctx, grad_out):
        rad_W1, sph, x, weight, contracted = ctx.saved_tensors
        if torch.is_grad_enabled():
            return _reference_backward(ctx, grad_out, rad_W1, sph, x, weight)
        plan = ctx.plan
        need_rad, need_sph, need_x, need_w = ctx.needs_input_grad[:4]
        grad_w = grad_out.T @ contracted if need_w else None
        grad_rad = grad_sph = grad_x = None
        if need_rad or need_sph or need_x:
            grad_r = grad_out @ weight
            gx, gs, gr = contract_backward_triton(plan, x.contiguous(), sph, plan.edge_rad(rad_W1), grad_r)
            grad_x = gx if need_x else None
            grad_sph = gs if need_sph else None
            grad_rad = plan.rad_grad_to_input(gr, rad_W1) if need_rad else None
        return grad_rad, grad_sph, grad_x, grad_w, None, None, None, None, None, None


def _reference_backward(ctx, grad_out, rad_W1, sph, x, weight):
    """Differentiable backward (create_graph=True): rebuild the op with the plain reference on the
    saved inputs (which keep their own history) and differentiate that graph."""
    from fastcsi.model.gemnet_oc.interaction_ref import interaction_bilinear_ref

    gather_idx, out_idx, out_inner, agg2_outer, agg2_inner, agg2_size = ctx.index_args
    needs = ctx.needs_input_grad[:4]
    with torch.enable_grad():
        # Differentiate w.r.t. fresh aliases: autograd.grad w.r.t. the saved tensors themselves would
        # be the TOTAL derivative, adding paths between them (in GemNet-OC a later block's x is a
        # function of the shared bases rad_W1 and sph); the aliases keep the grads differentiable.
        inputs = [t.view_as(t) for t in (rad_W1, sph, x, weight)]
        out = interaction_bilinear_ref(inputs[0], inputs[1], inputs[2], gather_idx, out_idx, out_inner, inputs[3],
                                       agg2_outer, agg2_inner, agg2_size)
        wanted = [t for t, need in zip(inputs, needs) if need]
        grads = iter(torch.autograd.grad(out, wanted, grad_out, create_graph=True, allow_unused=True))
    result = [next(grads) if need else None for need in needs]
    return (*result, None, None, None, None, None, None)


def interaction_bilinear_triton(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                                agg2_outer=None, agg2_inner=None, agg2_size=None):
    """Same contract as ``interaction_bilinear_ref`` (float32/float64, CUDA or the interpreter)."""
    if gather_idx is None:
        gather_idx = torch.arange(x.shape[0], device=x.device)
    return FusedInteractionBilinear.apply(rad_W1, sph, x, weight, gather_idx, out_idx, out_inner,
                                          agg2_outer, agg2_inner, agg2_size)
