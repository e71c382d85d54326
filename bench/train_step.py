"""Benchmark: one AdamW training step of GemNet-OC-S (12 Å graphs, direct forces) on 32 ethanol
molecules, through fastcsi's training loop (collate, normalised energy + force loss, backward,
gradient clipping, AdamW, EMA).

Timed in the same run (medians over repeats, after warm-up):
  ours   the loop as ``fastcsi pretrain`` runs it (graph backend "auto": the compiled radius graph)
  plain  the same step with every op on its plain torch reference path (graph backend "ref",
         interaction backend "ref", the model's fused paths off: ``override(**PLAIN, fused=False)``)
Named baseline (the anchor): JMP's own code, one step of the same problem measured on this machine
with 2 threads: 2.74 s per step (11.7 structures/s, 105 atoms/s). It cannot be re-run here (JMP
is not installed and needs torch_geometric / torch_scatter), so the anchor is a recorded
constant; ``plain`` is the in-run control that shows how much of any gap is machine load.
Correctness first: loss and every gradient of the two paths must agree (float32 tolerance).

    python bench/train_step.py [--quick] [--device cpu|cuda] [--threads 2] [--out x.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from fastcsi.utils import atomic_write, versions

ANCHOR = {"name": "JMP (facebookresearch/JMP) GemNet-OC-S train step, 2 CPU threads, measured here",
          "seconds_per_step": 2.74, "structures_per_s": 11.7, "atoms_per_s": 105.0}


def ethanol_structures(n: int, seed: int = 0):
    """Rattled ethanol with Lennard-Jones labels (the step's cost does not depend on label values)."""
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


# the plain control's kernel paths (run inside fastcsi.backend.override): reference radius graph
# and reference interaction op
PLAIN = {"radius": "ref", "interaction": "ref"}


def make_trainer(structures, device: str, config: str, rundir: str):
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


def loss_and_grads(trainer):
    from fastcsi.train.losses import combine, loss_terms

    batch, labels = trainer._batch(trainer.train_set)
    trainer.model.zero_grad(set_to_none=True)
    trainer.model.eval()  # no dropout: the two paths must see the same function
    pred = trainer.model(batch)
    terms = loss_terms(pred, labels, trainer.normalizer, trainer.targets)
    loss = combine(terms, trainer.weights, trainer._global_counts(np.arange(len(trainer.train_set))))
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in trainer.model.named_parameters() if p.grad is not None}
    trainer.model.train()
    return float(loss.detach()), grads


def median_step(trainer, repeats: int, device: str) -> tuple[float, float]:
    """Median wall seconds and median process CPU seconds per step. On a shared machine the CPU
    time (all threads, spin-waits included) is the steadier of the two."""
    index = np.arange(len(trainer.train_set))
    trainer.train_step(index)  # warm-up
    times, cpu = [], []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0, c0 = time.perf_counter(), time.process_time()
        trainer.train_step(index)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return statistics.median(times), statistics.median(cpu)


def run(quick: bool = True, device: str = "cpu", threads: int | None = 2, config: str = "gemnet-oc-s") -> dict:
    import tempfile

    if threads:
        torch.set_num_threads(threads)
    n = 8 if quick else 32
    repeats = 2 if quick else 5
    structures = ethanol_structures(n)
    with tempfile.TemporaryDirectory() as tmp:
        ours = make_trainer(structures, device, config, tmp)
        plain = make_trainer(structures, device, config, tmp)
        from fastcsi.backend import override

        loss_a, grads_a = loss_and_grads(ours)
        with override(**PLAIN, fused=False):
            loss_b, grads_b = loss_and_grads(plain)
        worst = max(float(((grads_a[k] - grads_b[k]).abs() / (grads_b[k].abs().max() + 1e-12)).max())
                    for k in grads_a)
        if abs(loss_a - loss_b) > 1e-4 * max(abs(loss_b), 1.0) or worst > 1e-3 or set(grads_a) != set(grads_b):
            raise SystemExit(f"correctness check failed: loss {loss_a} vs {loss_b}, worst relative grad diff {worst}")
        t_ours, cpu_ours = median_step(ours, repeats, device)
        with override(**PLAIN, fused=False):
            t_plain, cpu_plain = median_step(plain, repeats, device)
    atoms = sum(s.n_atoms for s in structures)
    rows = {
        "ours": {"seconds_per_step": t_ours, "cpu_seconds_per_step": cpu_ours,
                 "structures_per_s": n / t_ours, "atoms_per_s": atoms / t_ours},
        "plain": {"seconds_per_step": t_plain, "cpu_seconds_per_step": cpu_plain,
                  "structures_per_s": n / t_plain, "atoms_per_s": atoms / t_plain},
    }
    result = {
        "benchmark": "train_step",
        "problem": {"model": config, "cutoff": 12.0, "direct_forces": True, "structures": n, "atoms": atoms,
                    "molecule": "ethanol", "threads": torch.get_num_threads(), "device": device,
                    "repeats": repeats, "quick": quick},
        "correctness": {"loss_ours": loss_a, "loss_plain": loss_b, "max_rel_grad_diff": worst},
        "results": rows,
        "anchor": ANCHOR,
        "speedup_vs_plain": t_plain / t_ours,
        # only meaningful for the full problem (32 structures) on CPU with 2 threads
        "speedup_vs_anchor": (ANCHOR["seconds_per_step"] / t_ours) if (n == 32 and device == "cpu") else None,
        "versions": versions(),
    }
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="8 molecules, 2 repeats (seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--config", default="gemnet-oc-s")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    result = run(args.quick, args.device, args.threads, args.config)
    p = result["problem"]
    print(f"{p['model']}, {p['structures']} x ethanol ({p['atoms']} atoms), cutoff 12 Å, direct forces, "
          f"{p['threads']} threads, {p['device']}; correctness: max rel grad diff {result['correctness']['max_rel_grad_diff']:.1e}")
    print(f"{'path':<8} {'s/step':>8} {'cpu s/step':>11} {'structures/s':>13} {'atoms/s':>9}")
    for name, row in [*result["results"].items(), ("anchor", ANCHOR)]:
        cpu = f"{row['cpu_seconds_per_step']:>11.3f}" if "cpu_seconds_per_step" in row else f"{'-':>11}"
        print(f"{name:<8} {row['seconds_per_step']:>8.3f} {cpu} {row['structures_per_s']:>13.1f} {row['atoms_per_s']:>9.1f}")
    print(f"speed-up vs plain path (same run): {result['speedup_vs_plain']:.2f}x")
    if result["speedup_vs_anchor"] is not None:
        print(f"speed-up vs anchor (JMP, recorded): {result['speedup_vs_anchor']:.2f}x")
    if args.out:
        with atomic_write(args.out) as fh:
            json.dump(result, fh, indent=1)


if __name__ == "__main__":
    main()
