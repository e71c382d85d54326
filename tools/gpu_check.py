#!/usr/bin/env python
"""One prepared check of every GPU path of fastcsi, for the first minutes on a CUDA machine.

    python tools/gpu_check.py -o DIR [--quick] [--dry-run] [--only a,b] [--list]

On a CUDA machine it runs, each item in its own process (a kernel that faults, hangs or kills its
process fails that item only) under a timeout and one overall time budget:

  machine             GPU, driver, CUDA / torch / Triton versions, vesin(-torch) present
  radius_pairs        Triton all-pairs radius graph vs the reference: tile edges (15-17, 31-33 atoms),
                      empty, molecules, periodic / slab / triclinic, duplicates, max_neighbors, fp32/fp64
  radius_cells        Triton cell list vs the reference (C++ kernel for large cells): one-bin
                      clusters at the tile edges (15-17, 63-65 atoms), bulk, skewed, slab, thin cells,
                      random batches, auto routing
  covariance          Triton SYRK (ieee, tf32) and the float64 cuBLAS path vs the float64 reference,
                      n and d around the 32-wide tiles, offset data, fp32/bf16/fp64 inputs
  frechet             the torch/CUDA Fréchet distance vs the reference
  interaction         fused GemNet-OC interaction (forward, the four gradients, double backward) vs the
                      reference: segments of 0, 1, 31-33, 64, 65 triplets, model shapes, edge->atom, empty
  gemnet_model        GemNet-OC on CUDA (fused paths) vs the same weights on CPU: energy, forces,
                      features, training-mode parameter gradients through gradient forces
  nccl                single-process nccl group: FeatureStats.all_reduce and a gradient buffer all_reduce
  select              `fastcsi select` on the demo data, CUDA vs CPU (tolerance below)
  train               `fastcsi pretrain` GemNet-OC-S (bf16 autocast) + `fastcsi finetune` on CUDA:
                      throughput (structures/s, atoms/s of the last epoch) and peak GPU memory
  cell_list_vs_vesin  our Triton cell list vs vesin-torch on the same GPU (fcc Cu, 5 Å, fp32)
  pytest_gpu          `pytest -m gpu`
  bench               `fastcsi bench --device cuda --quick` (device peaks, CUDA-event timings, roofline)

and writes DIR/gpu_check.json and DIR/gpu_check.md (machine, versions, pass/fail per item with its
error, timings; rewritten after every item, so a run cut short keeps what it measured) plus one log
per item in DIR/logs/. Exit status 1 when a correctness item fails, 2 on a usage error.

``--dry-run`` (any machine): the same plan on the CPU. Triton kernels run under TRITON_INTERPRET=1
(at the GPU's tile shapes, on small inputs); CUDA-only steps run a CPU stand-in (gloo for nccl, the
C++ cell list and vesin for the vesin-torch timing, CPU runs of the CLI items) or are only listed;
the report says, per item, what would run on the GPU. ``--quick`` shrinks every item (on a dry run
it also lists the CLI items that cost most, train, bench and pytest, instead of running them).

Tolerances (relative to the largest reference magnitude unless stated): graphs: identical edges,
shifts and order, distances 1e-10 (fp64) / 2e-5 Å (fp32); covariance: per entry <= 4e-6 (ieee) /
2e-2 (tf32) x sum_k |xc_ki||xc_kj|, 1e-12 for the float64 path; Fréchet 1e-10; interaction 1e-12
(fp64) / 1e-5 (fp32); model fp64 1e-9, fp32 1e-3; select: each CSI within 1e-8 (float64 backbone)
and 2e-3 (float32) relative, same ranking; nccl exact up to 1e-12.
Injected failures for testing the runner: FASTCSI_GPU_CHECK_INJECT="item:raise,item:crash,item:hang".
"""
from __future__ import annotations

import argparse
import contextlib
import json
import math
import multiprocessing
import os
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FORMAT = "fastcsi-gpu-check/1"
INJECT_ENV = "FASTCSI_GPU_CHECK_INJECT"
# the modules every item needs, imported once in the fork server instead of once per item
PRELOAD = ["numpy", "torch", "ase", "fastcsi.graph", "fastcsi.stats", "fastcsi.model", "fastcsi.data.batch"]


class CheckFailed(AssertionError):
    """A correctness comparison failed (the message says which case and by how much)."""


class Skipped(Exception):
    """The item cannot run here (a missing optional package, no test collected)."""


@dataclass
class Context:
    outdir: Path
    device: str  # "cuda" on a GPU run, "cpu" on a dry run
    dry_run: bool
    quick: bool
    notes: list = field(default_factory=list)

    @property
    def gpu(self) -> bool:
        return not self.dry_run

    def note(self, text: str) -> None:
        self.notes.append(text)


@dataclass
class Item:
    name: str
    title: str
    gates: bool  # a failure makes the exit status non-zero
    timeout_s: int  # on a full GPU run; quick runs get half
    on_gpu: str  # what runs on the GPU
    dry_run: str  # what the dry run does instead
    fn: object = None
    dry_quick_lists_only: bool = False  # --dry-run --quick lists it instead of running its stand-in


ITEMS: dict[str, Item] = {}


def item(name, title, gates, timeout_s, on_gpu, dry_run, dry_quick_lists_only=False):
    def register(fn):
        ITEMS[name] = Item(name, title, gates, timeout_s, on_gpu, dry_run, fn, dry_quick_lists_only)
        return fn

    return register


# ------------------------------------------------------------------------------------ comparisons
def rel_err(got, want) -> float:
    """max |got - want| / max |want| (0 for empty tensors; want's scale floored at 1e-30)."""
    import torch

    got, want = torch.as_tensor(got).detach().cpu().double(), torch.as_tensor(want).detach().cpu().double()
    if got.shape != want.shape:
        raise CheckFailed(f"shape {tuple(got.shape)} != reference {tuple(want.shape)}")
    if want.numel() == 0:
        return 0.0
    return float((got - want).abs().max() / want.abs().max().clamp_min(1e-30))


def expect(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


def graphs_equal(graph, ref, dtype, label: str) -> int:
    import torch

    expect(graph.num_edges == ref.num_edges, f"{label}: {graph.num_edges} edges, reference {ref.num_edges}")
    expect(torch.equal(graph.edge_index.cpu(), ref.edge_index.cpu()), f"{label}: edge_index differs")
    expect(torch.equal(graph.cell_offsets.cpu(), ref.cell_offsets.cpu()), f"{label}: cell_offsets differ")
    expect(torch.equal(graph.num_neighbors.cpu(), ref.num_neighbors.cpu()), f"{label}: num_neighbors differ")
    tol = 1e-10 if dtype == torch.float64 else 2e-5
    for name in ("distances", "vectors"):
        a, b = getattr(graph, name).cpu().double(), getattr(ref, name).cpu().double()
        err = float((a - b).abs().max()) if a.numel() else 0.0
        expect(err <= tol, f"{label}: {name} differ by {err:.3g} Å > {tol:g}")
    return int(graph.num_edges)


# -------------------------------------------------------------------------------------- structures
def cluster(n, size, seed):
    import numpy as np
    from ase import Atoms

    rng = np.random.default_rng(seed)
    return Atoms(numbers=rng.choice([1, 6, 8], n), positions=rng.uniform(0.0, size, (n, 3)))


def fcc(repeats, a=3.61, rattle=0.05, seed=0):
    from ase.build import bulk

    atoms = bulk("Cu", "fcc", a=a, cubic=True) * repeats
    if rattle:
        atoms.rattle(rattle, seed=seed)
    return atoms


def triclinic(n, seed):
    import numpy as np
    from ase import Atoms

    rng = np.random.default_rng(seed)
    cell = np.array([[9.0, 0.0, 0.0], [5.5, 8.0, 0.0], [-3.0, 4.0, 9.5]])
    return Atoms(numbers=[6] * n, scaled_positions=rng.random((n, 3)), cell=cell, pbc=True)


def random_cells(count, seed, max_atoms=40):
    import numpy as np
    from ase import Atoms

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        n = int(rng.integers(1, max_atoms))
        cell = rng.normal(size=(3, 3)) * 2 + np.diag(rng.uniform(3, 12, 3))
        frac = rng.uniform(-0.5, 1.5, size=(n, 3))
        out.append(Atoms(numbers=[1] * n, positions=frac @ cell, cell=cell, pbc=rng.random(3) < 0.6))
    return out


# ------------------------------------------------------------------------------------------ items
@item("machine", "machine and versions", True, 60,
      "device properties, nvidia-smi, versions", "the same on the CPU (no GPU expected)")
def check_machine(ctx: Context) -> dict:
    import torch
    import torch.distributed

    from fastcsi._bench.harness import machine_info, package_versions

    out = {"machine": machine_info(ctx.device), "versions": package_versions()}
    out["versions"]["vesin_torch"] = _module_present("vesin.torch")
    out["cuda_available"] = torch.cuda.is_available()
    if ctx.gpu:
        expect(torch.cuda.is_available(), "torch sees no CUDA device")
        props = torch.cuda.get_device_properties(0)
        out["gpu"] = {"name": props.name, "capability": f"{props.major}.{props.minor}",
                      "memory_gib": round(props.total_memory / 2**30, 1), "sms": props.multi_processor_count,
                      "count": torch.cuda.device_count(), "bf16": torch.cuda.is_bf16_supported(),
                      "nccl": torch.distributed.is_nccl_available()}
        out["nvidia_smi"] = _run_text(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,"
                                       "power.limit", "--format=csv"], 30)
    return out


