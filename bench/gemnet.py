"""Benchmark: GemNet-OC-S (JMP-S widths, 12 Å, float32) throughput, plain PyTorch interaction vs fused.

Workloads (as JMP's anchors): 32 ethanol molecules (288 atoms, no PBC) and 8 Cu(111) slabs of 81
atoms (3x3x9, PBC, 10 Å vacuum); --quick uses 2 ethanol molecules and one 8-atom Cu slab.
Per workload and interaction backend ("plain" = interaction_bilinear_ref, "fused" = the Triton
kernels, CUDA only: on CPU they run only in the Triton interpreter, which is a test tool):
  graph        radius graph alone (fastcsi.graph.radius_graph, the model's settings)
  indices      the rest of build_graphs: sub-graphs, symmetrisation, triplets, quadruplets
  extract      extract_features (graphs + backbone, inference_mode): the CSI feature path
  forward      model(batch): energy + direct forces (JMP-S), no autograd graph
  fwd+bwd      forward with grad + backward of energy and force losses (a training step)
Each row: median seconds per batch over --repeats after one warm-up, structures/s, atoms/s and peak
memory (CUDA: max_memory_allocated; CPU: resident-set growth sampled every 5 ms by a thread, in a separate
untimed call).
Correctness first: fused features/energy/forces are compared with the plain path before timing.
Baseline: JMP's own GemNet-OC-S code measured on this machine (float32, inference, 2 threads):
32 ethanol 0.92 s/batch (312 atoms/s), 8 Cu(111) slabs 15.9 s/batch (41 atoms/s); the target is
extraction >= 2x faster than that. A GEMM rate (GFLOP/s, (2304x512)@(512x512)) is measured in the
same run so that timings taken on a loaded, shared machine can be judged.

    python bench/gemnet.py [--quick] [--device cpu|cuda] [--threads 2] [--repeats N] [--stages extract,...]
                           [--profile] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import sys
import threading
import time
from pathlib import Path

import torch

from fastcsi.backend import override

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats_common import print_table, save_json  # noqa: E402

ANCHORS = {  # JMP's code, GemNet-OC-S, 12 Å, float32, inference, 2 threads, this machine
    "ethanol32": {"seconds": 0.92, "atoms_per_s": 312},
    "cu111x8": {"seconds": 15.9, "atoms_per_s": 41},
}


def rattled_ethanols(n: int) -> list:
    """n ethanol molecules, each rattled by 0.05 Å with its own seed (the GemNet-OC bench input)."""
    from ase.build import molecule

    out = []
    for seed in range(n):
        atoms = molecule("CH3CH2OH")
        atoms.rattle(0.05, seed=seed)
        out.append(atoms)
    return out


def workloads(quick: bool) -> dict:
    from ase.build import fcc111

    from fastcsi.data.batch import batch_from_atoms


    def slabs(n, size):
        out = []
        for seed in range(n):
            slab = fcc111("Cu", size, vacuum=10.0, periodic=True)
            slab.rattle(0.05, seed=seed)
            out.append(slab)
        return out

    if quick:
        sets = {"ethanol2": rattled_ethanols(2), "cu111x1_small": slabs(1, (2, 2, 2))}
    else:
        sets = {"ethanol32": rattled_ethanols(32), "cu111x8": slabs(8, (3, 3, 9))}
    return {name: batch_from_atoms(atoms, dtype=torch.float32) for name, atoms in sets.items()}


class PeakMemory:
    """Peak memory growth during a block: CUDA allocator peak, or sampled RSS on CPU."""

    def __init__(self, device: str):
        self.device, self.peak = device, 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.max_rss = self._rss()
            self.running = True
            self.thread = threading.Thread(target=self._sample, daemon=True)
            self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.max_rss = max(self.max_rss, self._rss())
            time.sleep(0.005)

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak = torch.cuda.max_memory_allocated() - self.base
        else:
            self.running = False
            self.thread.join()
            self.peak = max(self.max_rss, self._rss()) - self.base
        return False


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn, device: str, repeats: int, warmup: int = 1):
    """(median seconds, peak memory bytes). Memory is taken in one extra call: on CPU the sampling
    thread competes for the GIL and would slow the timed calls down."""
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    with PeakMemory(device) as memory:
        fn()
    return statistics.median(times), memory.peak


def gemm_rate(device: str) -> float:
    a = torch.randn(2304, 512, device=device)
    b = torch.randn(512, 512, device=device)
    seconds, _ = timed(lambda: a @ b, device, repeats=5)
    return 2 * 2304 * 512 * 512 / seconds / 1e9


def run(quick: bool = False, device: str = "cpu", repeats: int | None = None, profile: bool = False,
        stages=("extract", "forward", "fwd+bwd")) -> dict:
    from fastcsi.graph import radius_graph
    from fastcsi.model import build_model, extract_features
    from fastcsi.model.gemnet_oc.model import build_graphs

    repeats = repeats or (1 if quick else 3)
    torch.manual_seed(0)
    model = build_model("gemnet-oc-s").to(device).eval()
    hp = model.hparams
    backends = ["ref"] + (["triton"] if device.startswith("cuda") else [])
    label = {"ref": "plain", "triton": "fused"}
    rows, checks, profiles = [], {}, {}
    for name, batch in workloads(quick).items():
        prepared = model.prepare(batch)
        n_struct, n_atoms = batch.num_structures, batch.num_atoms

        def row(stage, backend, seconds, peak):
            entry = {"workload": name, "stage": stage, "backend": label.get(backend, backend), "seconds": seconds,
                     "structures_per_s": n_struct / seconds, "atoms_per_s": n_atoms / seconds,
                     "peak_mem_mb": peak / 2**20}
            anchor = ANCHORS.get(name)
            if anchor and stage == "extract":
                entry["speedup_vs_jmp"] = anchor["seconds"] / seconds
            rows.append(entry)

        with torch.inference_mode():
            graph_s, graph_mem = timed(lambda: radius_graph(prepared, hp["cutoff_aint"], max_neighbors=hp["max_neighbors_aint"],
                                                            strict=True), device, repeats)
            all_s, all_mem = timed(lambda: build_graphs(prepared, hp), device, repeats)
            g = build_graphs(prepared, hp)
        row("graph", "-", graph_s, graph_mem)
        row("indices", "-", max(all_s - graph_s, 0.0), all_mem)
        sizes = {"atoms": n_atoms, "edges": int(g["main"]["edge_index"].shape[1]),
                 "triplets": int(g["trip_e2e"]["in"].numel()), "quadruplets": int(g["quad"]["out"].numel())}

        results = {}
        for backend in backends:
            with override(interaction=backend):
                features = extract_features(model, batch)
                with torch.no_grad():
                    out = model(batch)
                results[backend] = (features, out["energy"], out["forces"])

                def extract():
                    return extract_features(model, batch)

                def forward():
                    with torch.no_grad():
                        return model(batch)

                def forward_backward():
                    model.zero_grad(set_to_none=True)
                    out = model(batch)
                    (out["energy"].square().mean() + out["forces"].square().mean()).backward()

                for stage, fn in (("extract", extract), ("forward", forward), ("fwd+bwd", forward_backward)):
                    if stage in stages:
                        row(stage, backend, *timed(fn, device, repeats))
        if "triton" in results:
            checks[name] = {
                key: float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))
                for key, got, want in zip(("features", "energy", "forces"), results["triton"], results["ref"])
            }
        checks.setdefault(name, {})["sizes"] = sizes
        if profile:
            profiles[name] = top_ops(model, batch)
    return {"bench": "gemnet", "quick": quick, "device": device, "threads": torch.get_num_threads(),
            "model": "gemnet-oc-s", "dtype": "float32", "repeats": repeats, "gemm_gflops": gemm_rate(device),
            "anchors_jmp": ANCHORS, "checks": checks, "rows": rows, "profiles": profiles}


def top_ops(model, batch, count: int = 12) -> list[dict]:
    """Self-time leaders of one feature extraction (torch.profiler), grouped by op and input shapes."""
    from torch.profiler import profile

    from fastcsi.model import extract_features

    with profile(record_shapes=True) as prof:
        extract_features(model, batch)
    events = sorted(prof.key_averages(group_by_input_shape=True), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1
    return [{"op": e.key, "shapes": str(e.input_shapes)[:60], "calls": e.count,
             "self_s": e.self_cpu_time_total / 1e6, "share": e.self_cpu_time_total / total} for e in events[:count]]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small batches, one repeat (seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (anchors used 2)")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--stages", default="extract,forward,fwd+bwd", help="comma-separated model stages to time")
    parser.add_argument("--profile", action="store_true", help="print the top ops of one extraction")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    result = run(quick=args.quick, device=args.device, repeats=args.repeats, profile=args.profile,
                 stages=tuple(args.stages.split(",")))
    print(f"device {result['device']}, {result['threads']} threads, GEMM {result['gemm_gflops']:.1f} GFLOP/s; "
          "JMP anchors: " + ", ".join(f"{k} {v['seconds']} s" for k, v in ANCHORS.items()))
    for name, check in result["checks"].items():
        print(f"{name}: {check}")
    print_table(result["rows"], ["workload", "stage", "backend", "seconds", "structures_per_s", "atoms_per_s",
                                 "peak_mem_mb", "speedup_vs_jmp"])
    for name, ops in result["profiles"].items():
        print(f"top ops of one extraction, {name}:")
        print_table(ops, ["op", "shapes", "calls", "self_s", "share"])
    if args.out:
        save_json(result, args.out)
        print(f"saved {args.out}")
    bad = [f"{name}.{key}" for name, check in result["checks"].items() for key, value in check.items()
           if key != "sizes" and value > 1e-4]
    if bad:
        print(f"FAILED: fused differs from plain by more than 1e-4 relative in {', '.join(bad)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
