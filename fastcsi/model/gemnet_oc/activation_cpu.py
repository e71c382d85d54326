"""The "cpu" backend of GemNet-OC's activation, scale * SiLU(x): the native kernel of
``csrc/activation.cpp`` (its algorithm, vectorisation and accuracy are stated there; O(n) time,
split over torch's intra-op threads) behind a ``torch.autograd.Function``.

Gradients: the backward is the native kernel too; like torch's SiLU it saves only its input.
``inplace=True`` (no autograd) overwrites ``x``. Takes contiguous float32 CPU tensors only
(``native_ok``).
"""
from __future__ import annotations

import torch

from fastcsi import _native
from fastcsi.errors import FastCSIError


def native_available() -> bool:
    return _native.has("silu_forward")


def native_ok(x: torch.Tensor) -> bool:
    """The tensors the native kernel takes: contiguous float32 on the CPU."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and x.is_contiguous()


class _NativeSiLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale):
        ctx.scale = scale
        ctx.save_for_backward(x)
        y = torch.empty_like(x)
        _native.native.silu_forward(x.detach().numpy(), y.numpy(), scale, torch.get_num_threads())
        return y

    @staticmethod
    def backward(ctx, grad):
        (x,) = ctx.saved_tensors
        return silu_backward_native(grad, x, ctx.scale), None


def silu_backward_native(grad: torch.Tensor, x: torch.Tensor, scale: float) -> torch.Tensor:
    """d(scale SiLU(x))/dx times ``grad`` by the native kernel (float32 CPU; x contiguous)."""
    out = torch.empty_like(x)
    _native.native.silu_backward(grad.detach().contiguous().numpy(), x.detach().numpy(), out.numpy(), float(scale),
                                 torch.get_num_threads())
    return out


def silu_cpu(x: torch.Tensor, scale: float = 1.0, inplace: bool = False) -> torch.Tensor:
    """``scale * SiLU(x)`` by the native kernel (``x`` as ``native_ok`` says)."""
    if torch.is_grad_enabled() and x.requires_grad:
        if inplace:
            raise FastCSIError("silu: inplace=True on a tensor that needs a gradient")
        return _NativeSiLU.apply(x, float(scale))
    y = x if inplace else torch.empty_like(x)
    _native.native.silu_forward(x.detach().numpy(), y.detach().numpy(), float(scale), torch.get_num_threads())
    return y
