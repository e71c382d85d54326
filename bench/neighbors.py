"""Benchmark: radius graph (full neighbour list with periodic shifts) against vesin, matscipy and ase.

Cases (same run, same machine; only same-run ratios mean anything on a shared machine):
  bulk10k    Cu fcc rattled, 10,192 atoms, cutoff 6 Å, PBC, full list
  bulk100k   the same with ~100k atoms (skipped in --quick)
  molecules  10,000 small molecules (3-20 atoms), cutoff 12 Å (1,000 in --quick): vesin once per
             molecule, vesin on all molecules packed far apart in one big non-periodic box, ours in
             ONE call with the batch index
vesin and our rows are timed round-robin (one call of each per round), so load drift on a shared
machine hits all of them alike; compare ratios from the same run only.
For ours, two numbers: ``kernel`` = the C++ search alone returning numpy arrays (indices, shifts,
vectors, distances, degrees), ``api`` = ``radius_graph(batch, cutoff, backend="cpu")`` including the
float64 conversion, validation and torch tensors. Every baseline is asked for the same quantities
(i, j, S, D, d). Correctness is checked first (same pair set as vesin). The optional last table
times the GemNet-OC index construction (fastcsi.graph.gemnet_indices) per 1,000 edges.

Usage: python bench/neighbors.py [--quick] [--out FILE.json] [--threads N]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from fastcsi.data.batch import batch_from_atoms  # noqa: E402
from fastcsi.data.structure import Structure  # noqa: E402
from fastcsi.data.batch import collate  # noqa: E402
from fastcsi.graph import radius_graph  # noqa: E402
from fastcsi.graph.radius_cpu import search_cpu  # noqa: E402
from fastcsi.utils import atomic_write, versions  # noqa: E402


def alternating(named, repeats: int) -> list:
    """[(name, (median wall, mean CPU seconds))] for callables timed round-robin: one call of each
    per round, so every implementation sees the same load drift of a shared machine. CPU time is
    summed over threads and comes in scheduler ticks (4 ms here): its mean over rounds, not its
    median, estimates it."""
    for _, fn in named:  # warm-up
        fn()
    walls = {name: [] for name, _ in named}
    cpus = {name: [] for name, _ in named}
    for _ in range(repeats):
        for name, fn in named:
            start, cpu = time.perf_counter(), time.process_time()
            fn()
            cpus[name].append(time.process_time() - cpu)
            walls[name].append(time.perf_counter() - start)
    return [(name, (statistics.median(walls[name]), statistics.fmean(cpus[name]))) for name, _ in named]


def timed(fn, repeats: int, warmup: int = 1) -> tuple[float, float]:
    """Median (wall, process CPU) seconds. On a shared, overloaded machine the wall time is mostly
    waiting for a core; the CPU time (all threads summed) is the steadier number to compare."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        cpus.append(time.process_time() - cpu)
        walls.append(time.perf_counter() - start)
    return statistics.median(walls), statistics.median(cpus)


def fcc_bulk(repeats, seed=0):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True) * repeats
    atoms.rattle(0.05, seed=seed)
    return atoms


def random_molecules(count: int, seed: int = 0):
    """Molecule-like clusters: 3-20 atoms, nearest distances ~1-1.5 Å, radius a few Å."""
    rng = np.random.default_rng(seed)
    molecules = []
    for _ in range(count):
        n = int(rng.integers(3, 21))
        positions = rng.normal(size=(n, 3)) * (0.6 * n ** (1 / 3))
        molecules.append(positions)
    return molecules


def pair_set_equal(ours_edge_index, ours_shifts, i, j, shifts) -> bool:
    ours = np.column_stack([ours_edge_index[1], ours_edge_index[0], ours_shifts])
    theirs = np.column_stack([i, j, shifts])
    theirs = theirs[np.lexsort(theirs.T[::-1])]
    return ours.shape == theirs.shape and bool((ours == theirs).all())


