"""Radius graphs with periodic boundaries: the dispatcher of the radius op.

Semantics (those of fairchem/JMP ``radius_graph_pbc`` + ``get_pbc_distances`` as GemNet-OC uses them):

* an edge is a pair (source j, target i, integer image shift n) with
  ``vector = pos[j] + n @ cell[b] - pos[i]`` and ``|vector| <= cutoff`` (cutoff INCLUSIVE);
* an atom's own periodic images are neighbours, the zero-image self pair is not; two different atoms
  at the same position are neighbours (distance 0), as ase keeps them;
* periodicity is per structure and per axis (``batch.pbc``): a molecule next to a bulk crystal in one
  batch gets no images, a slab with pbc (T, T, F) gets none along its third cell vector;
* triclinic cells and cells smaller than the cutoff (many images) are handled; positions need not be
  wrapped into the cell.

Edge order (deterministic, identical for every backend): by target i, then source j, then the image
shift (n0, n1, n2) lexicographically. ``num_neighbors`` is the in-degree of each target.

The pair SEARCH (which pairs, which shifts) is decided in float64 without autograd, whatever the input
dtype, so every backend and dtype agrees on the edge set away from rounding at the cutoff itself.
``vectors`` and ``distances`` are then recomputed in torch from the indices and shifts in the input
dtype, so they are differentiable w.r.t. ``batch.pos`` and ``batch.cell`` (gradient forces, stress).

The family: ``radius_ref.py`` (oracle), ``radius_cpu.py`` (C++, csrc/radius.cpp), ``radius_triton.py``
(+ ``radius_triton_cells.py``); the record and geometry they share live in ``periodic.py``, the
``max_neighbors`` sub-selection in ``nearest.py``.
"""
from __future__ import annotations

import re

from fastcsi import _native
from fastcsi.errors import FastCSIError
from fastcsi.backend import resolve_backend, triton_usable
from fastcsi.graph.nearest import select_neighbors
from fastcsi.graph.periodic import RadiusGraph, check_inputs

__all__ = ["radius_graph"]


def _available(batch, device) -> dict:
    is_cpu = str(device) == "cpu"
    available = {"cpu": is_cpu and _native.has("radius_batch"), "triton": False, "cuda": False}
    try:
        from fastcsi.graph import radius_triton

        available["triton"] = triton_usable(device) and radius_triton.AVAILABLE
    except ImportError:  # pragma: no cover - triton missing
        pass
    return available


def radius_graph(batch, cutoff: float, max_neighbors: int | None = None, backend: str = "auto",
                 strict: bool = False, degeneracy_tolerance: float = 0.01) -> RadiusGraph:
    """All pairs within ``cutoff`` Å (inclusive) in every structure of ``batch``, with periodic images.

    ``max_neighbors`` (optional) then keeps each target's nearest neighbours with the tie rule of
    :func:`select_neighbors` (``strict``, ``degeneracy_tolerance``). ``backend``: "auto" (CUDA ->
    triton; CPU -> the C++ cell list, else the reference with a FallbackWarning), "ref", "cpu",
    "triton" (per structure: all pairs for molecules and small cells, a cell list for structures of
    512+ atoms; see ``radius_triton``). See the module docstring for the exact semantics and edge order.
    """
    try:
        return _radius_graph(batch, cutoff, max_neighbors, backend, strict, degeneracy_tolerance)
    except FastCSIError as exc:
        raise _with_structure_id(exc, batch) from None


# how every backend's input errors name a structure (csrc/radius.cpp, periodic.py, the wrappers)
_STRUCTURE = re.compile(r"structure (\d+) of the batch")


def _with_structure_id(exc: FastCSIError, batch) -> FastCSIError:
    """``exc`` with the structure's dataset id (``batch.ids``) next to its index in the batch, so that
    a refused input can be found in its file."""
    found = _STRUCTURE.search(str(exc))
    ids = getattr(batch, "ids", None) or []
    if found is None or int(found.group(1)) >= len(ids) or ids[int(found.group(1))] in (None, ""):
        return exc
    k = int(found.group(1))
    return FastCSIError(str(exc).replace(found.group(0), f"{found.group(0)} (id {ids[k]!r})", 1))


def _radius_graph(batch, cutoff, max_neighbors, backend, strict, degeneracy_tolerance) -> RadiusGraph:
    check_inputs(batch, cutoff)
    device = batch.pos.device
    # auto: Triton on CUDA devices, the C++ kernel on the CPU (never the Triton interpreter: it is a
    # correctness tool, orders of magnitude slower)
    auto_order = ("triton",) if str(device).startswith("cuda") else ("cpu",)
    name = resolve_backend("radius_graph", backend, device, _available(batch, device), auto_order)
    if name == "ref":
        from fastcsi.graph.radius_ref import radius_graph_ref

        graph = radius_graph_ref(batch, cutoff)
    elif name == "cpu":
        from fastcsi.graph.radius_cpu import radius_graph_cpu

        graph = radius_graph_cpu(batch, cutoff)
    else:
        from fastcsi.graph.radius_triton import radius_graph_triton

        graph = radius_graph_triton(batch, cutoff)
    if max_neighbors is not None:
        graph = select_neighbors(graph, max_neighbors=max_neighbors, strict=strict,
                                 degeneracy_tolerance=degeneracy_tolerance)
    return graph
