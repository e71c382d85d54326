"""Benchmark: GemNet-OC per-atom feature extraction (the CSI hot path) vs a full model forward.

On a batch of mixed small molecules.

Inputs: n rattled molecules cycling through ethanol, benzene, water, methane, ammonia, acetic acid,
ethylene and acetaldehyde (--quick: 32, otherwise 128), float32, gemnet-oc-tiny by default.
Reference: the same model with every op on its plain reference path (bench.harness.REFERENCE_PATH):
final and first-block node features, energy and forces; error = max |x - x_ref| / max |x_ref| over
what a method returns, tolerance 1e-4 (float32, stated). Methods (timed round-robin by
bench/harness.py):
  extract_features (final)   ours: fastcsi.model.extract_features(layer="final", kind="node"):
                             inference_mode, no force branch, no heads
  full forward (no_grad)     baseline: energy + direct forces through the heads, what an extractor
                             that just calls the model would run
  extract_features (block1)  control: stops after the first interaction block
  one structure per call     control: the final features of every structure extracted alone (its
                             check is the batched-equals-single check)

    python bench/gemnet_oc.py [--quick] [--device cpu|cuda] [--config gemnet-oc-tiny] [--out x.json]
"""
from __future__ import annotations

import sys

from fastcsi._bench.harness import REFERENCE_PATH, Case, Method, relative_error, script_main

KERNEL = "gemnet_oc"
TOLERANCE = 1e-4
MOLECULES = ["CH3CH2OH", "C6H6", "H2O", "CH4", "NH3", "CH3COOH", "C2H4", "CH3CHO"]


def rattled_molecules(n: int) -> list:
    """``n`` small organic molecules (MOLECULES in turn), each rattled by 0.05 Å with its own seed."""
    import numpy as np
    from ase.build import molecule

    rng = np.random.default_rng(0)
    frames = []
    for i in range(n):
        atoms = molecule(MOLECULES[i % len(MOLECULES)])
        atoms.rattle(0.05, seed=int(rng.integers(1 << 30)))
        frames.append(atoms)
    return frames


def make_batch(n: int, device: str):
    from fastcsi.data.batch import batch_from_atoms

    atoms = rattled_molecules(n)
    return batch_from_atoms(atoms).to(device), atoms


def cases(quick: bool = True, device: str = "cpu", sizes=None, config: str = "gemnet-oc-tiny"):
    import torch

    from fastcsi.backend import override
    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.model import build_model, extract_features

    torch.manual_seed(0)
    model = build_model(config).to(device).eval()

    def outputs(batch, paths=None):
        with override(**(paths or {})):
            with torch.no_grad():
                out = model(batch)
            return {"features": extract_features(model, batch),
                    "block1": extract_features(model, batch, layer="block1"),
                    "energy": out["energy"], "forces": out["forces"]}

    def forward(batch):
        with torch.no_grad():
            out = model(batch)
        return {"energy": out["energy"], "forces": out["forces"]}

    for n in sizes or ((32,) if quick else (128,)):
        batch, atoms = make_batch(n, device)
        singles = [batch_from_atoms([a]).to(device) for a in atoms]
        methods = [
            Method("extract_features (final)", "ours", lambda b: {"features": extract_features(model, b)},
                   "float32", TOLERANCE),
            Method("full forward (no_grad)", "baseline", forward, "float32", TOLERANCE),
            Method("extract_features (block1)", "control",
                   lambda b: {"block1": extract_features(model, b, layer="block1")}, "float32", TOLERANCE),
            Method("one structure per call", "control", lambda b, singles=singles: {
                "features": torch.cat([extract_features(model, s) for s in singles])}, "float32", TOLERANCE)]
        yield Case(KERNEL, f"{config}, {n} mixed molecules, float32", n, "structures", batch.num_atoms, "atoms",
                   lambda batch=batch: batch, lambda b: outputs(b, REFERENCE_PATH), relative_error, methods,
                   repeats=3 if quick else 10)


def _arguments(parser):
    parser.add_argument("--config", default="gemnet-oc-tiny")
    return ["config"]


if __name__ == "__main__":
    sys.exit(script_main(KERNEL, cases, __doc__, add_arguments=_arguments))
