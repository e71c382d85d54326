"""Benchmark: one AdamW training step of GemNet-OC (12 Å graphs, direct forces) vs the plain path.

The step runs through fastcsi's training loop (collate, normalised energy + force loss, backward,
gradient clipping, AdamW, EMA) on rattled ethanol molecules.

Inputs: n ethanol molecules with Lennard-Jones labels (the step's cost does not depend on label
values); --quick: gemnet-oc-tiny on 2 molecules, otherwise gemnet-oc-s on 8 and 32. Every trainer
is built from the same seed, so all start from the same weights. Reference: the first step of a
trainer with every op on its plain reference path (bench.harness.REFERENCE_PATH): its loss and every
parameter gradient (after clipping); each method's first step (its check call, on the same
structures and weights) must agree to 1e-3 relative per parameter (float32 through a deep network
and its backward, stated). Methods (timed round-robin by bench/harness.py):
  fastcsi train step (auto)   ours: the loop as ``fastcsi pretrain`` runs it
  plain PyTorch path          baseline: radius graph and interaction on their references, fused
                              layers off (``override(**PLAIN)``)
JMP's own training step is timed against ours in the same run by bench/vs_jmp.py (when JMP is
installed), not here.

    python bench/train_step.py [--quick] [--device cpu|cuda] [--threads 2] [--out x.json]
"""
from __future__ import annotations

import sys

import numpy as np

from fastcsi._bench.harness import REFERENCE_PATH, Case, Method, relative_error, script_main

KERNEL = "train"
TOLERANCE = 1e-3
# the plain control's kernel paths (run inside fastcsi.backend.override)
PLAIN = {"radius": "ref", "interaction": "ref", "fused": False}


def ethanol_structures(n: int, seed: int = 0):
    """Rattled ethanol with Lennard-Jones labels."""
    from ase.build import molecule
    from ase.calculators.lj import LennardJones

    from fastcsi.data import Structure

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.positions += rng.normal(scale=0.05, size=atoms.positions.shape)
        atoms.calc = LennardJones(sigma=1.0, epsilon=0.01, rc=5.0)
        out.append(Structure(atoms.numbers, atoms.positions, energy=atoms.get_potential_energy() - 4200.0,
                             forces=atoms.get_forces(), id=str(i)))
    return out


def make_trainer(structures, device: str, config: str, rundir: str):
    import torch

    from fastcsi.model import build_model
    from fastcsi.train.config import TrainConfig
    from fastcsi.train.loop import Trainer
    from fastcsi.train.normalization import NormalizedModel, Normalizer

    torch.manual_seed(0)
    gemnet = build_model(config, direct_forces=True, cutoff=12.0)
    model = NormalizedModel(gemnet, Normalizer.fit(structures))
    cfg = TrainConfig(epochs=1000, batch_size=len(structures), amp=False)
    return Trainer(model, cfg, structures, [], ("energy", "forces"), rundir, device=device, progress=False,
                   log=lambda *a: None)


def step(trainer, paths: dict | None = None) -> dict:
    """One training step; its loss and every parameter's gradient (references, no copies)."""
    from fastcsi.backend import override

    with override(**(paths or {})):
        loss = trainer.train_step(np.arange(len(trainer.train_set)))
    return {"loss": loss, **{name: p.grad for name, p in trainer.model.named_parameters() if p.grad is not None}}


def cases(quick: bool = True, device: str = "cpu", sizes=None):
    import tempfile

    config = "gemnet-oc-tiny" if quick else "gemnet-oc-s"
    for n in sizes or ((2,) if quick else (8, 32)):
        def inputs(n=n):
            structures = ethanol_structures(n)
            rundir = tempfile.mkdtemp(prefix="fastcsi-bench-train-")
            return {name: make_trainer(structures, device, config, rundir) for name in ("ours", "plain", "ref")}

        def reference(inp):
            return {k: (v.detach().clone() if hasattr(v, "detach") else v) for k, v in step(inp["ref"], REFERENCE_PATH).items()}

        atoms = 9 * n
        yield Case(KERNEL, f"{config} AdamW step, {n} ethanol, 12 Å", atoms, "atoms", n, "structures", inputs,
                   reference, relative_error, [
                       Method("fastcsi train step (auto)", "ours", lambda inp: step(inp["ours"]), "float32", TOLERANCE),
                       Method("plain PyTorch path", "baseline", lambda inp: step(inp["plain"], PLAIN), "float32",
                              TOLERANCE)],
                   repeats=2 if quick else 5)


if __name__ == "__main__":
    sys.exit(script_main(KERNEL, cases, __doc__))
