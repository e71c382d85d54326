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
(i, j, S, D, d). Correctness is checked first (same pair set as vesin).

The last table times the GemNet-OC index construction (fastcsi.graph.gemnet_indices) per 1,000 main
edges, BEFORE (the torch formulation, gemnet_indices_cuda run on CPU tensors) and AFTER (the numba
walks) in the same run, after checking their outputs are bit-for-bit equal: the full 6 Å graph of Cu fcc 4x4x4 (triplets),
and GemNet-OC's default graphs (main 12 Å / 30 neighbours, symmetrised; quadruplet graph 8 Å / 8;
atom-edge graph 12 Å / 20) on four Cu(111) slabs.

``--device cuda`` instead times the Triton backend (``radius_graph(backend="triton")``: cell list for
large structures, all pairs for small ones) on rattled Cu fcc: the cell list against the all-pairs
kernel at ~500 and ~2,000 atoms (where the auto threshold sits), the cell list at 10k and ~100k
atoms against vesin-torch on the same GPU (skipped with a note when vesin-torch is not installed);
pair set checked against the C++ CPU kernel first, CUDA synchronised around every call.

Usage: python bench/radius.py [--quick] [--device cpu|cuda] [--out FILE.json] [--threads N]
       [--torch-threads N]
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


def timed_device(fn, repeats: int, device: str, warmup: int = 1) -> tuple[float, float]:
    """:func:`timed` with the device synchronised before and after every call (CUDA kernels are
    asynchronous: without it the clock would stop at the launch)."""
    sync = torch.cuda.synchronize if str(device).startswith("cuda") else (lambda: None)

    def call():
        sync()
        fn()
        sync()

    return timed(call, repeats, warmup)


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


def _edge_dict(graph, batch):
    """The edge-set dict gemnet_indices takes (as GemNet-OC's build_graphs makes it)."""
    edge_batch = batch.batch[graph.edge_index[1]]
    return {"edge_index": graph.edge_index, "cell_offset": graph.cell_offsets, "distance": graph.distances,
            "vector": -graph.vectors / graph.distances[:, None].clamp_min(1e-12), "edge_batch": edge_batch,
            "num_neighbors": torch.bincount(edge_batch, minlength=batch.num_structures)}


def _identical(new, old) -> bool:
    if isinstance(old, dict):
        return new.keys() == old.keys() and all(_identical(new[k], old[k]) for k in old)
    if not isinstance(old, torch.Tensor):
        return new == old
    return isinstance(new, torch.Tensor) and new.dtype == old.dtype and torch.equal(new, old)


