"""Benchmark: GemNet-OC index sets, numba walks vs the torch formulation they replaced.

fastcsi.graph.gemnet_indices (triplets, mixed triplets, quadruplets, and all of the model's
``build_graphs``): the numba walks (backend "cpu", ours) against the torch formulation (backend
"cuda" run on CPU tensors: what the walks replaced), per main edge.

Graphs: the full 6 Å graph of rattled bulk Cu fcc (triplets), and GemNet-OC's default graphs (main
12 Å / 30 neighbours, symmetrised; quadruplet graph 8 Å / 8; atom-edge graph 12 Å / 20) on rattled
Cu(111) 4x4x4 slabs. Reference: gemnet_indices_ref (a plain dense enumeration that shares no code
with the kernels); the check is bit-for-bit equality (every tensor, dtype included). The
build_graphs case compares whole graph dicts against build_graphs under
``override(gemnet_indices="ref")``. Timed round-robin by bench/harness.py; on a loaded machine
torch's thread pool inflates the torch rows (compare with --threads 1). --device cuda adds the
"cuda" backend on device copies of the same graphs to the three index-set cases.

    python bench/gemnet_indices.py [--quick] [--threads N] [--out FILE.json]
"""
from __future__ import annotations

import contextlib
import functools
import sys

from fastcsi._bench.harness import Case, Method, identical, script_main

KERNEL = "gemnet_indices"


def edge_dict(graph, batch):
    """The edge-set dict gemnet_indices takes (as GemNet-OC's build_graphs makes it)."""
    import torch

    edge_batch = batch.batch[graph.edge_index[1]]
    return {"edge_index": graph.edge_index, "cell_offset": graph.cell_offsets, "distance": graph.distances,
            "vector": -graph.vectors / graph.distances[:, None].clamp_min(1e-12), "edge_batch": edge_batch,
            "num_neighbors": torch.bincount(edge_batch, minlength=batch.num_structures)}


def bulk_graphs(rep: int) -> dict:
    import torch

    from fastcsi._bench.radius import fcc_bulk
    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.graph import radius_graph
    from fastcsi.graph.edge_sets import symmetrize_edges

    batch = batch_from_atoms([fcc_bulk(rep)], dtype=torch.float32)
    main, _ = symmetrize_edges(edge_dict(radius_graph(batch, 6.0, backend="cpu"), batch), batch.num_atoms)
    return {"batch": batch, "main": main, "atoms": batch.num_atoms}


def slab_graphs(count: int) -> dict:
    import torch
    from ase.build import fcc111

    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.graph import radius_graph, select_neighbors
    from fastcsi.graph.edge_sets import symmetrize_edges

    slab = fcc111("Cu", size=(4, 4, 4), vacuum=8.0)
    slab.rattle(0.05, seed=0)
    batch = batch_from_atoms([slab] * count, dtype=torch.float32)
    raw = radius_graph(batch, 12.0, max_neighbors=30, strict=True, backend="cpu")
    main, _ = symmetrize_edges(edge_dict(raw, batch), batch.num_atoms)
    return {"batch": batch, "main": main, "atoms": batch.num_atoms,
            "qint": edge_dict(select_neighbors(raw, cutoff=8.0, max_neighbors=8, strict=True), batch),
            "aeaint": edge_dict(select_neighbors(raw, max_neighbors=20, strict=True), batch)}


def cases(quick: bool = True, device: str = "cpu", sizes=None):
    from fastcsi.backend import override
    from fastcsi.model.gemnet_oc.configs import config, normalize_hparams
    from fastcsi.model.gemnet_oc.model import build_graphs

    ops = {
        "triplets": lambda g, backend: _op("triplets", backend)(g["main"], g["atoms"]),
        "mixed_triplets a2e": lambda g, backend: _op("mixed_triplets", backend)(g["aeaint"], g["main"], g["atoms"],
                                                                               return_agg_idx=True),
        "quadruplets": lambda g, backend: _op("quadruplets", backend)(g["main"], g["qint"], g["atoms"]),
    }
    hp = normalize_hparams(config("gemnet-oc-s"))

    def graphs_with(backend):
        def fn(g):
            if backend == "cuda":
                with torch_formulation():
                    return build_graphs(g["batch"], hp)
            with override(gemnet_indices=backend):
                return build_graphs(g["batch"], hp)
        return fn

    cuda = str(device).startswith("cuda")

    def methods(run, on_device):
        out = [Method("fastcsi numba walks (cpu)", "ours", lambda g: run(g, "cpu"), "exact"),
               Method("torch formulation (cuda backend on CPU)", "baseline", lambda g: run(g, "cuda"), "exact")]
        if on_device:  # the "cuda" backend where it is meant to run: device tensors
            out.append(Method(f"fastcsi cuda backend ({device})", "ours", lambda g: run(g["device"], "cuda"), "exact"))
        return out

    def case(name, size, inputs, op, run, reference):
        on_device = cuda and op in ops
        made = Case(KERNEL, f"{name}: {op}", size, "structures", None, "edges", None, reference, identical,
                    methods(run, on_device), repeats=3 if quick else 11)

        def build():  # throughput per main edge: the count is known once the graphs exist
            g = inputs()
            made.items = int(g["main"]["edge_index"].shape[1])
            if on_device:
                g["device"] = {k: _to(g[k], device) for k in ("main", "qint", "aeaint", "atoms") if k in g}
            return g

        made.inputs = build
        return made

    bulk_rep = 2 if quick else 3
    yield case(f"Cu fcc {bulk_rep}x{bulk_rep}x{bulk_rep}, 6 Å full graph", 1, lambda: bulk_graphs(bulk_rep),
               "triplets", ops["triplets"], lambda g: ops["triplets"](g, "ref"))
    for size in sizes or ((2,) if quick else (2, 4)):
        slabs = lambda size=size: slab_graphs(size)  # noqa: E731
        label = f"{size} Cu(111) slabs, GemNet-OC graphs"
        for op, run in ops.items():
            yield case(label, size, slabs, op, run, lambda g, run=run: run(g, "ref"))
        yield case(label, size, slabs, "build_graphs (all)", lambda g, backend: graphs_with(backend)(g),
                   graphs_with("ref"))


def _to(value, device):
    """Every tensor of a (nested) edge-set dict on ``device``."""
    if isinstance(value, dict):
        return {k: _to(v, device) for k, v in value.items()}
    return value.to(device) if hasattr(value, "to") else value


def _op(name: str, backend: str):
    """The dispatcher for "cpu" / "ref"; the "cuda" module's function itself for the torch
    formulation, which the dispatcher only picks for CUDA tensors."""
    from fastcsi.graph import gemnet_indices as gi
    from fastcsi.graph import gemnet_indices_cuda

    if backend == "cuda":
        return getattr(gemnet_indices_cuda, f"{name}_cuda")
    return functools.partial(getattr(gi, name), backend=backend)


@contextlib.contextmanager
def torch_formulation():
    """build_graphs with the torch formulation of every index set on CPU tensors (the dispatcher
    only picks it for CUDA tensors): its kernel lookup is swapped for the block."""
    import importlib

    from fastcsi.graph import gemnet_indices as gi

    original = gi._kernel
    gi._kernel = lambda op, index, backend: getattr(importlib.import_module("fastcsi.graph.gemnet_indices_cuda"),
                                                    f"{op}_cuda")
    try:
        yield
    finally:
        gi._kernel = original


if __name__ == "__main__":
    sys.exit(script_main(KERNEL, cases, __doc__))
