"""Benchmark: radius graph (full neighbour list with periodic shifts) vs vesin, matscipy and ase.

Cases (same run, same machine; only same-run ratios mean anything on a shared machine):
  Cu fcc     rattled cubic Cu supercells (rep^3 x 4 atoms), periodic, cutoff 6 Å, float64
  molecules  small random molecules (3-20 atoms), cutoff 12 Å: ours in ONE call with the batch
             index; vesin once per molecule, and on all molecules packed far apart in one big box
Reference: radius_ref.radius_graph_ref (every (i, j, image) triple tested). Every method returns the
pair set (i, j, S) and the distances d; error = inf when its pair set differs from the reference's,
else max |d - d_ref| in Å, tolerance 1e-9 (stated: float64 distances, rounding only).
Memory: every row records the peak RSS of its checked call (bench/harness.py: the process's VmHWM,
reset before the call), so a case whose memory runs away shows in bench.json / bench.md.
Methods (timed round-robin by bench/harness.py):
  fastcsi radius_graph (cpu)   ours: radius_graph(batch, cutoff, backend="cpu") (validation,
                               tensors, float64 geometry: the API users call)
  fastcsi kernel (1 thread)    control: the C++ search alone returning numpy arrays
  vesin, matscipy, ase         baselines (full lists, quantities i j S d); matscipy and ase only on
                               the Cu cases
--device cuda: the Triton backend on rattled Cu fcc (float32 positions: the pair set is compared
with the reference, distances within 1e-4 Å): the cell list (method="cells"), the dispatcher
(backend="triton"), the all-pairs kernel, and vesin-torch on the same GPU when installed.

    python bench/radius.py [--quick] [--device cpu|cuda] [--threads N] [--out FILE.json]
"""
from __future__ import annotations

import math
import sys

import numpy as np

from fastcsi._bench.harness import Case, Method, optional, script_main

KERNEL = "radius"
CUTOFF = 6.0
MOLECULE_CUTOFF = 12.0
TOLERANCE = 1e-9  # Å: float64 distances of one pair differ by the order of the geometry's arithmetic


def fcc_bulk(rep: int, seed: int = 0):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((rep, rep, rep))
    atoms.rattle(0.05, seed=seed)
    return atoms


def random_molecules(count: int, seed: int = 0) -> list[np.ndarray]:
    """Molecule-like clusters: 3-20 atoms, nearest distances ~1-1.5 Å, radius a few Å."""
    rng = np.random.default_rng(seed)
    return [rng.normal(size=(n, 3)) * (0.6 * n ** (1 / 3)) for n in rng.integers(3, 21, size=count)]


def pairs(i, j, shifts, d):
    """(keys sorted by (i, j, S), distances in that order) as numpy."""
    i, j, d = (np.asarray(a.detach().cpu() if hasattr(a, "detach") else a) for a in (i, j, d))
    shifts = np.asarray(shifts.detach().cpu() if hasattr(shifts, "detach") else shifts).reshape(len(i), 3)
    keys = np.column_stack([i, j, shifts]).astype(np.int64)
    order = np.lexsort(keys.T[::-1])
    return keys[order], d.astype(np.float64)[order]


def graph_pairs(graph):
    """A RadiusGraph's pairs (i = target = edge_index[1], j = source)."""
    return pairs(graph.edge_index[1], graph.edge_index[0], graph.cell_offsets, graph.distances)


def pair_error(output, expected) -> float:
    keys, d = output
    want_keys, want_d = expected
    if keys.shape != want_keys.shape or not np.array_equal(keys, want_keys):
        return math.inf
    return float(np.abs(d - want_d).max(initial=0.0))


def threads_note(natoms) -> str | None:
    """How many threads the C++ search ran on for structures of ``natoms`` atoms: it takes at most
    one thread per ~2^20 estimated candidate tests (about atoms * 512 / 2^20), so small cases run on
    one thread whatever torch's thread count says. None when the extension is not built."""
    import torch

    from fastcsi._native import has as native_has
    from fastcsi.graph.radius_cpu import threads_used

    if not native_has("radius_threads"):
        return None

    asked = torch.get_num_threads()
    return (f"C++ search on {threads_used(natoms, asked)} of {asked} threads (the kernel's cap: about atoms x 512 "
            "/ 2^20 threads)")