def _module_present(name: str) -> bool:
    try:
        __import__(name)
    except Exception:
        return False
    return True


def _run_text(command, timeout) -> str | None:
    try:
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None


def _gpu_tiles_under_interpreter(ctx: Context) -> None:
    """On a dry run the cell list takes the GPU's tile shapes (the interpreter would use wider ones)."""
    if ctx.dry_run:
        from fastcsi.graph import radius_triton_cells as cells

        cells.BLOCK_I, cells.BLOCK_J = 16, 64


@item("radius_pairs", "Triton all-pairs radius graph vs reference", True, 120,
      "compiled kernel on CUDA tensors, up to 511-atom clusters and 500-atom cells",
      "the same kernel under TRITON_INTERPRET=1 on CPU tensors, small inputs")
def check_radius_pairs(ctx: Context) -> dict:
    import torch
    from ase import Atoms
    from ase.build import bulk, fcc111, molecule

    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.graph import radius_graph
    from fastcsi.graph import radius_triton as pairs
    from fastcsi.graph.radius_triton import radius_graph_triton

    sizes = [1, pairs.BLOCK_I - 1, pairs.BLOCK_I, pairs.BLOCK_I + 1, pairs.BLOCK_J - 1, pairs.BLOCK_J, pairs.BLOCK_J + 1]
    if ctx.gpu:
        sizes += [2 * pairs.BLOCK_J + 1, 200, 511]
    slab = fcc111("Cu", size=(2, 2, 3), vacuum=5.0)
    slab.rattle(0.05, seed=2)
    slab.positions += slab.cell[0] * 1.3  # outside the cell: wrapped internally
    duplicated = Atoms("H3", positions=[[0, 0, 0], [0, 0, 0], [0.5, 0.2, 0.0]])
    cases = {
        "empty batch": [Atoms()],
        "molecules + empty + duplicates": [molecule("H2O"), Atoms(), molecule("CH3CH2OH"), duplicated],
        "tile-edge clusters": [cluster(n, 4.0, n) for n in sizes],
        "periodic small cells": [bulk("Cu", "fcc", a=3.6), fcc((2, 1, 1)), triclinic(20, 3)],
        "slab pbc (T,T,F), unwrapped": [slab],
        "cutoff above the cell": [bulk("Cu", "fcc", a=4.0)],
        "random partly periodic": random_cells(6 if ctx.gpu else 2, 11, 40 if ctx.gpu else 12),
    }
    if ctx.gpu:
        cases["periodic 256 / 500 atoms"] = [fcc((4, 4, 4)), triclinic(500, 5)]
    elif ctx.quick:  # the interpreter pays per image: the costliest case stays in the full dry run
        cases.pop("cutoff above the cell")
    cutoffs = {"cutoff above the cell": 9.0}
    checked = {}
    for dtype in (torch.float64, torch.float32):
        for label, structures in cases.items():
            cutoff = cutoffs.get(label, 3.0)
            batch = batch_from_atoms(structures, dtype=dtype, device=ctx.device)
            graph = radius_graph_triton(batch, cutoff, method="pairs")
            ref = radius_graph(batch.to("cpu"), cutoff, backend="ref")
            checked[f"{label} {str(dtype)[6:]}"] = graphs_equal(graph, ref, dtype, f"{label} ({dtype})")
        batch = batch_from_atoms(cases["molecules + empty + duplicates"] + cases["periodic small cells"], dtype=dtype,
                                 device=ctx.device)
        if dtype == torch.float32 and ctx.quick and not ctx.gpu:
            continue
        for max_neighbors, strict in ((4, False), (6, True)):  # the dispatcher's pruning on the kernel's output
            graph = radius_graph(batch, 3.0, max_neighbors=max_neighbors, strict=strict, backend="triton")
            ref = radius_graph(batch.to("cpu"), 3.0, max_neighbors=max_neighbors, strict=strict, backend="ref")
            checked[f"max_neighbors {max_neighbors} strict={strict} {str(dtype)[6:]}"] = graphs_equal(
                graph, ref, dtype, f"max_neighbors={max_neighbors}")
    return {"edges_per_case": checked, "tiles": f"BLOCK_I {pairs.BLOCK_I}, BLOCK_J {pairs.BLOCK_J}"}


@item("radius_cells", "Triton cell-list radius graph vs reference", True, 150,
      "compiled kernel on CUDA tensors, up to 4000-atom bulk (vs the C++ kernel) and auto routing",
      "the kernel under TRITON_INTERPRET=1 at the GPU tile shapes (16 x 64), small inputs")
def check_radius_cells(ctx: Context) -> dict:
    import torch
    from ase import Atoms
    from ase.build import bulk, fcc111, molecule

    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.graph import radius_graph
    from fastcsi.graph import radius_triton_cells as cells
    from fastcsi.graph.radius_triton import radius_graph_triton

    _gpu_tiles_under_interpreter(ctx)
    one_bin = [cells.BLOCK_I - 1, cells.BLOCK_I, cells.BLOCK_I + 1, cells.BLOCK_J - 1, cells.BLOCK_J, cells.BLOCK_J + 1]
    if not ctx.gpu and ctx.quick:
        one_bin = [cells.BLOCK_I - 1, cells.BLOCK_I + 1, cells.BLOCK_J + 1]
    slab = fcc111("Cu", size=(3, 3, 3), vacuum=6.0)
    slab.rattle(0.05, seed=2)
    slab.positions += slab.cell[0] * 1.7 - slab.cell[1] * 2.2
    thin = fcc((1, 1, 4))
    dup_bulk = bulk("Cu", "fcc", a=3.61, cubic=True)
    dup_bulk += Atoms("Cu", positions=[dup_bulk.positions[1]])
    dup_bulk.pbc = True
    cases = {
        "empty": ([Atoms()], 3.0),
        "no edges": ([Atoms("H2", positions=[[0, 0, 0], [0, 0, 9]])], 3.0),
        # one bin (extent below the cutoff): centres and candidates at the tile edges
        "one-bin clusters at tile edges": ([cluster(n, 2.5, n) for n in one_bin], 4.0),
        "fcc bulk 3x3x3": ([fcc((3, 3, 3))], 3.0),
        "skewed triclinic": ([triclinic(90, 3)], 3.2),
        "slab, unwrapped": ([slab], 3.0),
        "thinner than the cutoff": ([bulk("Cu", "fcc", a=4.0), thin], 4.5),
        "mixed batch with duplicates": ([molecule("CH3CH2OH"), Atoms(), fcc((2, 2, 2)), dup_bulk], 3.0),
        "random partly periodic": (random_cells(6 if ctx.gpu else 2, 11, 40 if ctx.gpu else 16), 4.0),
    }
    if ctx.quick and not ctx.gpu:
        for name in ("skewed triclinic", "slab, unwrapped"):
            cases.pop(name)
    checked = {}
    for dtype in (torch.float64, torch.float32):
        for label, (structures, cutoff) in cases.items():
            batch = batch_from_atoms(structures, dtype=dtype, device=ctx.device)
            graph = radius_graph_triton(batch, cutoff, method="cells")
            ref = radius_graph(batch.to("cpu"), cutoff, backend="ref")
            checked[f"{label} {str(dtype)[6:]}"] = graphs_equal(graph, ref, dtype, f"{label} ({dtype})")
    if ctx.gpu:
        # large cells against the C++ cell list (itself tested against the reference); auto routes
        # the bulk to the cell list and the molecules to all pairs, then merges
        for repeats, cutoff in (((10, 10, 10), 5.0), ((6, 6, 6), 6.0)):
            for dtype in (torch.float64, torch.float32):
                atoms = fcc(repeats)
                batch = batch_from_atoms([molecule("H2O"), atoms, molecule("CH4")], dtype=dtype, device=ctx.device)
                graph = radius_graph(batch, cutoff, backend="triton")
                ref = radius_graph(batch.to("cpu"), cutoff, backend="cpu")
                checked[f"auto: fcc {len(atoms)} atoms {cutoff} Å + molecules {str(dtype)[6:]}"] = graphs_equal(
                    graph, ref, dtype, f"fcc {len(atoms)}")
    return {"edges_per_case": checked, "tiles": f"BLOCK_I {cells.BLOCK_I}, BLOCK_J {cells.BLOCK_J}"}


