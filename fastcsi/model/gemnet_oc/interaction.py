"""Dispatcher of GemNet-OC's triplet/quadruplet interaction op (``interaction_bilinear``).

The op, its shapes and complexity: interaction_ref.py. Backends:
  "ref"     interaction_ref.py, the plain torch oracle
  "cpu"     interaction_cpu.py, the gather formulation; what "auto" runs on CPU tensors (even when
            the Triton interpreter is on: the interpreter is a correctness tool)
  "triton"  interaction_triton.py, fused gather -> basis -> radial contraction without the padded
            matrices, forward and backward; what "auto" runs on CUDA tensors
"cuda" has no separate kernel for this op. ``fastcsi.backend.override(interaction=...)`` sets the
backend of every call made with ``backend="auto"`` (the whole model).
"""
from __future__ import annotations

import torch

from fastcsi.backend import resolve_backend, triton_usable
from fastcsi.model.gemnet_oc.interaction_cpu import interaction_bilinear_cpu
from fastcsi.model.gemnet_oc.interaction_ref import interaction_bilinear_ref

OP_NAME = "gemnet_oc.interaction_bilinear"


def choose_backend(x: torch.Tensor, backend: str = "auto") -> str:
    """The backend ``interaction_bilinear`` runs for inputs like ``x`` (see the module docstring);
    an explicit backend that cannot run raises FastCSIError."""
    on_cuda = x.device.type == "cuda"
    available = {"triton": x.dtype in (torch.float32, torch.float64) and triton_usable(x.device), "cpu": not on_cuda}
    return resolve_backend(OP_NAME, backend, x.device, available, auto_order=("triton",) if on_cuda else ("cpu",))


def interaction_bilinear(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                         agg2_outer=None, agg2_inner=None, agg2_size=None, backend: str = "auto"):
    """``auto``: the fused Triton kernel on CUDA tensors (the reference with a FallbackWarning when
    Triton is missing), the "cpu" gather formulation on CPU tensors. Arguments as
    ``interaction_bilinear_ref``."""
    chosen = choose_backend(x, backend)
    if chosen == "cpu":
        return interaction_bilinear_cpu(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                                        agg2_outer, agg2_inner, agg2_size)
    if chosen == "triton":
        from fastcsi.model.gemnet_oc.interaction_triton import interaction_bilinear_triton

        return interaction_bilinear_triton(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                                           agg2_outer, agg2_inner, agg2_size)
    return interaction_bilinear_ref(rad_W1, sph, x, gather_idx, out_idx, out_inner, weight,
                                    agg2_outer, agg2_inner, agg2_size)
