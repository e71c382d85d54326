"""GemNet-OC's activation, scale * SiLU(x), as a kernel op: ``silu`` dispatches, ``silu_ref`` is the
oracle (torch's own SiLU), the CPU kernel is ``csrc/activation.cpp`` (its algorithm and accuracy are
stated there).

Backends:
  "auto"  the native kernel for contiguous float32 CPU tensors when the extension is built (else the
          reference, with one warning); the reference for every other dtype and device (CUDA's
          elementwise SiLU is already one fused pass, and float64 is the exactness path of the tests)
  "cpu"   the native kernel; an error for anything it does not take
  "ref"   ``silu_ref``
Gradients: the native path is a ``torch.autograd.Function`` whose backward is the native kernel too;
like torch's SiLU it saves only its input. ``inplace=True`` (no autograd) overwrites ``x``.
Accuracy of the native kernel against float64 (tests/model/test_activation.py): <= 4 float32 ulps
relative for the forward, <= 1e-6 of max |grad| for the backward.
"""
from __future__ import annotations

import warnings

import torch

from fastcsi import _native
from fastcsi.errors import FastCSIError

_warned = False


def silu_ref(x: torch.Tensor, scale: float = 1.0, inplace: bool = False) -> torch.Tensor:
    y = torch.nn.functional.silu(x, inplace=inplace)
    return y if scale == 1.0 else y.mul_(scale)


def _native_ok(x: torch.Tensor) -> bool:
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


def _silu_native(x: torch.Tensor, scale: float, inplace: bool) -> torch.Tensor:
    if torch.is_grad_enabled() and x.requires_grad:
        if inplace:
            raise FastCSIError("silu: inplace=True on a tensor that needs a gradient")
        return _NativeSiLU.apply(x, float(scale))
    y = x if inplace else torch.empty_like(x)
    _native.native.silu_forward(x.detach().numpy(), y.detach().numpy(), float(scale), torch.get_num_threads())
    return y


def silu(x: torch.Tensor, scale: float = 1.0, inplace: bool = False, backend: str = "auto") -> torch.Tensor:
    """``scale * SiLU(x)``; ``inplace`` writes into ``x`` (only where no gradient is recorded)."""
    global _warned
    if backend == "ref":
        return silu_ref(x, scale, inplace)
    if backend not in ("auto", "cpu"):
        raise FastCSIError(f"silu: unknown backend {backend!r}; use 'auto', 'cpu' or 'ref'")
    have = _native.has("silu_forward")
    if backend == "cpu":
        if not have:
            raise FastCSIError(f"silu: the native CPU kernel is unavailable: {_native.NATIVE_ERROR}")
        if not _native_ok(x):
            raise FastCSIError("silu backend 'cpu' takes contiguous float32 CPU tensors only")
        return _silu_native(x, scale, inplace)
    if not _native_ok(x):
        return silu_ref(x, scale, inplace)
    if not have:
        if not _warned:
            warnings.warn(f"fastcsi: native SiLU unavailable, using torch's ({_native.NATIVE_ERROR})", stacklevel=2)
            _warned = True
        return silu_ref(x, scale, inplace)
    return _silu_native(x, scale, inplace)