@item("covariance", "Triton / CUDA covariance vs float64 reference", True, 90,
      "chunk_moments(backend='triton' (ieee, tf32) and 'cuda') on CUDA tensors",
      "backend='triton' under TRITON_INTERPRET=1 (the 'cuda' path needs a CUDA tensor: listed)")
def check_covariance(ctx: Context) -> dict:
    import numpy as np
    import torch

    from fastcsi.stats.covariance import chunk_moments, chunk_moments_ref

    if ctx.gpu:
        rows, dims = [0, 1, 31, 32, 33, 1000, 20000], [1, 31, 32, 33, 256]
        dtypes = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
    elif ctx.quick:
        rows, dims, dtypes = [0, 1, 33, 70], [1, 33], [torch.float32, torch.float64]
    else:
        rows, dims, dtypes = [0, 1, 31, 33, 100], [1, 31, 33], [torch.float32, torch.bfloat16, torch.float64]
    rng = np.random.default_rng(0)
    worst = {}
    for n in rows:
        for d in dims:
            data = rng.standard_normal((n, d)) * rng.uniform(0.1, 10.0, d) + 100.0  # offset: centring matters
            for dtype in dtypes:
                x = torch.tensor(data, dtype=dtype, device=ctx.device)
                exact = x.double().cpu().numpy()  # the values the kernel sees
                count, mean, scatter = chunk_moments_ref(exact)
                centred = np.abs(exact - exact.mean(0)) if n else np.zeros((0, d))
                bound = centred.T @ centred + 1e-300
                variants = [("triton ieee", {"backend": "triton"}, 4e-6),
                            ("triton tf32", {"backend": "triton", "tf32": True}, 2e-2)]
                if ctx.gpu:
                    variants.append(("cuda float64", {"backend": "cuda"}, 1e-12))
                for name, kwargs, tol in variants:
                    got = chunk_moments(x, **kwargs)
                    label = f"{name} n={n} d={d} {str(dtype)[6:]}"
                    expect(got[0] == count, f"{label}: count {got[0]} != {count}")
                    expect(np.allclose(got[1], mean, rtol=1e-12, atol=1e-12 * 100), f"{label}: mean differs")
                    err = float(np.max(np.abs(got[2] - scatter) / bound)) if n and d else 0.0
                    expect(err <= tol, f"{label}: scatter error {err:.3g} x sum|xc||xc| > {tol:g}")
                    worst[name] = max(worst.get(name, 0.0), err)
    if not ctx.gpu:
        ctx.note("the 'cuda' (float64 cuBLAS) backend needs a CUDA tensor: not run on the dry run")
    return {"worst_error_per_variant": worst, "rows": rows, "dims": dims, "dtypes": [str(d)[6:] for d in dtypes]}


@item("frechet", "torch/CUDA Fréchet distance vs reference", True, 60,
      "frechet_distance(backend='cuda') on CUDA tensors, d up to 1024",
      "backend='torch' (the same code) on CPU tensors")
def check_frechet(ctx: Context) -> dict:
    import numpy as np
    import torch

    from fastcsi.stats.frechet import frechet_distance
    from fastcsi.stats.frechet_cuda import frechet_distance_cuda
    from fastcsi.stats.frechet_ref import frechet_distance_ref

    # on the GPU through the dispatcher; in the dry run the same CUDA-path code on CPU tensors
    backend = "cuda" if ctx.gpu else "cuda code on CPU tensors"

    def run(*args):
        return frechet_distance(*args, backend="cuda") if ctx.gpu else frechet_distance_cuda(*args)

    dims = [2, 32, 256, 1024] if ctx.gpu and not ctx.quick else [2, 32, 128]
    rng = np.random.default_rng(1)
    errors = {}
    for d in dims:
        # well-conditioned covariances (the tolerance is the backends' agreement, not sqrtm's conditioning)
        a, b = rng.standard_normal((4 * d, d)), rng.standard_normal((4 * d, d)) * rng.uniform(0.5, 2.0, d)
        mu1, mu2, s1, s2 = a.mean(0), b.mean(0) + 0.5, np.cov(a.T).reshape(d, d), np.cov(b.T).reshape(d, d)
        want = frechet_distance_ref(mu1, s1, mu2, s2)
        tensors = [torch.tensor(v, device=ctx.device) for v in (mu1, s1, mu2, s2)]
        got = run(*tensors)
        errors[d] = abs(got - want) / abs(want)
        expect(errors[d] <= 1e-10, f"d={d}: Fréchet {got!r} vs reference {want!r} (rel {errors[d]:.3g})")
        same = run(tensors[0], tensors[1], tensors[0], tensors[1])
        expect(abs(same) <= 1e-10 * 2 * np.trace(s1), f"d={d}: FD of a Gaussian with itself is {same:.3g}")
    return {"backend": backend, "relative_error_per_dim": errors}


def interaction_case(dtype, device, counts, n_sph, d_interm, d_in, d_out, num_in=None, agg2_atoms=None, shuffle=False,
                     seed=0):
    """Inputs of interaction_bilinear laid out as the GemNet index builders do: triplets sorted by
    output edge (``counts[e]`` of them, ranked), the angular basis a transposed (E, Kmax, n_sph)
    matrix; with ``agg2_atoms`` the edges are aggregated onto that many atoms (radial matrix padded
    per atom)."""
    import torch

    from fastcsi.graph.ragged import ragged_range

    gen = torch.Generator().manual_seed(seed)
    counts = torch.as_tensor(counts, dtype=torch.long)
    num_edges = len(counts)
    num_in = num_in or max(num_edges, 1)
    out_idx = torch.repeat_interleave(torch.arange(num_edges), counts)
    out_inner = ragged_range(counts)
    gather_idx = torch.randint(0, num_in, (out_idx.numel(),), generator=gen)
    if shuffle:
        perm = torch.randperm(out_idx.numel(), generator=gen)
        out_idx, out_inner, gather_idx = out_idx[perm], out_inner[perm], gather_idx[perm]
    kmax = int(counts.max()) if num_edges else 0
    sph = torch.randn(num_edges, kmax, n_sph, generator=gen, dtype=dtype).transpose(1, 2)
    x = torch.randn(num_in, d_in, generator=gen, dtype=dtype)
    weight = torch.randn(d_out, d_interm * d_in, generator=gen, dtype=dtype) / math.sqrt(d_interm * d_in)
    if agg2_atoms is None:
        rad = torch.randn(num_edges, d_interm, n_sph, generator=gen, dtype=dtype)
        args = [rad, sph, x, gather_idx, out_idx, out_inner, weight]
    else:
        per_atom = torch.bincount(torch.randint(0, agg2_atoms, (num_edges,), generator=gen), minlength=agg2_atoms)
        outer = torch.repeat_interleave(torch.arange(agg2_atoms), per_atom)
        k2 = int(per_atom.max()) if num_edges else 0
        rad = torch.randn(agg2_atoms, d_interm, k2 * n_sph, generator=gen, dtype=dtype)
        args = [rad, sph, x, gather_idx, out_idx, out_inner, weight, outer, ragged_range(per_atom), agg2_atoms]
    # the transposed basis keeps its strides on the device (as the model's)
    return [a.to(device) if hasattr(a, "to") else a for a in args]