def cases(quick: bool = True, device: str = "cpu", sizes=None):
    if str(device).startswith("cuda"):
        yield from triton_cases(quick, device, sizes)
        return
    import torch
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    from fastcsi._native import NATIVE_ERROR
    from fastcsi._native import has as native_has
    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.graph import radius_graph
    from fastcsi.graph.radius_cpu import search_cpu
    from fastcsi.graph.radius_ref import radius_graph_ref

    vesin, vesin_missing = optional("vesin")
    matscipy_nl, matscipy_missing = optional("matscipy.neighbours")

    def ours_api(inp):
        return graph_pairs(radius_graph(inp["batch"], inp["cutoff"], backend="cpu"))

    def ours_kernel(inp):
        index, shifts, _, d, _ = search_cpu(inp["batch"], inp["cutoff"], 1)
        return pairs(index[1], index[0], shifts, d)

    def reference(inp):
        return graph_pairs(radius_graph_ref(inp["batch"], inp["cutoff"]))

    # without the extension our rows are skipped with the reason, not run into an AttributeError
    native_missing = None if native_has("radius_batch") else (NATIVE_ERROR or "fastcsi._C has no radius_batch")

    def methods(extra, natoms):
        return [Method("fastcsi radius_graph (cpu)", "ours", ours_api, tolerance=TOLERANCE, note=threads_note(natoms),
                       skip=native_missing),
                Method("fastcsi kernel (1 thread)", "control", ours_kernel, tolerance=TOLERANCE, skip=native_missing),
                *extra]

    def baseline(name, fn, missing=None):
        return Method(name, "baseline", fn if missing is None else None, tolerance=TOLERANCE, skip=missing)

    for rep in sizes or ((2, 3) if quick else (3, 5, 8, 11)):
        def inputs(rep=rep):
            atoms = fcc_bulk(rep, seed=rep)
            return {"atoms": atoms, "cutoff": CUTOFF, "batch": batch_from_atoms([atoms], dtype=torch.float64),
                    "nl": vesin.NeighborList(cutoff=CUTOFF, full_list=True) if vesin else None}

        def vesin_fn(inp):
            atoms = inp["atoms"]
            return pairs(*inp["nl"].compute(atoms.positions, atoms.cell.array, True, quantities="ijSd"))

        atoms = 4 * rep**3
        edges = 78 * atoms  # fcc Cu within 6 Å: 12 + 6 + 24 + 12 + 24 neighbours (work measure, nominal)
        # lower bound of traffic: positions in, (i, j, S, d, vector) out
        nbytes = atoms * 3 * 8 + edges * (2 * 8 + 3 * 8 + 8 + 3 * 8)
        yield Case(KERNEL, f"Cu fcc {rep}x{rep}x{rep} cubic, {CUTOFF} Å", atoms, "atoms", edges, "edges", inputs,
                   reference, pair_error, methods([
                       baseline("vesin", vesin_fn, vesin_missing),
                       baseline("matscipy", lambda inp: pairs(*matscipy_nl.neighbour_list("ijSd", inp["atoms"], CUTOFF)),
                                matscipy_missing),
                       baseline("ase", lambda inp: pairs(*ase_neighbor_list("ijSd", inp["atoms"], CUTOFF)))], [atoms]),
                   flops=8.0 * edges, bytes=nbytes, repeats=3 if quick else 5)

    count = 100 if quick else 1000
    if sizes is None:
        molecules = random_molecules(count)  # drawn once: the inputs and the threads note count the same atoms

        def molecule_inputs():
            from fastcsi.data.batch import collate
            from fastcsi.data.structure import Structure

            structures = [Structure(atomic_numbers=np.ones(len(p), np.int64), positions=p) for p in molecules]
            # packed: molecules on a grid spaced wider than the cutoff plus their size, one call
            side = int(np.ceil(count ** (1 / 3)))
            spacing = MOLECULE_CUTOFF + 2 * max(float(np.abs(p).max()) for p in molecules) + 1.0
            grid = np.array([(a, b, c) for a in range(side) for b in range(side) for c in range(side)])[:count]
            return {"molecules": molecules, "cutoff": MOLECULE_CUTOFF, "batch": collate(structures, dtype=torch.float64),
                    "packed": np.concatenate([p + g * spacing for p, g in zip(molecules, grid)]),
                    "offsets": np.cumsum([0] + [len(p) for p in molecules])[:-1],
                    "nl": vesin.NeighborList(cutoff=MOLECULE_CUTOFF, full_list=True) if vesin else None}

        zero = np.zeros((3, 3))

        def vesin_per_molecule(inp):
            parts = [inp["nl"].compute(points=p, box=zero, periodic=False, quantities="ijSd") for p in inp["molecules"]]
            return pairs(np.concatenate([i + o for (i, _, _, _), o in zip(parts, inp["offsets"])]),
                         np.concatenate([j + o for (_, j, _, _), o in zip(parts, inp["offsets"])]),
                         np.concatenate([s for _, _, s, _ in parts]), np.concatenate([d for *_, d in parts]))

        def vesin_packed(inp):
            return pairs(*inp["nl"].compute(points=inp["packed"], box=zero, periodic=False, quantities="ijSd"))

        yield Case(KERNEL, f"{count} molecules (3-20 atoms), {MOLECULE_CUTOFF} Å", count, "molecules", count,
                   "molecules", molecule_inputs, reference, pair_error, methods([
                       baseline("vesin per molecule", vesin_per_molecule, vesin_missing),
                       baseline("vesin packed box", vesin_packed, vesin_missing)],
                       [len(p) for p in molecules]), repeats=3 if quick else 5)


