"""Benchmark: MD with the ASE calculator on a busy CPU, the thread policy's ``auto`` vs torch's default.

ASE's VelocityVerlet on ethanol (0.5 fs steps from the same positions and velocities every call)
with ``FastCSICalculator`` around a small GemNet-OC (gemnet-oc-tiny, random weights: the cost of a
step does not depend on them), while ``--hogs`` busy-looping processes (default: one per core)
compete for the cores, as on a shared machine. Methods (timed round-robin by bench/harness.py):
  calculator, threads=auto     ours: one intra-op thread for a model this small (fastcsi.threads)
  calculator, torch default    baseline: torch's default intra-op threads (one per core)
Reference: the same steps with one thread and no competing process; each method's final positions
must agree to 1e-4 relative (float32 sums in another order, stated). Items: MD steps (throughput =
steps/s). OMP_WAIT_POLICY is read once by libgomp: the CLI sets PASSIVE; run this script under
``OMP_WAIT_POLICY=PASSIVE`` to time that too (the report's notes record the value it ran with).

    python bench/calculator.py [--quick] [--hogs 2] [--out x.json]
"""
from __future__ import annotations

import os
import subprocess
import sys

import numpy as np

from fastcsi._bench.harness import Case, Method, relative_error, script_main

KERNEL = "calculator"
TOLERANCE = 1e-4
HOG = "while True:\n    pass\n"


def tiny_model(device: str = "cpu"):
    import torch

    from fastcsi.inference.model import TrainedModel
    from fastcsi.model import build_model
    from fastcsi.train.normalization import NormalizedModel, Normalizer

    from fastcsi._bench.train_step import ethanol_structures

    torch.manual_seed(0)
    network = NormalizedModel(build_model("gemnet-oc-tiny", direct_forces=True), Normalizer.fit(ethanol_structures(4)))
    return TrainedModel(network, elements=(1, 6, 8), trained_targets=("energy", "forces"), direct_forces=True,
                        source={"path": "bench: gemnet-oc-tiny, random weights"}, device=device)


def start_hogs(n: int) -> list:
    return [subprocess.Popen([sys.executable, "-c", HOG], stdin=subprocess.DEVNULL) for _ in range(n)]


def stop_hogs(hogs) -> None:
    for hog in hogs:
        hog.kill()
    for hog in hogs:
        hog.wait()


def md_run(calc, start, steps: int):
    """``steps`` VelocityVerlet steps of a copy of ``start``; its final positions."""
    from ase import units
    from ase.md.verlet import VelocityVerlet

    atoms = start.copy()
    atoms.calc = calc
    VelocityVerlet(atoms, timestep=0.5 * units.fs).run(steps)
    return atoms.get_positions()


def cases(quick: bool = True, device: str = "cpu", sizes=None, hogs: int | None = None):
    import torch
    from ase.build import molecule
    from ase.md import velocitydistribution

    from fastcsi.calculator import FastCSICalculator

    default_threads = torch.get_num_threads()
    hogs = os.cpu_count() if hogs is None else hogs
    model = tiny_model(device)
    start = molecule("CH3CH2OH")
    # thermalize_momenta since ASE 3.29 (MaxwellBoltzmannDistribution before it, deprecated since)
    thermalize = getattr(velocitydistribution, "thermalize_momenta", None) or velocitydistribution.MaxwellBoltzmannDistribution
    thermalize(start, temperature_K=300, rng=np.random.default_rng(0))
    # under load the default threads take seconds per step: the quick case is short
    for steps in sizes or ((5,) if quick else (20, 100)):
        calcs = {"auto": FastCSICalculator(model, threads="auto"),
                 "default": FastCSICalculator(model, threads=default_threads),
                 "one": FastCSICalculator(model, threads=1)}
        running = []

        def reference(inp, running=running):
            expected = md_run(inp["calcs"]["one"], start, inp["steps"])  # on a machine without the hogs
            running += start_hogs(hogs)  # the methods are checked and timed under the load
            return expected

        def run(which):
            return lambda inp: md_run(inp["calcs"][which], start, inp["steps"])

        case = Case(
            KERNEL, f"ethanol VelocityVerlet, {hogs} CPU hog(s)", steps, "MD steps", steps, "MD steps",
            lambda steps=steps, calcs=calcs: {"steps": steps, "calcs": calcs}, reference, relative_error,
            repeats=3, warmup=0 if quick else 1,  # the check call warms up
            methods=[Method(f"calculator, threads=auto ({default_threads} cores)", "ours", run("auto"),
                            dtype="float32", tolerance=TOLERANCE),
                     Method(f"calculator, torch default ({default_threads} threads)", "baseline", run("default"),
                            dtype="float32", tolerance=TOLERANCE)])
        try:
            yield case  # the harness runs it before it asks for the next case
        finally:
            stop_hogs(running)


def _add_arguments(parser):
    parser.add_argument("--hogs", type=int, default=None, help="competing busy processes (default: one per core)")
    return ["hogs"]


if __name__ == "__main__":
    sys.exit(script_main(KERNEL, cases, __doc__, add_arguments=_add_arguments,
                         notes=[f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset: libgomp default)')}; "
                                "a competing CPU load runs during the timing (see --hogs)"]))
