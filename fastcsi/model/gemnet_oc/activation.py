"""Dispatcher of GemNet-OC's activation op, scale * SiLU(x) (``silu``).

Backends:
  "auto"  the native kernel (activation_cpu.py, csrc/activation.cpp) for contiguous float32 CPU
          tensors when the extension is built (else the reference, with a FallbackWarning); the
          reference for every other dtype and device, by design and without a warning: CUDA's
          elementwise SiLU is already one fused pass (no Triton kernel: the declared exception),
          and float64 is the exactness path of the tests
  "cpu"   the native kernel; an error for anything it does not take
  "ref"   activation_ref.py, torch's own SiLU
Accuracy of the native kernel against float64 (tests/model/test_activation.py): <= 4 float32 ulps
relative for the forward, <= 1e-6 of max |grad| for the backward.
"""
from __future__ import annotations

import torch

from fastcsi import _native
from fastcsi.backend import resolve_backend
from fastcsi.model.gemnet_oc.activation_cpu import native_available, native_ok, silu_cpu
from fastcsi.model.gemnet_oc.activation_ref import silu_ref

OP_NAME = "activation.silu"
# why an explicit "cpu" cannot run (for the error message; fixed per process)
_NO_EXTENSION = {"cpu": f"the native CPU kernel is unavailable: {_native.NATIVE_ERROR}"}
_WRONG_TENSOR = {"cpu": "it takes contiguous float32 CPU tensors only"}


def silu(x: torch.Tensor, scale: float = 1.0, inplace: bool = False, backend: str = "auto") -> torch.Tensor:
    """``scale * SiLU(x)``; ``inplace`` writes into ``x`` (only where no gradient is recorded)."""
    have, takes = native_available(), native_ok(x)
    chosen = resolve_backend(OP_NAME, backend, x.device, {"cpu": have and takes},
                             auto_order=("cpu",) if takes else ("ref",),
                             reasons=_NO_EXTENSION if not have else _WRONG_TENSOR)
    if chosen == "cpu":
        return silu_cpu(x, scale, inplace)
    return silu_ref(x, scale, inplace)
