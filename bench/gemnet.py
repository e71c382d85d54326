"""Benchmark: GemNet-OC model-level timings (float32): feature extraction, forward, forward + backward.

Workloads: n rattled ethanol molecules (no PBC; --quick: gemnet-oc-tiny on 1 and 3 molecules,
otherwise gemnet-oc-s, 12 Å, on 4, 16 and 32) and, in full mode, 8 rattled Cu(111) 3x3x9 slabs
(81 atoms, PBC, 10 Å vacuum). Stages (one case each; --quick: extract only):
  extract   extract_features (graphs + backbone, inference_mode): the CSI feature path
  forward   model(batch): energy + direct forces, no autograd graph
  fwd+bwd   forward with grad + backward of an energy and force loss (the cost of a training step)
Reference: the same model with every op on its plain reference path (bench.harness.REFERENCE_PATH:
reference radius graph, index sets, interaction, activation, unfused layers): features, energy,
forces and, for fwd+bwd, every parameter gradient; error = max |x - x_ref| / max |x_ref| over what a
method returns, tolerance 1e-4 (float32 through a deep network, stated).
Methods (timed round-robin by bench/harness.py):
  fastcsi (auto)              ours: the backends "auto" picks (compiled radius graph, numba index
                              sets, native SiLU, fused layers; the Triton interaction on CUDA)
  plain PyTorch path          baseline: interaction on its reference, fused layers off (JMP-shaped
                              arithmetic), graph construction as ours
  full forward (no_grad)      baseline of extract: what an extractor that just calls the model runs
Flops counted once per method by torch's FlopCounterMode (matmuls), no byte model. JMP's own code is
timed against ours in the same run by bench/vs_jmp.py (when JMP is installed), not here.

    python bench/gemnet.py [--quick] [--device cpu|cuda] [--threads 2] [--stages extract,forward,fwd+bwd] [--out x.json]
"""
from __future__ import annotations

import sys

from fastcsi._bench.harness import REFERENCE_PATH, Case, Method, relative_error, script_main

KERNEL = "gemnet"
TOLERANCE = 1e-4
PLAIN = dict(interaction="ref", fused=False)
STAGES = ("extract", "forward", "fwd+bwd")


def rattled_ethanols(n: int) -> list:
    """n ethanol molecules, each rattled by 0.05 Å with its own seed (the GemNet-OC bench input)."""
    from ase.build import molecule

    out = []
    for seed in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=seed)
        out.append(atoms)
    return out


def cu_slabs(n: int, size=(3, 3, 9)) -> list:
    from ase.build import fcc111

    out = []
    for seed in range(n):
        slab = fcc111("Cu", size, vacuum=10.0, periodic=True)
        slab.rattle(0.05, seed=seed)
        out.append(slab)
    return out


def stage_fn(stage: str, model, batch, paths: dict | None = None):
    """One call of ``stage`` under ``override(**paths)``; returns what the check compares."""
    import torch

    from fastcsi.backend import override
    from fastcsi.model import extract_features

    def extract():
        with override(**(paths or {})):
            return {"features": extract_features(model, batch)}

    def forward():
        with override(**(paths or {})), torch.no_grad():
            out = model(batch)
        return {"energy": out["energy"], "forces": out["forces"]}

    def forward_backward():
        model.zero_grad(set_to_none=True)
        with override(**(paths or {})):
            out = model(batch)
            (out["energy"].square().mean() + out["forces"].square().mean()).backward()
        grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
        return {"energy": out["energy"].detach(), "forces": out["forces"].detach(), "grads": grads}

    return {"extract": extract, "forward": forward, "fwd+bwd": forward_backward}[stage]


def model_case(kernel, name, size, size_unit, model, batch, stage, methods, repeats) -> Case:
    """A case whose reference is ``stage`` on the plain reference path of every op (for extract,
    the forward's energy and forces too: a full-forward baseline returns those)."""
    def reference(b):
        expected = stage_fn(stage, model, b, REFERENCE_PATH)()
        if stage == "extract":
            expected.update(stage_fn("forward", model, b, REFERENCE_PATH)())
        return expected

    return Case(kernel, name, size, size_unit, batch.num_atoms, "atoms", lambda: batch, reference, relative_error,
                methods, repeats=repeats)


def cases(quick: bool = True, device: str = "cpu", sizes=None, stages=None):
    import torch

    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.model import build_model

    config = "gemnet-oc-tiny" if quick else "gemnet-oc-s"
    stages = tuple(stages.split(",")) if isinstance(stages, str) else (stages or (("extract",) if quick else STAGES))
    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    workloads = [(f"{n} ethanol", n, "molecules", rattled_ethanols(n)) for n in sizes or ((1, 3) if quick else (4, 16, 32))]
    if not quick and sizes is None:
        workloads.append(("8 Cu(111) 3x3x9 slabs", 8, "slabs", cu_slabs(8)))
    for label, size, unit, atoms in workloads:
        batch = batch_from_atoms(atoms, dtype=torch.float32).to(device)
        for stage in stages:
            methods = [Method("fastcsi (auto)", "ours", lambda b, s=stage: stage_fn(s, model, b)(), "float32",
                              TOLERANCE, count_flops=True),
                       Method("plain PyTorch path", "baseline", lambda b, s=stage: stage_fn(s, model, b, PLAIN)(),
                              "float32", TOLERANCE, count_flops=True)]
            if stage == "extract":
                methods.append(Method("full forward (no_grad)", "baseline",
                                      lambda b: stage_fn("forward", model, b)(), "float32", TOLERANCE,
                                      count_flops=True))
            yield model_case(KERNEL, f"{config} {stage}, {label}, float32", size, unit, model, batch, stage,
                             methods, repeats=2 if quick else 5)


def _arguments(parser):
    parser.add_argument("--stages", default=None, help=f"comma-separated subset of {','.join(STAGES)}")
    return ["stages"]


if __name__ == "__main__":
    sys.exit(script_main(KERNEL, cases, __doc__, add_arguments=_arguments))
