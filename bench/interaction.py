"""Benchmark: GemNet-OC's interaction op (interaction_bilinear), fused paths vs plain torch.

The op's backends on the very arguments the model passes it (triplet and quadruplet interactions).

Inputs: the arguments of every ``interaction_bilinear`` call of one GemNet-OC forward pass (the
model's interaction blocks: edge-to-edge triplets, quadruplets, atom-to-edge, edge-to-atom with the
second aggregation), recorded once from the model on rattled ethanol molecules (float32;
gemnet-oc-tiny on 4 molecules with --quick, gemnet-oc-s on 32 otherwise); one case per distinct
call shape. Reference: interaction_ref.interaction_bilinear_ref on float64 copies; error = max |out
- ref| / max |ref|, tolerance 1e-5 (float32 rounding of the contraction sums).
Methods (timed round-robin by bench/harness.py):
  fastcsi interaction (cpu)     ours on CPU: the gather formulation (interaction_cpu.py)
  fastcsi interaction (triton)  ours on CUDA: the fused gather -> basis -> radial contraction kernel
  plain torch (ref)             baseline: the reference in float32, padded matrices and all (the
                                arithmetic of JMP's GemNet-OC)
Work model: flops of the reference's three matmuls (2 x E_out x (n_sph x Kmax x d_in + d_interm x
n_sph' x d_in + d_interm x d_in x d_out)), no byte model.

    python bench/interaction.py [--quick] [--device cpu|cuda] [--threads N] [--out x.json]
"""
from __future__ import annotations

import sys

from fastcsi._bench.harness import Case, Method, relative_error, script_main

KERNEL = "interaction"
ARGS = ("rad_W1", "sph", "x", "gather_idx", "out_idx", "out_inner", "weight", "agg2_outer", "agg2_inner", "agg2_size")


def recorded_calls(config: str, molecules: int, device: str) -> list[dict]:
    """The arguments of each distinct-shape ``interaction_bilinear`` call of one forward pass."""
    import torch

    from fastcsi._bench.gemnet import rattled_ethanols
    from fastcsi.backend import override
    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.model import build_model
    from fastcsi.model.gemnet_oc import blocks

    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    batch = batch_from_atoms(rattled_ethanols(molecules), dtype=torch.float32).to(device)
    calls, seen = [], set()
    original = blocks.interaction_bilinear

    def record(*args):
        named = dict(zip(ARGS, args))
        key = (tuple(named["sph"].shape), tuple(named["x"].shape), named["agg2_outer"] is not None)
        if key not in seen:
            seen.add(key)
            calls.append({k: (v.detach().clone() if isinstance(v, torch.Tensor) else v) for k, v in named.items()})
        return original(*args)

    blocks.interaction_bilinear = record
    try:  # the "ref" path: the CPU fast path would contract before this op is called
        with override(interaction="ref"), torch.no_grad():
            model(batch)
    finally:
        blocks.interaction_bilinear = original
    return calls


def _flops(c: dict) -> float:
    e_out, n_sph, kmax = c["sph"].shape
    d_in, d_out = c["x"].shape[1], c["weight"].shape[0]
    rows, d_interm, n_sph2 = c["rad_W1"].shape
    return 2.0 * (e_out * n_sph * kmax * d_in + rows * d_interm * n_sph2 * d_in + rows * d_interm * d_in * d_out)


def cases(quick: bool = True, device: str = "cpu", sizes=None):
    import torch

    from fastcsi.model.gemnet_oc.interaction import interaction_bilinear
    from fastcsi.model.gemnet_oc.interaction_ref import interaction_bilinear_ref

    config = "gemnet-oc-tiny" if quick else "gemnet-oc-s"
    cuda = str(device).startswith("cuda")
    for molecules in sizes or ((4,) if quick else (32,)):
        calls = recorded_calls(config, molecules, device)
        for number, call in enumerate(calls):
            def inputs(call=call):
                return call

            def reference(c):
                return interaction_bilinear_ref(*[v.detach().cpu().double() if isinstance(v, torch.Tensor)
                                                  and v.is_floating_point() else
                                                  (v.cpu() if isinstance(v, torch.Tensor) else v)
                                                  for v in (c[k] for k in ARGS)])

            def run(backend):
                return lambda c: interaction_bilinear(*(c[k] for k in ARGS), backend=backend)

            e_out, _, kmax = call["sph"].shape
            kind = "edge -> atom" if call["agg2_outer"] is not None else "edge -> edge"
            name = (f"{config}, {molecules} ethanol: call {number} ({kind}, {e_out} x {kmax} neighbours, "
                    f"{call['x'].shape[1]} -> {call['weight'].shape[0]})")
            ours = Method("fastcsi interaction (triton)", "ours", run("triton"), "float32") if cuda else \
                Method("fastcsi interaction (cpu)", "ours", run("cpu"), "float32")
            yield Case(KERNEL, name, molecules, "molecules", e_out, "output rows", inputs, reference, relative_error,
                       [ours, Method("plain torch (ref)", "baseline", run("ref"), "float32")], flops=_flops(call),
                       repeats=5 if quick else 20)


if __name__ == "__main__":
    sys.exit(script_main(KERNEL, cases, __doc__))
