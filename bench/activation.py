"""Benchmark: GemNet-OC's scaled SiLU, ours (csrc/activation.cpp) vs torch's CPU SiLU (the baseline).

Methods timed in the same run, round-robin (one call of each per round, so load drifts hit all alike),
on the tensor shapes GemNet-OC-S produces for 32 ethanol molecules (288 atoms x 256, 2304 edges x 512)
and a larger edge batch, float32, torch's thread count:
  forward   torch.nn.functional.silu(x) * s   vs  silu(x, s) (native)        out of place (training)
  inplace   torch silu_(x).mul_(s)            vs  silu(x, s, inplace=True)   (inference)
  backward  aten.silu_backward(g, x) * s      vs  the native backward
Correctness first: ours vs float64 (max ulps of the forward, max error of the backward relative to
max |grad|); a result past the test tolerances (4 ulps, 1e-6) fails the run.

    python bench/activation.py [--quick] [--threads N] [--out bench_out/activation.json]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats_common import print_table, save_json  # noqa: E402

from fastcsi import _native  # noqa: E402
from fastcsi.model.gemnet_oc.activation import silu  # noqa: E402
from fastcsi.model.gemnet_oc.activation_cpu import silu_backward_native  # noqa: E402
from fastcsi.utils import versions  # noqa: E402

SCALE = 1.0 / 0.6
SHAPES = {"atoms 288x256": (288, 256), "edges 2304x512": (2304, 512), "edges 18432x512": (18432, 512)}


def _check(x: torch.Tensor, g: torch.Tensor) -> dict:
    y = silu(x, SCALE, backend="cpu")
    x64 = x.double().requires_grad_()
    ref = SCALE * torch.nn.functional.silu(x64)
    big = ref.abs() >= 1e-30
    spacing = torch.from_numpy(np.spacing(np.abs(ref.detach().float().numpy()))).double()
    ulps = float(((y.double() - ref.detach()).abs() / spacing)[big].max())
    (ref * g.double()).sum().backward()
    a = x.clone().requires_grad_()
    (silu(a, SCALE, backend="cpu") * g).sum().backward()
    grad_err = float((a.grad.double() - x64.grad).abs().max() / x64.grad.abs().max())
    return {"forward_max_ulps": ulps, "backward_max_err": grad_err}


def run(quick: bool = False, threads: int | None = None) -> dict:
    if not _native.has("silu_forward"):
        raise SystemExit(f"the native extension is not built: {_native.NATIVE_ERROR}")
    if threads:
        torch.set_num_threads(threads)
    shapes = dict(list(SHAPES.items())[:2]) if quick else SHAPES
    rounds = 10 if quick else 50
    rows, checks = [], {}
    for label, shape in shapes.items():
        gen = torch.Generator().manual_seed(0)
        x = torch.randn(shape, generator=gen) * 3
        g = torch.randn(shape, generator=gen)
        checks[label] = _check(x, g)
        work = x.clone()
        pairs = {
            "forward": (lambda: torch.nn.functional.silu(x).mul_(SCALE), lambda: silu(x, SCALE, backend="cpu")),
            "inplace": (lambda: torch.nn.functional.silu(work, inplace=True).mul_(SCALE),
                        lambda: silu(work, SCALE, inplace=True, backend="cpu")),
            "backward": (lambda: torch.ops.aten.silu_backward(g, x).mul_(SCALE),
                         lambda: silu_backward_native(g, x, SCALE)),
        }
        for op, (baseline, ours) in pairs.items():
            for fn in (baseline, ours):  # warm-up
                fn()
            times = {"torch": [], "ours": []}
            for _ in range(rounds):
                for name, fn in (("torch", baseline), ("ours", ours)):
                    if op == "inplace":
                        work.copy_(x)  # same inputs every call (SiLU of SiLU would drift)
                    start = time.perf_counter()
                    fn()
                    times[name].append(time.perf_counter() - start)
            t_torch, t_ours = statistics.median(times["torch"]), statistics.median(times["ours"])
            rows.append({"shape": label, "op": op, "torch_ms": t_torch * 1e3, "ours_ms": t_ours * 1e3,
                         "speedup": t_torch / t_ours, "ours_Gelem_s": x.numel() / t_ours / 1e9})
    return {"bench": "activation", "quick": quick, "threads": torch.get_num_threads(),
            "isa": _native.native.silu_kernel_isa(), "rounds": rounds, "checks": checks, "rows": rows,
            "versions": versions()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="two shapes, 10 rounds (seconds)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON")
    args = parser.parse_args(argv)
    result = run(args.quick, args.threads)
    print(f"threads {result['threads']}, kernel {result['isa']}, medians of {result['rounds']} round-robin calls")
    for label, c in result["checks"].items():
        print(f"check {label}: forward {c['forward_max_ulps']:.2f} ulps, backward {c['backward_max_err']:.1e}")
    print_table(result["rows"], ["shape", "op", "torch_ms", "ours_ms", "speedup", "ours_Gelem_s"])
    if args.out:
        save_json(result, args.out)
        print(f"saved {args.out}")
    bad = [k for k, c in result["checks"].items() if c["forward_max_ulps"] > 4 or c["backward_max_err"] > 1e-6]
    if bad:
        print(f"FAILED: outside the test tolerances on {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