def bench_gemnet_indices(repeats, notes, quick=False):
    """Index construction before (torch formulation) / after (numba walks), same run, same graphs."""
    from ase.build import fcc111

    from fastcsi.graph import gemnet_indices as gi
    from fastcsi.graph import gemnet_indices_cuda as gr
    from fastcsi.graph import nearest as nearest_module
    from fastcsi.graph import select_neighbors

    cases = []
    # the full 6 Å graph of bulk Cu (the graph the earlier ~2.8 ms / 1000 edges was measured on)
    bulk_batch = batch_from_atoms([fcc_bulk((4, 4, 4))], dtype=torch.float32)
    bulk_main, _ = gi.symmetrize_edges(_edge_dict(radius_graph(bulk_batch, 6.0, backend="cpu"), bulk_batch),
                                       bulk_batch.num_atoms)
    n = bulk_batch.num_atoms
    cases.append(("Cu fcc 4x4x4, 6 Å full graph", bulk_main, [
        ("triplets", lambda: gi.triplets(bulk_main, n), lambda: gr.triplets_cuda(bulk_main, n))]))
    # GemNet-OC's default graphs on slabs (main 12 Å / 30, qint 8 Å / 8, atom-edge 12 Å / 20)
    slab = fcc111("Cu", size=(4, 4, 4), vacuum=8.0)
    slab.rattle(0.05, seed=0)
    batch = batch_from_atoms([slab] * (2 if quick else 4), dtype=torch.float32)
    raw = radius_graph(batch, 12.0, max_neighbors=30, strict=True, backend="cpu")
    m = batch.num_atoms
    main, _ = gi.symmetrize_edges(_edge_dict(raw, batch), m)
    qint = _edge_dict(select_neighbors(raw, cutoff=8.0, max_neighbors=8, strict=True), batch)
    aeaint = _edge_dict(select_neighbors(raw, max_neighbors=20, strict=True), batch)
    cases.append((f"{batch.num_structures} Cu(111) slabs, GemNet-OC graphs", main, [
        ("triplets", lambda: gi.triplets(main, m), lambda: gr.triplets_cuda(main, m)),
        ("mixed_triplets a2e", lambda: gi.mixed_triplets(aeaint, main, m, return_agg_idx=True),
         lambda: gr.mixed_triplets_cuda(aeaint, main, m, return_agg_idx=True)),
        ("quadruplets", lambda: gi.quadruplets(main, qint, m), lambda: gr.quadruplets_cuda(main, qint, m)),
    ]))
    # end to end: every graph and index set of one GemNet-OC-S forward pass (model.build_graphs),
    # "before" with the torch index builders and select_neighbors' torch ranks swapped in
    from fastcsi.model.gemnet_oc.configs import config, normalize_hparams
    from fastcsi.model.gemnet_oc.model import build_graphs

    hp = normalize_hparams(config("gemnet-oc-s"))
    fast = (gi.triplets, gi.mixed_triplets, gi.quadruplets, nearest_module._ranks)
    reference = (gr.triplets_cuda, gr.mixed_triplets_cuda, gr.quadruplets_cuda, nearest_module._ranks_torch)

    def build_with(functions):
        def call():
            gi.triplets, gi.mixed_triplets, gi.quadruplets, nearest_module._ranks = functions
            try:
                return build_graphs(batch, hp)
            finally:
                gi.triplets, gi.mixed_triplets, gi.quadruplets, nearest_module._ranks = fast
        return call

    cases.append((f"{batch.num_structures} Cu(111) slabs, GemNet-OC graphs", main, [
        ("build_graphs (all)", build_with(fast), build_with(reference))]))
    rows = []
    for label, graph, ops in cases:
        edges = int(graph["edge_index"].shape[1])
        for op, after, before in ops:
            if not _identical(after(), before()):
                raise SystemExit(f"correctness check failed: {op} differs from the torch formulation ({label})")
            (t_before, cpu_before), (t_after, cpu_after) = [
                t for _, t in alternating([("before", before), ("after", after)], repeats)]
            rows.append({"graph": label, "op": op, "edges": edges, "before_seconds": t_before,
                         "after_seconds": t_after, "before_cpu_seconds": cpu_before, "after_cpu_seconds": cpu_after,
                         "before_ms_per_1000_edges": t_before / edges * 1e6,
                         "after_ms_per_1000_edges": t_after / edges * 1e6, "speedup": t_before / t_after,
                         "cpu_speedup": cpu_before / cpu_after if cpu_after > 0 else None})
    notes.append("index construction: before = gemnet_indices_cuda (torch), after = gemnet_indices (numba walks "
                 "on CPU tensors), outputs checked bit-for-bit equal, timed round-robin (median wall, mean CPU); "
                 f"torch threads = {torch.get_num_threads()} (on a loaded machine torch's thread pool inflates "
                 "the before rows: compare with --torch-threads 1)")
    return {"rows": rows}


def bench_triton(atoms, cutoff, repeats, device, notes, with_pairs=False, with_vesin=True):
    """Triton backend on one structure: the cell list (and, optionally, the all-pairs kernel) against
    vesin-torch on the same device. Pair set checked against the C++ kernel (or the reference) first."""
    from fastcsi.graph.radius_triton import radius_graph_triton

    batch = batch_from_atoms([atoms], dtype=torch.float32, device=device)
    graph = radius_graph_triton(batch, cutoff, method="cells")
    cpu_batch = batch.to("cpu")
    try:
        expected = search_cpu(cpu_batch, cutoff, 0, single=True)
        expected_index, expected_shifts = expected[0], expected[1]
    except Exception:  # the compiled extension is absent: the reference
        ref = radius_graph(cpu_batch, cutoff, backend="ref")
        expected_index, expected_shifts = ref.edge_index.numpy(), ref.cell_offsets.numpy()
    if not (np.array_equal(graph.edge_index.cpu().numpy(), expected_index)
            and np.array_equal(graph.cell_offsets.cpu().numpy(), expected_shifts)):
        raise SystemExit("correctness check failed: the Triton cell list differs from the CPU kernel")
    named = [("triton cells", lambda: radius_graph_triton(batch, cutoff, method="cells")),
             ("triton auto (api)", lambda: radius_graph(batch, cutoff, backend="triton"))]
    if with_pairs:
        named.append(("triton all-pairs", lambda: radius_graph_triton(batch, cutoff, method="pairs")))
    if with_vesin:
        try:
            from vesin.torch import NeighborList as TorchNeighborList

            nl = TorchNeighborList(cutoff=cutoff, full_list=True)
            points = batch.pos.to(torch.float64)
            box = batch.cell[0].to(torch.float64)
            named.insert(0, ("vesin-torch", lambda: nl.compute(points=points, box=box, periodic=True,
                                                                quantities="ijSDd")))
        except ImportError:
            notes.append("vesin-torch not installed: the Triton rows have no same-device baseline")
    rows = [(name, timed_device(fn, repeats, device)) for name, fn in named]
    return graph.num_edges, rows


