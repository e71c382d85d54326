"""Benchmark: GemNet-OC per-atom feature extraction (the CSI hot path) on a batch of molecules.

Timed in the same run (medians over repeats, after warm-up):
  baseline  full model forward (energy + direct forces through the heads) under no_grad: what an
            extractor that just calls the model would run
  features  fastcsi.model.extract_features(layer="final", kind="node"): inference_mode, no force
            branch, no heads
  graphs    radius graph + symmetrisation + triplet/quadruplet index sets alone (part of both)
  block1    extract_features(layer="block1"): stops after the first interaction block
Correctness first: batched features must equal per-structure features (max abs difference reported,
float32), and the final node features fed through the energy head must reproduce the model energy.

    python bench/gemnet_oc.py [--quick] [--device cpu|cuda] [--config gemnet-oc-tiny] [--out x.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from fastcsi.data.batch import batch_from_atoms
from fastcsi.model import build_model, extract_features
from fastcsi.model.gemnet_oc.layers import scatter_sum
from fastcsi.model.gemnet_oc.model import build_graphs
from fastcsi.utils import atomic_write, versions

MOLECULES = ["CH3CH2OH", "C6H6", "H2O", "CH4", "NH3", "CH3COOH", "C2H4", "CH3CHO"]


def make_batch(n: int, device: str):
    from ase.build import molecule

    rng = np.random.default_rng(0)
    atoms = []
    for i in range(n):
        a = molecule(MOLECULES[i % len(MOLECULES)])
        a.rattle(0.05, seed=int(rng.integers(1 << 30)))
        atoms.append(a)
    return batch_from_atoms(atoms).to(device)


def median_time(fn, repeats: int, device: str) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def run(quick: bool = True, device: str = "cpu", config: str = "gemnet-oc-tiny") -> dict:
    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    n_structures = 32 if quick else 128
    repeats = 3 if quick else 10
    batch = make_batch(n_structures, device)

    feats = extract_features(model, batch)
    # the first four structures of ``batch`` alone must give the same features
    ptr = batch.ptr.tolist()
    single_feats = [extract_features(model, _slice(batch, i)) for i in range(4)]
    diff_batch = max(float((feats[ptr[i]:ptr[i + 1]] - f).abs().max()) for i, f in enumerate(single_feats))
    with torch.no_grad():
        energy_from_feats = scatter_sum(model.out_energy(feats.clone())[:, 0], batch.batch, batch.num_structures)
        energy = model(batch)["energy"]
    diff_energy = float((energy_from_feats - energy).abs().max())
    if diff_batch > 1e-4 or diff_energy > 1e-4:
        raise SystemExit(f"correctness check failed: batched vs single {diff_batch}, energy {diff_energy}")

    def baseline():
        with torch.no_grad():
            model(batch)

    timings = {
        "baseline_full_forward_s": median_time(baseline, repeats, device),
        "features_final_node_s": median_time(lambda: extract_features(model, batch), repeats, device),
        "features_block1_node_s": median_time(lambda: extract_features(model, batch, layer="block1"), repeats, device),
        "graphs_and_indices_s": median_time(lambda: build_graphs(model.prepare(batch), model.hparams), repeats, device),
    }
    result = {
        "config": config,
        "device": device,
        "threads": torch.get_num_threads(),
        "structures": n_structures,
        "atoms": batch.num_atoms,
        "max_abs_diff_batched_vs_single": diff_batch,
        "max_abs_diff_energy_from_features": diff_energy,
        **timings,
        "speedup_features_vs_baseline": timings["baseline_full_forward_s"] / timings["features_final_node_s"],
        "atoms_per_s_features": batch.num_atoms / timings["features_final_node_s"],
        "versions": {k: (None if v is None else str(v)) for k, v in versions().items()},
    }
    return result


def _slice(batch, i):
    """Structure i of ``batch`` as a batch of one."""
    from dataclasses import replace

    lo, hi = batch.ptr[i].item(), batch.ptr[i + 1].item()
    return replace(
        batch,
        atomic_numbers=batch.atomic_numbers[lo:hi], pos=batch.pos[lo:hi],
        batch=torch.zeros(hi - lo, dtype=torch.long, device=batch.pos.device),
        natoms=batch.natoms[i:i + 1], cell=batch.cell[i:i + 1], pbc=batch.pbc[i:i + 1], tags=batch.tags[lo:hi],
        energy=None, forces=None, targets={}, ids=[],
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--config", default="gemnet-oc-tiny")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    result = run(quick=args.quick, device=args.device, config=args.config)
    print(f"{'quantity':40s} value")
    for key, value in result.items():
        if key != "versions":
            print(f"{key:40s} {value:.4g}" if isinstance(value, float) else f"{key:40s} {value}")
    if args.out:
        with atomic_write(args.out) as handle:
            json.dump({"settings": vars(args) | {"out": str(args.out)}, "result": result}, handle, indent=2)


if __name__ == "__main__":
    main()
