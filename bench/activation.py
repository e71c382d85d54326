"""Benchmark: GemNet-OC's scaled SiLU, ours (csrc/activation.cpp) vs torch's CPU SiLU (the baseline).

Cases: float32 (rows, width) tensors of the shapes GemNet-OC-S produces (atom rows x 256, edge rows
x 512; --quick: smaller, width 256), three ops each:
  forward   silu(x, s) (native, out of place: training)    vs  torch.nn.functional.silu(x) * s
  inplace   silu(x, s, inplace=True) (inference)            vs  torch silu_(x).mul_(s)
  backward  the native backward                             vs  aten.silu_backward(g, x) * s
Reference: activation_ref.silu_ref in float64 (and float64 autograd for the backward); error = max
|y - y_ref| / max |y_ref|, stated tolerance 1e-6 (float32 rounding of one SiLU). Methods timed
round-robin by the harness (bench/harness.py); the in-place rows restore their input, untimed,
before every call.

    python bench/activation.py [--quick] [--threads N] [--out bench_out/activation.json]
"""
from __future__ import annotations

import sys

from fastcsi._bench.harness import Case, Method, relative_error, script_main

KERNEL = "activation"
SCALE = 1.0 / 0.6
TOLERANCE = 1e-6


def cases(quick: bool = True, device: str = "cpu", sizes=None):
    import torch

    from fastcsi import _native
    from fastcsi.model.gemnet_oc.activation import silu
    from fastcsi.model.gemnet_oc.activation_cpu import silu_backward_native
    from fastcsi.model.gemnet_oc.activation_ref import silu_ref

    width = 256 if quick else 512
    skip = None if _native.has("silu_forward") else f"native extension not built: {_native.NATIVE_ERROR}"
    for rows in sizes or ((288, 2304) if quick else (2304, 18432)):
        def inputs(rows=rows):
            gen = torch.Generator().manual_seed(rows)
            x = torch.randn((rows, width), generator=gen) * 3
            return {"x": x, "g": torch.randn((rows, width), generator=gen), "work": x.clone()}

        def forward_ref(inp):
            return silu_ref(inp["x"].double(), SCALE)

        def backward_ref(inp):
            x64 = inp["x"].double().requires_grad_()
            (silu_ref(x64, SCALE) * inp["g"].double()).sum().backward()
            return x64.grad

        def restore(inp):
            inp["work"].copy_(inp["x"])  # same input every call (SiLU of SiLU would drift)

        ops = {
            "forward": (forward_ref, None,
                        lambda inp: silu(inp["x"], SCALE, backend="cpu"),
                        lambda inp: torch.nn.functional.silu(inp["x"]).mul_(SCALE)),
            "inplace": (forward_ref, restore,
                        lambda inp: silu(inp["work"], SCALE, inplace=True, backend="cpu"),
                        lambda inp: torch.nn.functional.silu(inp["work"], inplace=True).mul_(SCALE)),
            "backward": (backward_ref, None,
                         lambda inp: silu_backward_native(inp["g"], inp["x"], SCALE),
                         lambda inp: torch.ops.aten.silu_backward(inp["g"], inp["x"]).mul_(SCALE)),
        }
        elements = rows * width
        for op, (reference, reset, ours, baseline) in ops.items():
            traffic = (3 if op == "backward" else 2) * 4.0 * elements  # float32 in (+ grad) and out
            yield Case(KERNEL, f"scaled SiLU {op}, rows x {width} float32", rows, "rows", elements, "elements",
                       inputs, reference, relative_error, bytes=traffic, repeats=10 if quick else 50, methods=[
                           Method("fastcsi silu (native)", "ours", ours, "float32", TOLERANCE, reset=reset, skip=skip),
                           Method("torch silu", "baseline", baseline, "float32", TOLERANCE, reset=reset)])


if __name__ == "__main__":
    sys.exit(script_main(KERNEL, cases, __doc__))
