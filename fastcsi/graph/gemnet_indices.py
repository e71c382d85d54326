"""GemNet-OC index sets: triplets, mixed triplets and quadruplets over edge sets, the dispatcher of
the gemnet_indices op (the edge-set bookkeeping they start from is in ``edge_sets``).

Conventions follow JMP's GemNet-OC so that a JMP checkpoint gives the same numbers:

* An edge set is a dict with ``edge_index`` (2, E) (row 0 = source s, row 1 = target t),
  ``cell_offset`` (E, 3) (image shift of the source), ``distance`` (E,), ``vector`` (E, 3)
  (unit vector from source to target) and ``num_neighbors`` (B,) (edges per structure; the
  edges of one structure must be contiguous).
* "Adjacency row selection" (JMP's ``SparseTensor`` row indexing ``adj[idx]``) is reproduced with a
  CSR built from a stable sort of the edges by (target, source): for every selecting index ``r`` it
  yields the edges whose target is ``idx[r]`` in (source, original position) order.

Backends (``backend=``, through :func:`fastcsi.backend.resolve_backend`; all give the same tensors
bit for bit, tests/graph/test_gemnet_indices.py):

* ``ref``  gemnet_indices_ref.py: the oracle, a plain dense enumeration (O(E_out * E_in) per call).
* ``cpu``  gemnet_indices_cpu.py: numba walks over a CSR, one write per output element (CPU tensors).
* ``cuda`` gemnet_indices_cuda.py: vectorised torch on the device (sorts, prefix sums, gathers): a
  declared exception to the Triton kernel of the other op families, torch already runs these as
  device kernels.

``auto``: ``cpu`` for CPU tensors, ``cuda`` for CUDA tensors, else the reference with a
:class:`fastcsi.backend.FallbackWarning`.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util

import torch

from fastcsi.backend import resolve_backend
from fastcsi.graph.edge_sets import select_edges, symmetrize_edges, tag_filter_edges
from fastcsi.graph.ragged import inner_index, ragged_range

__all__ = [
    "ragged_range",
    "inner_index",
    "symmetrize_edges",
    "select_edges",
    "tag_filter_edges",
    "triplets",
    "mixed_triplets",
    "quadruplets",
]


@functools.cache
def _numba_available() -> bool:
    return importlib.util.find_spec("numba") is not None


def _kernel(op: str, index: torch.Tensor, backend: str):
    """The function ``<op>_<backend>`` of module ``gemnet_indices_<backend>`` chosen for ``index``'s
    device (imported lazily: numba's import is slow, and CUDA-only users never need it)."""
    device = index.device
    available = {"cpu": device.type == "cpu" and _numba_available(), "cuda": device.type == "cuda"}
    auto_order = ("cpu",) if device.type == "cpu" else ("cuda",)
    name = resolve_backend("gemnet_indices", backend, device, available, auto_order)
    return getattr(importlib.import_module(f"fastcsi.graph.gemnet_indices_{name}"), f"{op}_{name}")


def triplets(graph: dict, num_atoms: int, backend: str = "auto") -> dict:
    """All input edges b->a for each output edge c->a (b == c allowed only for distinct images,
    i.e. distinct edges). Returns ``in`` (T,), ``out`` (T,) (sorted) and ``out_agg`` (T,)."""
    return _kernel("triplets", graph["edge_index"], backend)(graph, num_atoms)


def mixed_triplets(graph_in: dict, graph_out: dict, num_atoms: int, to_outedge: bool = False,
                   return_agg_idx: bool = False, backend: str = "auto") -> dict:
    """Input edges of ``graph_in`` meeting each output edge of ``graph_out`` at its target atom
    (or at its source when ``to_outedge``), dropping pairs that are the same atom in the same image.
    ``out`` is sorted (output edge order); ``out_agg`` (with ``return_agg_idx``) numbers the input
    edges of each output edge."""
    run = _kernel("mixed_triplets", graph_in["edge_index"], backend)
    return run(graph_in, graph_out, num_atoms, to_outedge, return_agg_idx)


def quadruplets(main_graph: dict, qint_graph: dict, num_atoms: int, backend: str = "auto") -> dict:
    """Quadruplets d->b->a<-c: main edge c->a, quadruplet-graph edge b->a, main edge d->b, with
    c != d unless they are different images.

    Returns ``triplet_in`` {in: d->b, out: b->a}, ``triplet_out`` {in: b->a, out: c->a},
    ``out`` (Q,) (c->a, sorted), ``trip_in_to_quad``, ``trip_out_to_quad`` and ``out_agg`` (Q,).
    """
    return _kernel("quadruplets", main_graph["edge_index"], backend)(main_graph, qint_graph, num_atoms)