def run_triton(quick: bool, device: str) -> dict:
    """The Triton backend on a CUDA device (see the module docstring)."""
    repeats = 3 if quick else 11
    notes = ["Triton rows: CUDA synchronised around every call; median wall over repeats",
             "triton cells = radius_graph_triton(method='cells'); triton auto = radius_graph(backend='triton')"]
    specs = [("bulk500", (5, 5, 5), True), ("bulk2k", (8, 8, 8), True), ("bulk10k", (13, 14, 14), False)]
    if not quick:
        specs.append(("bulk100k", (29, 29, 30), False))
    cases = []
    for name, repeats_xyz, with_pairs in specs:
        atoms = fcc_bulk(repeats_xyz)
        pairs, rows = bench_triton(atoms, 6.0, repeats, device, notes, with_pairs=with_pairs)
        named = dict(rows)
        baseline = named.get("vesin-torch")
        cases.append({"case": name, "atoms": len(atoms), "cutoff": 6.0, "pairs": pairs, "rows": [
            {"impl": impl, "seconds": wall, "cpu_seconds": cpu, "mpairs_per_s": pairs / wall / 1e6,
             "speedup_vs_vesin": (baseline[0] / wall) if baseline else None, "cpu_speedup_vs_vesin": None}
            for impl, (wall, cpu) in rows]})
    return {"benchmark": "radius", "quick": quick, "device": device, "cases": cases, "gemnet_indices": None,
            "notes": notes, "versions": versions()}


def run(quick: bool = False, device: str = "cpu", threads: int = 1) -> dict:
    """Run the benchmark; returns a JSON-able dict (used by the suite and by ``main``)."""
    if str(device).startswith("cuda"):
        return run_triton(quick, device)
    if device != "cpu":
        raise ValueError(f"bench/radius.py runs on cpu or cuda, not {device!r}")
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
    indices = bench_gemnet_indices(repeats, notes, quick)
    return {"benchmark": "radius", "quick": quick, "device": device, "cases": cases,
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
        print("\nGemNet-OC index construction, ms per 1000 main edges (before = torch, after = numba walks)")
        print(f"  {'graph':<38}{'op':<20}{'edges':>8}{'before':>9}{'after':>9}{'speedup':>9}{'cpu x':>8}")
        for row in result["gemnet_indices"]["rows"]:
            cpu = f"{row['cpu_speedup']:.1f}x" if row.get("cpu_speedup") else "-"
            print(f"  {row['graph']:<38}{row['op']:<20}{row['edges']:>8}{row['before_ms_per_1000_edges']:>9.3f}"
                  f"{row['after_ms_per_1000_edges']:>9.3f}{row['speedup']:>8.1f}x{cpu:>8}")
    for note in result["notes"]:
        print(f"note: {note}")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small cases, finishes in seconds")
    parser.add_argument("--out", help="write the results as JSON here")
    parser.add_argument("--threads", type=int, default=1, help="OpenMP threads for our kernel rows (0 = default)")
    parser.add_argument("--device", default="cpu", help="cpu (C++ kernel, index construction) or cuda (Triton)")
    parser.add_argument("--torch-threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    args = parser.parse_args(argv)
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    result = run(quick=args.quick, device=args.device, threads=args.threads)
    print_table(result)
    if args.out:
        with atomic_write(args.out) as handle:
            handle.write(json.dumps(result, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