def triton_cases(quick: bool, device: str, sizes=None, cutoff: float = CUTOFF, tolerance: float = 1e-4):
    """The Triton backend on one Cu structure per case (see the module docstring)."""
    import torch

    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.graph import radius_graph
    from fastcsi.graph.radius_ref import radius_graph_ref
    from fastcsi.graph.radius_triton import radius_graph_triton

    vesin_torch, vesin_missing = optional("vesin.torch")

    def vesin_fn(inp):
        i, j, s, d = inp["nl"].compute(points=inp["points"], box=inp["box"], periodic=True, quantities="ijSd")
        return pairs(i, j, s, d)

    for rep in sizes or ((5, 8) if quick else (5, 8, 11)):
        def inputs(rep=rep):
            atoms = fcc_bulk(rep, seed=rep)
            batch = batch_from_atoms([atoms], dtype=torch.float32, device=device)
            return {"batch": batch, "cutoff": cutoff, "points": batch.pos.double(), "box": batch.cell[0].double(),
                    "reference_batch": batch_from_atoms([atoms], dtype=torch.float64),
                    "nl": vesin_torch.NeighborList(cutoff=cutoff, full_list=True) if vesin_torch else None}

        atoms = 4 * rep**3
        methods = [Method("triton cells", "ours", lambda inp: graph_pairs(
                       radius_graph_triton(inp["batch"], inp["cutoff"], method="cells")), "float32", tolerance),
                   Method("triton auto (api)", "ours", lambda inp: graph_pairs(
                       radius_graph(inp["batch"], inp["cutoff"], backend="triton")), "float32", tolerance),
                   Method("triton all-pairs", "control", lambda inp: graph_pairs(
                       radius_graph_triton(inp["batch"], inp["cutoff"], method="pairs")), "float32", tolerance),
                   Method("vesin-torch", "baseline", vesin_fn if vesin_torch else None, "float32", tolerance,
                          skip=vesin_missing)]
        yield Case(KERNEL, f"Cu fcc {rep}x{rep}x{rep} cubic, {cutoff} Å, float32 ({device})", atoms, "atoms",
                   78 * atoms if cutoff == CUTOFF else None, "edges", inputs, lambda inp: graph_pairs(radius_graph_ref(inp["reference_batch"], inp["cutoff"])),
                   pair_error, methods, repeats=3 if quick else 11)


if __name__ == "__main__":
    sys.exit(script_main(KERNEL, cases, __doc__))