def bench_bulk(atoms, cutoff, repeats, threads, with_slow_baselines, notes):
    rows = []
    batch = batch_from_atoms([atoms], dtype=torch.float32)
    kernel = search_cpu(batch, cutoff, threads, single=True)
    pairs = kernel[0].shape[1]
    positions, box = atoms.positions, atoms.cell.array
    try:
        import vesin

        nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
        i, j, shifts = nl.compute(points=positions, box=box, periodic=True, quantities="ijS")
        if not pair_set_equal(kernel[0], kernel[1], i, j, shifts):
            raise SystemExit(f"correctness check failed: our pairs differ from vesin's ({len(i)} vs {pairs})")
        fast = [("vesin", lambda: nl.compute(points=positions, box=box, periodic=True, quantities="ijSDd"))]
    except ImportError:
        fast = []
        notes.append("vesin not installed: skipped")
    if with_slow_baselines:
        try:
            from matscipy.neighbours import neighbour_list as matscipy_list

            rows.append(("matscipy", timed(lambda: matscipy_list("ijSDd", atoms, cutoff), max(1, repeats // 2))))
        except ImportError:
            notes.append("matscipy not installed: skipped")
        from ase.neighborlist import neighbor_list as ase_list

        rows.append(("ase", timed(lambda: ase_list("ijSDd", atoms, cutoff), 1, warmup=0)))
    rows += alternating(fast + ours(batch, cutoff, threads), repeats)
    return pairs, rows


def ours(batch, cutoff, threads):
    """Our callables: the kernel alone (numpy out) and the full API users call (torch out)."""
    named = [(f"fastcsi kernel {threads}t", lambda: search_cpu(batch, cutoff, threads, single=True))]
    if threads == 1:  # the multi-threaded kernel too, for reference (vesin is single-threaded)
        named.append(("fastcsi kernel 2t", lambda: search_cpu(batch, cutoff, 2, single=True)))
    named.append(("fastcsi api", lambda: radius_graph(batch, cutoff, backend="cpu")))
    return named


def bench_molecules(count, cutoff, repeats, threads, notes):
    molecules = random_molecules(count)
    structures = [Structure(atomic_numbers=np.ones(len(p), np.int64), positions=p) for p in molecules]
    batch = collate(structures, dtype=torch.float32)
    kernel = search_cpu(batch, cutoff, threads, single=True)
    pairs = kernel[0].shape[1]
    rows = []
    try:
        import vesin

        nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
        zero = np.zeros((3, 3))

        def per_molecule():
            for p in molecules:
                nl.compute(points=p, box=zero, periodic=False, quantities="ijSDd")

        # packed: molecules on a grid spaced wider than the cutoff plus their size, one call
        side = int(np.ceil(len(molecules) ** (1 / 3)))
        spacing = cutoff + 2 * max(float(np.abs(p).max()) for p in molecules) + 1.0
        grid = np.array([(a, b, c) for a in range(side) for b in range(side) for c in range(side)])[: len(molecules)]
        packed = np.concatenate([p + g * spacing for p, g in zip(molecules, grid)])
        i, j = nl.compute(points=packed, box=zero, periodic=False, quantities="ij")
        if len(i) != pairs:
            raise SystemExit(f"correctness check failed: {len(i)} vesin pairs vs {pairs} ours")
        loop_repeats = max(1, repeats // 3)
        rows.append(("vesin per molecule", timed(per_molecule, loop_repeats)))
        fast = [("vesin packed box", lambda: nl.compute(points=packed, box=zero, periodic=False, quantities="ijSDd"))]
    except ImportError:
        fast = []
        notes.append("vesin not installed: molecule baselines skipped")
    rows += alternating(fast + ours(batch, cutoff, threads), repeats)
    return pairs, rows


def bench_gemnet_indices(atoms, cutoff, repeats, notes):
    try:
        from fastcsi.graph import gemnet_indices as gi
    except ImportError:
        notes.append("fastcsi.graph.gemnet_indices not present: index timing skipped")
        return None
    batch = batch_from_atoms([atoms], dtype=torch.float32)
    graph = radius_graph(batch, cutoff, backend="cpu")
    edges = {"edge_index": graph.edge_index, "cell_offset": graph.cell_offsets, "distance": graph.distances,
             "vector": graph.vectors / graph.distances[:, None].clamp_min(1e-12),
             "num_neighbors": torch.tensor([graph.num_edges])}
    n = batch.num_atoms
    rows = []
    try:
        symmetric, _ = gi.symmetrize_edges(edges, n)
        rows.append(("symmetrize_edges", timed(lambda: gi.symmetrize_edges(edges, n), repeats)))
        rows.append(("triplets", timed(lambda: gi.triplets(symmetric, n), repeats)))
    except Exception as exc:  # another engineer's module: report, do not fail the benchmark
        notes.append(f"gemnet_indices timing failed: {type(exc).__name__}: {exc}")
        return None
    return {"edges": graph.num_edges, "atoms": n, "cutoff": cutoff,
            "rows": [{"op": name, "seconds": t, "us_per_1000_edges": t / graph.num_edges * 1e3 * 1e6}
                     for name, (t, _) in rows]}


def run(quick: bool = False, device: str = "cpu", threads: int = 1) -> dict:
    """Run the benchmark; returns a JSON-able dict (used by the suite and by ``main``)."""
    if device != "cpu":
        raise ValueError("bench/neighbors.py times the CPU kernels; the Triton path has no GPU here")
    repeats = 3 if quick else 11
    notes = [f"our kernel rows: {threads or 'default'} thread(s), plus 2 threads (the kernel keeps batches "
             "under ~1M candidate pair tests per thread on fewer threads); api = radius_graph "
             f"(threads = torch.get_num_threads() = {torch.get_num_threads()})",
             "vesin and ours timed round-robin (alternating calls); wall = median, cpu = mean over rounds",
             f"load average at start: {os.getloadavg()}"]
    cases = []
    specs = [("bulk10k", lambda: fcc_bulk((13, 14, 14)), 6.0, not quick)]
    if not quick:
        specs.append(("bulk100k", lambda: fcc_bulk((29, 29, 30)), 6.0, False))
    for name, make, cutoff, slow in specs:
        atoms = make()
        pairs, rows = bench_bulk(atoms, cutoff, repeats if name == "bulk10k" else 5, threads, slow, notes)
        cases.append({"case": name, "atoms": len(atoms), "cutoff": cutoff, "pairs": pairs, "rows": rows})
    count = 1000 if quick else 10000
    pairs, rows = bench_molecules(count, 12.0, repeats, threads, notes)
    cases.append({"case": f"molecules{count}", "atoms": None, "molecules": count, "cutoff": 12.0, "pairs": pairs,
                  "rows": rows})
    for case in cases:
        named = dict(case["rows"])
        baseline = named.get("vesin") or named.get("vesin packed box")
        case["rows"] = [
            {"impl": impl, "seconds": wall, "cpu_seconds": cpu, "mpairs_per_s": case["pairs"] / wall / 1e6,
             "speedup_vs_vesin": (baseline[0] / wall) if baseline else None,
             "cpu_speedup_vs_vesin": (baseline[1] / cpu) if baseline and cpu > 0 else None,
             **({"us_per_molecule": wall / case["molecules"] * 1e6} if case.get("molecules") else {})}
            for impl, (wall, cpu) in case["rows"]
        ]
    indices = bench_gemnet_indices(fcc_bulk((4, 4, 4)), 6.0, repeats, notes)
    return {"benchmark": "neighbors", "quick": quick, "device": device, "cases": cases,
            "gemnet_indices": indices, "notes": notes, "versions": versions()}


def print_table(result: dict) -> None:
    for case in result["cases"]:
        print(f"\n{case['case']}: {case.get('atoms') or case.get('molecules')} "
              f"{'atoms' if case.get('atoms') else 'molecules'}, cutoff {case['cutoff']} Å, {case['pairs']:,} pairs")
        print(f"  {'implementation':<20}{'wall':>11}{'cpu':>11}{'Mpairs/s':>10}{'x vesin':>9}{'x (cpu)':>9}{'us/mol':>9}")
        for row in case["rows"]:
            ratio = f"{row['speedup_vs_vesin']:.2f}" if row["speedup_vs_vesin"] else "-"
            cpu_ratio = f"{row['cpu_speedup_vs_vesin']:.2f}" if row["cpu_speedup_vs_vesin"] else "-"
            per_mol = f"{row['us_per_molecule']:.2f}" if "us_per_molecule" in row else ""
            print(f"  {row['impl']:<20}{row['seconds'] * 1e3:>9.1f}ms{row['cpu_seconds'] * 1e3:>9.1f}ms"
                  f"{row['mpairs_per_s']:>10.1f}{ratio:>9}{cpu_ratio:>9}{per_mol:>9}")
    if result["gemnet_indices"]:
        g = result["gemnet_indices"]
        print(f"\nGemNet-OC indices on {g['edges']:,} edges ({g['atoms']} atoms, cutoff {g['cutoff']} Å)")
        for row in g["rows"]:
            print(f"  {row['op']:<20}{row['seconds'] * 1e3:>10.1f}ms{row['us_per_1000_edges']:>10.1f} us/1000 edges")
    for note in result["notes"]:
        print(f"note: {note}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases, finishes in seconds")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads for our kernel rows (0 = default)")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, threads=args.threads)
    print_table(result)
    if args.out:
        with atomic_write(args.out) as handle:
            handle.write(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