@item("interaction", "fused GemNet-OC interaction (forward, gradients) vs reference", True, 150,
      "compiled forward/backward kernels on CUDA tensors at GemNet-OC-S/L shapes",
      "the kernels under TRITON_INTERPRET=1 on CPU tensors, small shapes")
def check_interaction(ctx: Context) -> dict:
    import torch

    from fastcsi.model.gemnet_oc.interaction import interaction_bilinear
    from fastcsi.model.gemnet_oc.interaction_ref import interaction_bilinear_ref
    from fastcsi.model.gemnet_oc.interaction_triton import BLOCK_T

    tolerance = {torch.float64: 1e-12, torch.float32: 1e-5}
    edge_counts = [0, 1, BLOCK_T - 1, BLOCK_T, BLOCK_T + 1, 2 * BLOCK_T, 2 * BLOCK_T + 1]
    if ctx.gpu:
        gen = torch.Generator().manual_seed(5)
        random_counts = torch.randint(0, 40, (300 if ctx.quick else 2000,), generator=gen).tolist()
        shapes = [("triplet S/L (n_sph 7, d_interm 16, d_in 64)", 7, 16, 64, 64),
                  ("quadruplet S (49, 32, 32)", 49, 32, 32, 32), ("quadruplet L (49, 64, 64)", 49, 64, 64, 32),
                  ("odd (3, 4, 5)", 3, 4, 5, 3)]
    else:
        random_counts = [3, 0, 5, 2]
        shapes = [("odd (3, 4, 5)", 3, 4, 5, 3)] + ([] if ctx.quick else [("triplet-like (7, 16, 20)", 7, 16, 20, 8)])
        edge_counts = [0, 1, BLOCK_T + 1] if ctx.quick else edge_counts
    cases = {}
    for name, n_sph, d_interm, d_in, d_out in shapes:
        cases[f"{name}: segments at BLOCK_T edges"] = dict(counts=edge_counts, n_sph=n_sph, d_interm=d_interm,
                                                            d_in=d_in, d_out=d_out)
        cases[f"{name}: random, unsorted"] = dict(counts=random_counts, n_sph=n_sph, d_interm=d_interm, d_in=d_in,
                                                  d_out=d_out, shuffle=True)
        cases[f"{name}: edge->atom"] = dict(counts=random_counts, n_sph=n_sph, d_interm=d_interm, d_in=d_in,
                                            d_out=d_out, agg2_atoms=max(2, len(random_counts) // 6))
    cases["empty: no edges"] = dict(counts=[], n_sph=3, d_interm=4, d_in=5, d_out=3, num_in=4)
    cases["edges without triplets"] = dict(counts=[0, 0, 0], n_sph=3, d_interm=4, d_in=5, d_out=3)
    worst = {}
    for dtype in (torch.float64, torch.float32):
        for label, spec in cases.items():
            args = interaction_case(dtype, ctx.device, **spec)
            diff = (0, 1, 2, 6)  # rad_W1, sph, x, weight
            ref_in = [a.detach().clone().requires_grad_(True) if i in diff else a for i, a in enumerate(args)]
            dev_in = [a.detach().clone().requires_grad_(True) if i in diff else a for i, a in enumerate(args)]
            want = interaction_bilinear_ref(*ref_in)
            got = interaction_bilinear(*dev_in, backend="triton")
            upstream = torch.randn(want.shape, dtype=dtype, generator=torch.Generator().manual_seed(3)).to(ctx.device)
            grads_want = torch.autograd.grad(want, [ref_in[i] for i in diff], upstream, allow_unused=True)
            grads_got = torch.autograd.grad(got, [dev_in[i] for i in diff], upstream, allow_unused=True)
            errors = {"out": rel_err(got, want)}
            for name, index, g, w in zip(("d rad", "d sph", "d x", "d weight"), diff, grads_got, grads_want):
                w = torch.zeros_like(ref_in[index]) if w is None else w  # unused input: a zero gradient
                g = torch.zeros_like(w) if g is None else g
                errors[name] = rel_err(g, w)
            for name, err in errors.items():
                expect(err <= tolerance[dtype], f"{label} ({dtype}) {name}: relative error {err:.3g} > {tolerance[dtype]:g}")
                worst[f"{name} {str(dtype)[6:]}"] = max(worst.get(f"{name} {str(dtype)[6:]}", 0.0), err)
    # double backward (training on gradient forces: the kernels' backward falls back to the
    # reference), with inputs that share history as in GemNet-OC (a later block's x is a function of
    # the bases): "forces" f = d E / d p, then the gradient of |f|^2 w.r.t. p and the weight
    base = interaction_case(torch.float64, ctx.device, **cases[next(iter(cases))])
    results = []
    for fn in (interaction_bilinear_ref, lambda *a: interaction_bilinear(*a, backend="triton")):
        p = torch.tensor([0.3, -0.2, 0.1], dtype=torch.float64, device=ctx.device, requires_grad=True)
        weight = base[6].detach().clone().requires_grad_(True)
        rad, sph = base[0] * (1 + p[0]), base[1] * (1 + p[1])
        x = base[2] * (1 + p[2]) + 0.01 * (rad.sum() + sph.sum())
        energy = fn(rad, sph, x, *base[3:6], weight).sin().sum()
        (force,) = torch.autograd.grad(energy, p, create_graph=True)
        force.square().sum().backward()
        results.append((force.detach(), p.grad, weight.grad))
    for name, got, want in zip(("forces", "d|f|^2/dp", "d|f|^2/dweight"), results[1], results[0]):
        err = rel_err(got, want)
        expect(err <= 1e-10, f"double backward (shared history) {name}: relative error {err:.3g}")
        worst[f"double backward {name} float64"] = err
    return {"cases": list(cases), "worst_relative_error": worst, "BLOCK_T": BLOCK_T}


@contextlib.contextmanager
def _triton_paths(wanted: bool):
    """Inside: models run their Triton radius graph and fused interaction (the dry run's device
    stand-in, under the interpreter), through ``fastcsi.backend.override``; with ``wanted`` False
    (CUDA: auto picks them) nothing changes."""
    if not wanted:
        yield
        return
    from fastcsi.backend import override

    with override(radius="triton", interaction="triton"):
        yield


@contextlib.contextmanager
def _count_triton_calls(counts: dict):
    """Count the launches of the Triton radius search and fused interaction inside the block (so a
    device run that silently took another path fails instead of passing vacuously)."""
    from fastcsi.graph import radius_triton
    from fastcsi.model.gemnet_oc import interaction_triton

    function = interaction_triton.FusedInteractionBilinear
    forward, search = function.forward, radius_triton.search_triton

    def counted_forward(fn_ctx, *args):
        counts["interaction"] = counts.get("interaction", 0) + 1
        return forward(fn_ctx, *args)

    def counted_search(*args, **kwargs):
        counts["radius"] = counts.get("radius", 0) + 1
        return search(*args, **kwargs)

    function.forward, radius_triton.search_triton = staticmethod(counted_forward), counted_search
    try:
        yield counts
    finally:
        function.forward, radius_triton.search_triton = staticmethod(forward), search


@item("gemnet_model", "GemNet-OC on the device vs the same weights on CPU", True, 150,
      "gemnet-oc-s and -tiny on CUDA (auto: Triton graph + fused interaction) vs CPU",
      "gemnet-oc-tiny with the Triton graph and fused interaction under the interpreter vs the CPU paths")
def check_gemnet_model(ctx: Context) -> dict:
    import copy

    import torch
    from ase.build import molecule

    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.model import build_model, extract_features

    names = ["gemnet-oc-tiny", "gemnet-oc-s"] if ctx.gpu else ["gemnet-oc-tiny"]
    if ctx.gpu:
        structures = [molecule("CH3CH2OH"), fcc((1, 1, 1)), molecule("C6H6")]
    else:  # the interpreter runs one program per output edge: tiny structures only
        from ase import Atoms

        # periodic: an OH in a 5.5 Å box, a few image edges within the 6 Å cutoff
        box = Atoms("OH", positions=[[0.0, 0.0, 0.0], [0.97, 0.1, 0.0]], cell=[5.5, 5.6, 5.7], pbc=True)
        structures = [molecule("H2O")] + ([] if ctx.quick else [box])
    tolerance = {torch.float64: 1e-9, torch.float32: 1e-3}
    results, launch_counts = {}, {}
    for name in names:
        for dtype in (torch.float64, torch.float32):
            torch.manual_seed(0)
            cpu_model = build_model(name, direct_forces=False).to(dtype)
            dev_model = copy.deepcopy(cpu_model).to(ctx.device)
            batch = batch_from_atoms(structures, dtype=dtype)
            dev_batch = batch.to(ctx.device)
            errors, launches = {}, {}
            cpu_model.eval(), dev_model.eval()
            want = cpu_model(batch)
            with _triton_paths(ctx.dry_run), _count_triton_calls(launches):
                got = dev_model(dev_batch)
                dev_features = extract_features(dev_model, dev_batch)
            errors["energy"], errors["forces"] = rel_err(got["energy"], want["energy"]), rel_err(got["forces"], want["forces"])
            errors["features"] = rel_err(dev_features, extract_features(cpu_model, batch))
            # training mode: parameter gradients of an energy + force loss (double backward)
            grads = []
            for model, b, device_paths in ((cpu_model, batch, False), (dev_model, dev_batch, True)):
                model.train()
                model.zero_grad()
                with _triton_paths(device_paths and ctx.dry_run), _count_triton_calls(launches):
                    out = model(b)
                    (out["energy"].square().sum() + out["forces"].square().sum()).backward()
                grads.append(torch.cat([p.grad.reshape(-1).cpu() for p in model.parameters() if p.grad is not None]))
            errors["parameter gradients"] = rel_err(grads[1], grads[0])
            expect(launches.get("radius", 0) > 0 and launches.get("interaction", 0) > 0,
                   f"{name}: the device model did not run the Triton paths (launches {launches})")
            for what, err in errors.items():
                expect(err <= tolerance[dtype], f"{name} {dtype} {what}: relative error {err:.3g} > {tolerance[dtype]:g}")
            results[f"{name} {str(dtype)[6:]}"] = errors
            launch_counts[f"{name} {str(dtype)[6:]}"] = launches
    return {"structures": [s.get_chemical_formula() for s in structures], "relative_errors": results,
            "triton_launches": launch_counts}


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@item("nccl", "single-process nccl group: stats and gradient all_reduce", True, 60,
      "init_process_group('nccl', world_size=1), FeatureStats.all_reduce and a gradient buffer on CUDA",
      "the same with gloo on CPU tensors")
def check_nccl(ctx: Context) -> dict:
    import numpy as np
    import torch
    import torch.distributed as dist

    from fastcsi.stats import FeatureStats

    backend = "nccl" if ctx.gpu else "gloo"
    if ctx.gpu:
        torch.cuda.set_device(0)
    start = time.perf_counter()
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{_free_port()}", rank=0, world_size=1)
    try:
        init_s = time.perf_counter() - start
        rng = np.random.default_rng(0)
        x, labels = rng.standard_normal((500, 8)) + 50.0, rng.choice([1, 6, 8], 500)
        stats = FeatureStats(8, track_groups=True).update(x, groups=labels)
        before = stats.copy()
        stats.all_reduce()
        expect(stats.count == before.count == 500, f"count {stats.count} after all_reduce")
        expect(np.abs(stats.mean - before.mean).max() <= 1e-12 * 50, "mean changed by a one-rank all_reduce")
        expect(np.abs(stats.scatter - before.scatter).max() <= 1e-12 * np.abs(before.scatter).max(),
               "scatter changed by a one-rank all_reduce")
        expect(sorted(stats.groups) == [1, 6, 8], f"groups {sorted(stats.groups)}")
        flat = torch.randn(1 << 20, device=ctx.device)  # a gradient buffer, as train.distributed sums it
        want = flat.clone()
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        expect(torch.equal(flat, want), "a one-rank SUM all_reduce changed the buffer")
        return {"backend": backend, "init_s": init_s, "device": str(flat.device)}
    finally:
        dist.destroy_process_group()


def _cli(args, log_name, ctx: Context, timeout: float) -> subprocess.CompletedProcess:
    """Run ``python -m fastcsi ARGS`` (its output in logs/<log_name>.log); raise on a non-zero exit."""
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", INJECT_ENV)}
    done = subprocess.run([sys.executable, "-m", "fastcsi", *args], capture_output=True, text=True, timeout=timeout,
                          env=env, cwd=ROOT)
    (ctx.outdir / "logs" / f"{log_name}.log").write_text(f"$ fastcsi {' '.join(args)}\n{done.stdout}\n{done.stderr}")
    if done.returncode:
        raise CheckFailed(f"fastcsi {' '.join(args[:2])} exited {done.returncode}: {done.stderr.strip()[-1500:]}")
    return done


def _remaining(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left < 5:
        raise CheckFailed("out of this item's time")
    return left


@item("select", "fastcsi select on the demo data: CUDA vs CPU", True, 180,
      "fastcsi select (demo data, default demo samples and seeds) --device cuda vs --device cpu, float32 and float64",
      "CPU stand-in: --device cpu with two batch sizes (the comparison, not the GPU)")
def check_select(ctx: Context, deadline: float) -> dict:
    dtypes = ["float32"] if ctx.quick else ["float32", "float64"]
    sampling = ["--samples", "8", "--seeds", "0"] if (ctx.quick and ctx.dry_run) else []
    tolerance = {"float32": 2e-3, "float64": 1e-8}
    runs = [("cuda", "--device", "cuda"), ("cpu", "--device", "cpu")] if ctx.gpu else \
        [("cpu batch 16", "--batch-size", "16"), ("cpu batch 5", "--batch-size", "5")]
    out = {}
    for dtype in dtypes:
        values = {}
        for label, flag, value in runs:
            run_dir = ctx.outdir / "select" / f"{dtype}_{label.replace(' ', '_')}"
            args = ["select", *sampling, "--dtype", dtype, flag, value, "--no-cache", "--quiet", "-o", str(run_dir)]
            if not ctx.gpu:
                args += ["--device", "cpu"]
            start = time.perf_counter()
            _cli(args, f"select_{dtype}_{label.replace(' ', '_')}", ctx, _remaining(deadline))
            record = json.loads((run_dir / "csi.json").read_text())
            values[label] = {"wall_s": time.perf_counter() - start,
                             "csi": {Path(r["upstream"]).name: r["csi"] for r in record["ranking"]}}
        (a, first), (b, second) = values.items()
        expect(list(first["csi"]) == list(second["csi"]), f"{dtype}: ranking {list(first['csi'])} vs {list(second['csi'])}")
        errors = {name: abs(first["csi"][name] - second["csi"][name]) / abs(second["csi"][name]) for name in first["csi"]}
        worst = max(errors.values())
        expect(worst <= tolerance[dtype], f"{dtype}: CSI {a} vs {b} differ by {worst:.3g} relative > {tolerance[dtype]:g}")
        out[dtype] = {"runs": values, "relative_difference": errors, "tolerance": tolerance[dtype]}
    return out


def _find_key(obj, key):
    """The first value stored under ``key`` anywhere in a nested JSON record (None if absent)."""
    if isinstance(obj, dict):
        if key in obj:
            return obj[key]
        obj = list(obj.values())
    if isinstance(obj, list):
        for value in obj:
            found = _find_key(value, key)
            if found is not None:
                return found
    return None


def _last_epoch(metrics_csv: Path) -> dict:
    import csv

    with open(metrics_csv) as handle:
        rows = list(csv.DictReader(handle))
    expect(bool(rows), f"{metrics_csv} has no rows")
    return rows[-1]


@item("train", "GemNet-OC-S pretrain (bf16 autocast) + finetune on CUDA", True, 240,
      "fastcsi pretrain --model gemnet-oc-s --device cuda (bf16 autocast on), then fastcsi finetune",
      "CPU stand-in: gemnet-oc-tiny on a few structures (no autocast on CPU)", dry_quick_lists_only=True)
def check_train(ctx: Context, deadline: float) -> dict:
    demo = ROOT / "fastcsi" / "data" / "demo_data"
    if ctx.gpu:
        model, samples, epochs, batch = "gemnet-oc-s", (64 if ctx.quick else 192), 2, 16
    else:
        model, samples, epochs, batch = "gemnet-oc-tiny", 8, 2, 4
    device = ["--device", ctx.device, "--quiet"]
    pre, ft = ctx.outdir / "train" / "pretrain", ctx.outdir / "train" / "finetune"
    _cli(["pretrain", "--data", str(demo / "upstream_organic.extxyz"), "--data", str(demo / "upstream_reactions.extxyz"),
          "--samples", str(samples), "--epochs", str(epochs), "--batch-size", str(batch), "--model", model, *device,
          "-o", str(pre)], "train_pretrain", ctx, _remaining(deadline))
    _cli(["finetune", "--pretrained", str(pre), "--data", str(demo / "downstream_md.extxyz"),
          "--split", f"{samples // 2},16,32", "--epochs", "2", "--patience", "0", "--batch-size", str(batch),
          "--model", model, *device, "-o", str(ft)], "train_finetune", ctx, _remaining(deadline))
    out = {"model": model, "samples": samples, "epochs": epochs, "batch_size": batch}
    for stage, run_dir in (("pretrain", pre), ("finetune", ft)):
        profile = json.loads((run_dir / "profile.json").read_text())
        last = _last_epoch(run_dir / "metrics.csv")
        loss = float(last["train_loss"])
        expect(math.isfinite(loss), f"{stage}: training loss {loss}")
        out[stage] = {
            # the last epoch's rate: the first one includes Triton's JIT compilation
            "last_epoch_structures_per_s": float(last["train_structures_per_s"]),
            "last_epoch_atoms_per_s": float(last["train_atoms_per_s"]),
            "run_throughput": profile.get("throughput"), "memory": profile.get("memory"), "loss": loss,
        }
    out["pretrain"]["amp_setting"] = _find_key(json.loads((pre / "pretrain.json").read_text()), "amp")
    results = json.loads((ft / "results.json").read_text())
    expect(all(math.isfinite(v) for v in results["test_mae"].values()), f"test MAE {results['test_mae']}")
    out["finetune"]["test_mae"] = results["test_mae"]
    out["reference"] = "fairchem users report ~20 samples per GPU-second for GemNet-OC training on a V100"
    return out


@item("cell_list_vs_vesin", "Triton cell list vs vesin-torch on the same GPU", True, 150,
      "fcc Cu, 5 Å, fp32: 131k (+524k) atoms, radius_graph(backend='triton') vs vesin-torch, CUDA-event medians",
      "CPU stand-in: the C++ cell list vs vesin (numpy) on a small fcc cell")
def check_cell_list_vs_vesin(ctx: Context) -> dict:
    import torch

    from fastcsi._bench.harness import measure
    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.graph import radius_graph

    cutoff = 5.0
    if ctx.gpu:
        repeats = [(20, 20, 20), (32, 32, 32)] if ctx.quick else [(32, 32, 32), (51, 51, 51)]  # 32k, 131k, 531k atoms
    else:
        repeats = [(4, 4, 4)] if ctx.quick else [(6, 6, 6), (8, 8, 8)]
    per_atom = 42  # fcc at a = 3.61 Å: 12 + 6 + 24 neighbours within 5 Å (the next shell is at 5.1 Å)
    rows = {}
    for rep in repeats:
        atoms = fcc(rep, rattle=0.01)
        n = len(atoms)
        batch = batch_from_atoms([atoms], dtype=torch.float32, device=ctx.device)
        if ctx.gpu:
            torch.cuda.reset_peak_memory_stats()
        ours_backend = "triton" if ctx.gpu else "cpu"
        graph = radius_graph(batch, cutoff, backend=ours_backend)
        expect(graph.num_edges == per_atom * n, f"{n} atoms: {graph.num_edges} edges, expected {per_atom * n}")
        row = {"atoms": n, "edges": int(graph.num_edges)}
        del graph
        row["ours_s"] = measure(lambda: radius_graph(batch, cutoff, backend=ours_backend), ctx.device, repeats=5)["seconds"]
        if ctx.gpu:
            row["ours_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
            try:
                from vesin.torch import NeighborList
            except Exception:
                ctx.note("vesin-torch is not installed: the cell list has no same-GPU baseline (pip install vesin-torch)")
            else:
                nl = NeighborList(cutoff=cutoff, full_list=True)
                # the same quantities as our graph holds (pairs, shifts, vectors, distances)
                for dtype in (torch.float32, torch.float64):
                    points = batch.pos.to(dtype).contiguous()
                    box = torch.tensor(atoms.cell.array, dtype=dtype, device=ctx.device)
                    try:
                        i, *_ = nl.compute(points=points, box=box, periodic=True, quantities="ijSDd")
                        break
                    except Exception as exc:  # noqa: BLE001 - a build without float32 support: float64
                        ctx.note(f"vesin-torch in {dtype} failed ({exc}); timed in float64")
                expect(len(i) == per_atom * n, f"vesin-torch: {len(i)} pairs, expected {per_atom * n}")
                row["vesin_torch_dtype"] = str(points.dtype)
                row["vesin_torch_s"] = measure(lambda: nl.compute(points=points, box=box, periodic=True,
                                                                  quantities="ijSDd"), ctx.device, repeats=5)["seconds"]
                row["speedup_vs_vesin_torch"] = row["vesin_torch_s"] / row["ours_s"]
        else:
            import vesin

            nl = vesin.NeighborList(cutoff=cutoff, full_list=True)
            positions, box = atoms.positions, atoms.cell.array
            i, *_ = nl.compute(points=positions, box=box, periodic=True, quantities="ijSDd")
            expect(len(i) == per_atom * n, f"vesin: {len(i)} pairs, expected {per_atom * n}")
            row["vesin_cpu_s"] = measure(lambda: nl.compute(points=positions, box=box, periodic=True, quantities="ijSDd"),
                                         "cpu", repeats=3)["seconds"]
        rows[n] = row
        if ctx.gpu:
            torch.cuda.empty_cache()
    return {"cutoff": cutoff, "dtype": "float32", "rows": rows,
            "reference": "NVIDIA nvalchemi-toolkit cell list: ~6.7 ms at 131k atoms, ~18 ms at 524k (fcc, 5 Å, fp32, H100)"}


@item("pytest_gpu", "pytest -m gpu", True, 180,
      "python -m pytest -q -m gpu tests", "lists the GPU-marked tests (pytest --collect-only -m gpu)",
      dry_quick_lists_only=True)
def check_pytest_gpu(ctx: Context, deadline: float) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("TRITON_INTERPRET", INJECT_ENV)}
    env["FASTCSI_TEST_GPU"] = "1"  # tests/conftest.py: real Triton on the device for the GPU-marked tests
    args = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "tests"]
    if ctx.dry_run:
        args.insert(3, "--collect-only")
    done = subprocess.run(args, capture_output=True, text=True, timeout=_remaining(deadline), env=env, cwd=ROOT)
    (ctx.outdir / "logs" / "pytest_gpu_run.log").write_text(done.stdout + "\n" + done.stderr)
    tail = done.stdout.strip().splitlines()[-1:] or [""]
    if done.returncode == 5:
        raise Skipped(f"no test is marked gpu ({tail[0]})")
    if done.returncode:
        raise CheckFailed(f"pytest -m gpu exited {done.returncode}: {done.stdout.strip()[-1500:]}")
    return {"summary": tail[0], "collected_only": ctx.dry_run}


@item("bench", "fastcsi bench --device cuda --quick", True, 300,
      "fastcsi bench --device cuda --quick (every kernel, device peaks, CUDA events, roofline)",
      "CPU stand-in: fastcsi bench --device cpu --quick --only covariance,frechet", dry_quick_lists_only=True)
def check_bench(ctx: Context, deadline: float) -> dict:
    outdir = ctx.outdir / "bench"
    args = ["bench", "--quick", "--device", ctx.device, "-o", str(outdir)]
    if ctx.dry_run:
        args += ["--only", "covariance,frechet"]
    try:
        _cli(args, "bench_run", ctx, _remaining(deadline))
    except CheckFailed:
        if not (outdir / "bench.json").exists():
            raise
    report = json.loads((outdir / "bench.json").read_text())
    rows = [{**{k: r.get(k) for k in ("kernel", "case", "size", "method", "role", "status", "seconds", "ratios")},
             "roof_fraction": (r.get("roofline") or {}).get("fraction")} for r in report.get("rows", [])]
    failed = report.get("failed") or []
    expect(not failed, f"bench rows FAILED their correctness check: {'; '.join(map(str, failed))[:1500]}")
    return {"rows": rows, "peaks": report.get("peaks"), "skipped": report.get("skipped"),
            "total_seconds": report.get("total_seconds"), "markdown": str(outdir / "bench.md")}


# ------------------------------------------------------------------------------------- the runner
def _inject(name: str) -> None:
    """Deliberate failures (tests of the runner): FASTCSI_GPU_CHECK_INJECT="item:raise,item:crash"."""
    for spec in filter(None, os.environ.get(INJECT_ENV, "").split(",")):
        target, _, kind = spec.partition(":")
        if target != name:
            continue
        if kind == "raise":
            raise CheckFailed(f"injected failure ({INJECT_ENV})")
        if kind == "crash":
            sys.stdout.flush()
            os.kill(os.getpid(), signal.SIGSEGV)
        if kind == "hang":
            time.sleep(3600)


def _child(name: str, ctx: Context, deadline_s: float, result_path: str, log_path: str) -> None:
    """Runs one item in its own process: output to its log file, result as JSON."""
    os.setpgid(0, 0)  # its own process group: a timeout kills the CLI runs it started too
    log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    spec = ITEMS[name]
    start = time.perf_counter()
    result = {"status": "pass"}
    try:
        _inject(name)
        needs_deadline = "deadline" in spec.fn.__code__.co_varnames[: spec.fn.__code__.co_argcount]
        # subprocesses end a little before the parent's timeout, so the item reports why
        margin = min(10.0, 0.1 * deadline_s)
        details = spec.fn(ctx, time.monotonic() + deadline_s - margin) if needs_deadline else spec.fn(ctx)
        result["details"] = details
    except Skipped as exc:
        result = {"status": "skip", "error": str(exc)}
    except CheckFailed as exc:
        result = {"status": "fail", "error": str(exc)}
    except BaseException as exc:  # noqa: BLE001 - an item's crash is its result, whatever it is
        result = {"status": "fail", "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()[-4000:]}
    result["seconds"] = time.perf_counter() - start
    result["notes"] = ctx.notes
    sys.stdout.flush()
    sys.stderr.flush()
    tmp = result_path + ".tmp"
    with open(tmp, "w") as handle:
        json.dump(result, handle, default=str)
    os.replace(tmp, result_path)


def run_item(name: str, ctx: Context, timeout: float, mp_context=None) -> dict:
    """Run one item in a child process under ``timeout`` seconds; a crash, a non-zero exit or a
    timeout is that item's failure. Returns its result dict."""
    mp_context = mp_context or multiprocessing.get_context("spawn")
    (ctx.outdir / "logs").mkdir(parents=True, exist_ok=True)
    (ctx.outdir / "items").mkdir(parents=True, exist_ok=True)
    result_path = ctx.outdir / "items" / f"{name}.json"
    log_path = ctx.outdir / "logs" / f"{name}.log"
    result_path.unlink(missing_ok=True)
    start = time.perf_counter()
    process = mp_context.Process(target=_child, args=(name, ctx, timeout, str(result_path), str(log_path)),
                                 name=f"gpu_check:{name}")
    process.start()
    process.join(timeout)
    timed_out = process.is_alive()
    if timed_out:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except OSError:  # the group is gone (or was never made): the process alone
            process.kill()
        process.join(10)
    seconds = time.perf_counter() - start
    if result_path.exists():
        result = json.loads(result_path.read_text())
    elif timed_out:
        result = {"status": "fail", "error": f"timed out after {timeout:.0f} s (killed)"}
    else:
        code = process.exitcode
        why = f"killed by signal {signal.Signals(-code).name}" if code is not None and code < 0 else f"exit status {code}"
        result = {"status": "fail", "error": f"the item's process died ({why}) before reporting"}
    result["wall_s"] = seconds
    result["log"] = str(log_path.relative_to(ctx.outdir))
    return result


def plan(ctx: Context, only: list[str] | None) -> list[tuple[Item, str]]:
    """(item, "run" | "list") in the order they run."""
    out = []
    for spec in ITEMS.values():
        if only and spec.name not in only:
            continue
        out.append((spec, "list" if ctx.dry_run and ctx.quick and spec.dry_quick_lists_only else "run"))
    return out


def write_reports(report: dict, outdir: Path) -> None:
    from fastcsi.utils import atomic_write

    with atomic_write(outdir / "gpu_check.json") as handle:
        json.dump(report, handle, indent=1, default=str)
    with atomic_write(outdir / "gpu_check.md") as handle:
        handle.write(markdown(report))


def _short(name: str, details) -> str:
    """One line of an item's result for the Markdown table."""
    if not isinstance(details, dict):
        return ""
    if name.startswith("radius"):
        edges = details["edges_per_case"]
        return f"{len(edges)} cases identical to the reference ({sum(edges.values())} edges); {details['tiles']}"
    for key in ("worst_relative_error", "worst_error_per_variant", "relative_error_per_dim"):
        if key in details:
            return "max rel. error " + ", ".join(f"{k}: {v:.2g}" for k, v in details[key].items())[:300]
    if name == "gemnet_model":
        return "max rel. error " + ", ".join(f"{k}: {max(v.values()):.2g}" for k, v in details["relative_errors"].items())
    if name == "select":
        return ", ".join(f"{dtype}: CSI max rel. difference {max(d['relative_difference'].values()):.2g} "
                         f"(tolerance {d['tolerance']:g})" for dtype, d in details.items())
    if name == "train":
        return ", ".join(f"{stage}: {details[stage]['last_epoch_structures_per_s']:.1f} structures/s"
                         for stage in ("pretrain", "finetune")) + f" ({details['model']})"
    if name == "cell_list_vs_vesin":
        return ", ".join(f"{row['atoms']} atoms: {row['ours_s'] * 1e3:.2f} ms" for row in details["rows"].values())
    if name == "nccl":
        return f"{details['backend']} group initialised in {details['init_s']:.2f} s, all_reduce exact"
    if name == "bench":
        return f"{len(details['rows'])} rows in {details.get('total_seconds') or 0:.0f} s"
    if name == "pytest_gpu":
        return details.get("summary", "")
    if name == "machine":
        gpu = details.get("gpu")
        return f"{gpu['name']} (sm_{gpu['capability'].replace('.', '')}, {gpu['memory_gib']} GiB)" if gpu else "no GPU"
    return ""


def markdown(report: dict) -> str:
    mode = "DRY RUN on the CPU (Triton interpreter / CPU stand-ins)" if report["dry_run"] else "GPU run"
    lines = [f"# fastcsi GPU check: {mode}{' (quick)' if report['quick'] else ''}", "",
             f"Started {report['started']}, {report['total_s']:.1f} s in all; command `{report['command']}`.", ""]
    machine = report.get("machine") or {}
    if machine:
        lines += ["| machine | |", "|---|---|"]
        m = machine.get("machine", {})
        gpu = machine.get("gpu")
        lines.append(f"| CPU | {m.get('cpu_model')}, {m.get('cores')} cores, {m.get('ram_gb')} GB |")
        lines.append(f"| GPU | {json.dumps(gpu) if gpu else 'none'} |")
        if machine.get("nvidia_smi"):
            lines.append(f"| nvidia-smi | {machine['nvidia_smi'].replace(chr(10), '; ')} |")
        versions = machine.get("versions", {})
        lines.append("| versions | " + ", ".join(f"{k} {v}" for k, v in versions.items() if k != "platform") + " |")
        lines.append("")
    lines += ["| item | gates | status | s | result / error |", "|---|---|---|---:|---|"]
    for r in report["items"]:
        text = r.get("error") or _short(r["name"], r.get("details"))
        if report["dry_run"]:
            text = (text + "; " if text else "") + f"on the GPU: {r['on_gpu']}"
        lines.append(f"| {r['name']} | {'yes' if r['gates'] else 'no'} | {r['status'].upper()} | "
                     f"{r.get('wall_s', 0):.1f} | {text.replace('|', '/').replace(chr(10), ' ')[:600]} |")
    s = report["summary"]
    lines += ["", f"**{s['pass']} passed, {s['fail']} failed, {s['skip']} skipped, {s['listed']} listed only**; "
              f"exit status {report['exit_status']}.", ""]
    for r in report["items"]:
        details = r.get("details")
        if r["name"] == "cell_list_vs_vesin" and details:
            baseline = "vesin on the CPU (dry run stand-in)" if report["dry_run"] else "vesin-torch, same GPU"
            lines += ["## Cell list vs vesin-torch", "", f"| atoms | edges | ours ms | {baseline} ms | x |",
                      "|---:|---:|---:|---:|---:|"]
            for row in details["rows"].values():
                base = row.get("vesin_torch_s") or row.get("vesin_cpu_s")
                base_ms = "" if base is None else f"{base * 1e3:.2f}"
                ratio = "" if base is None else f"{base / row['ours_s']:.2f}"
                lines.append(f"| {row['atoms']} | {row['edges']} | {row['ours_s'] * 1e3:.2f} | {base_ms} | {ratio} |")
            lines += ["", details["reference"], ""]
        if r["name"] == "train" and details:
            lines += ["## Training throughput", "", "| stage | structures/s | atoms/s | peak GPU MiB | loss |", "|---|---:|---:|---:|---:|"]
            for stage in ("pretrain", "finetune"):
                d = details[stage]
                mem = (d.get("memory") or {}).get("peak_gpu_allocated_mib")
                lines.append(f"| {stage} ({details['model']}) | {d['last_epoch_structures_per_s']:.1f} | "
                             f"{d['last_epoch_atoms_per_s']:.0f} | {'' if mem is None else f'{mem:.0f}'} | {d['loss']:.4g} |")
            lines += ["", details["reference"], ""]
        if r["name"] == "bench" and details:
            lines += ["## Bench rows", "", "| kernel | case | size | method | status | ms | roof | ratios |",
                      "|---|---|---|---|---|---:|---:|---|"]
            for row in details["rows"]:
                ms = "" if row.get("seconds") is None else f"{row['seconds'] * 1e3:.3f}"
                ratios = ", ".join(f"{k}: {v:.2f}x" for k, v in (row.get("ratios") or {}).items())
                roof = "" if row.get("roof_fraction") is None else f"{row['roof_fraction']:.0%}"
                lines.append(f"| {row['kernel']} | {row['case']} | {row['size']} | {row['method']} | {row['status']} | {ms} "
                             f"| {roof} | {ratios} |")
            lines += ["", f"Device peaks: {json.dumps(details.get('peaks'), default=str)[:600]}", ""]
    for r in report["items"]:
        if r.get("notes") or r.get("traceback"):
            lines.append(f"- {r['name']}: " + "; ".join(r.get("notes") or []) +
                         (f"\n\n```\n{r['traceback']}\n```" if r.get("traceback") else ""))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-o", "--outdir", type=Path, required=True, help="where gpu_check.json/.md and logs/ go")
    parser.add_argument("--quick", action="store_true", help="smaller inputs everywhere (about half the time)")
    parser.add_argument("--dry-run", action="store_true", help="CPU: Triton interpreter and CPU stand-ins")
    parser.add_argument("--only", default=None, help=f"comma-separated subset of {','.join(ITEMS)}")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="overall time budget; items that would start after it are skipped (default 450, quick 300)")
    parser.add_argument("--list", action="store_true", help="print the plan and exit")
    args = parser.parse_args(argv)
    only = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    unknown = [n for n in only or [] if n not in ITEMS]
    if unknown:
        print(f"gpu_check: error: unknown item(s) {', '.join(unknown)}; choose from {', '.join(ITEMS)}", file=sys.stderr)
        return 2
    # Triton reads TRITON_INTERPRET when a kernel is decorated: set it before any child imports them
    if args.dry_run:
        os.environ["TRITON_INTERPRET"] = "1"
    else:
        os.environ.pop("TRITON_INTERPRET", None)
    ctx = Context(outdir=args.outdir.resolve(), device="cpu" if args.dry_run else "cuda", dry_run=args.dry_run,
                  quick=args.quick)
    steps = plan(ctx, only)
    if args.list:
        for spec, action in steps:
            print(f"{spec.name:<20} {action:<5} {spec.on_gpu if ctx.gpu else spec.dry_run}")
        return 0
    if ctx.gpu:
        import torch  # only the parent: children are forked from a server that never touched CUDA

        if not torch.cuda.is_available():
            print("gpu_check: error: torch sees no CUDA device here; use --dry-run on a CPU machine", file=sys.stderr)
            return 2
    ctx.outdir.mkdir(parents=True, exist_ok=True)
    budget = args.budget_s or (300.0 if args.quick else 450.0)
    mp_context = multiprocessing.get_context("forkserver")
    mp_context.set_forkserver_preload(PRELOAD)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    start = time.monotonic()
    report = {"format": FORMAT, "dry_run": ctx.dry_run, "quick": ctx.quick, "device": ctx.device, "started": started,
              "command": " ".join(["python tools/gpu_check.py", *(argv if argv is not None else sys.argv[1:])]),
              "settings": {"budget_s": budget, "only": only, "inject": os.environ.get(INJECT_ENV)},
              "machine": None, "items": [], "total_s": 0.0}
    for index, (spec, action) in enumerate(steps, 1):
        entry = {"name": spec.name, "title": spec.title, "gates": spec.gates, "on_gpu": spec.on_gpu,
                 "dry_run_action": spec.dry_run if ctx.dry_run else None}
        left = budget - (time.monotonic() - start)
        timeout = min(spec.timeout_s * (0.5 if ctx.quick else 1.0), left)
        if action == "list":
            entry.update(status="listed", error=f"not run by --dry-run --quick (--dry-run runs: {spec.dry_run})")
        elif timeout < 5:
            entry.update(status="skip", error=f"the time budget ({budget:.0f} s) was spent before this item")
        else:
            entry.update(run_item(spec.name, ctx, timeout, mp_context))
        if spec.name == "machine" and entry.get("details"):
            report["machine"] = entry["details"]
        report["items"].append(entry)
        print(f"[{index}/{len(steps)}] {spec.name:<20} {entry['status'].upper():<6} {entry.get('wall_s', 0):6.1f} s"
              + (f"  {entry['error'][:160]}" if entry.get("error") else ""), file=sys.stderr, flush=True)
        _finish(report, start)
        write_reports(report, ctx.outdir)
    from fastcsi.utils import versions

    report["versions"] = versions()
    _finish(report, start)
    write_reports(report, ctx.outdir)
    print(f"wrote {ctx.outdir / 'gpu_check.json'} and {ctx.outdir / 'gpu_check.md'}: "
          f"{report['summary']['fail']} failed, exit status {report['exit_status']}", file=sys.stderr)
    return report["exit_status"]


def _finish(report: dict, start: float) -> None:
    items = report["items"]
    report["summary"] = {status: sum(r["status"] == status for r in items) for status in ("pass", "fail", "skip", "listed")}
    report["exit_status"] = 1 if any(r["status"] == "fail" and r["gates"] for r in items) else 0
    report["total_s"] = time.monotonic() - start


if __name__ == "__main__":
    sys.exit(main())
