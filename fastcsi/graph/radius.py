"""Radius graphs with periodic boundaries: the public record, the one dispatcher and sub-selection.

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
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass

import numpy as np
import torch

from fastcsi import _native
from fastcsi.backend import resolve_backend, triton_usable
from fastcsi.errors import FastCSIError


@dataclass
class RadiusGraph:
    """Edges of a radius graph over a batch (see the module docstring for the exact semantics)."""

    edge_index: torch.Tensor  # (2, E) int64: row 0 = source j (the neighbour), row 1 = target i (the centre)
    cell_offsets: torch.Tensor  # (E, 3) int64: integer image shift n of the source atom
    distances: torch.Tensor  # (E,) float = |vectors|
    vectors: torch.Tensor  # (E, 3) float = pos[j] + n @ cell[batch[j]] - pos[i]
    num_neighbors: torch.Tensor  # (N,) int64: in-degree of each target atom

    @property
    def num_edges(self) -> int:
        return int(self.edge_index.shape[1])

    def subset(self, keep: torch.Tensor) -> "RadiusGraph":
        """The edges where boolean ``keep`` is True (order preserved, in-degrees recounted)."""
        edge_index = self.edge_index[:, keep]
        return RadiusGraph(
            edge_index=edge_index,
            cell_offsets=self.cell_offsets[keep],
            distances=self.distances[keep],
            vectors=self.vectors[keep],
            num_neighbors=torch.bincount(edge_index[1], minlength=self.num_neighbors.shape[0]),
        )


def check_inputs(batch, cutoff: float) -> None:
    """Raise :class:`FastCSIError` for inputs no backend can use (one sentence, naming the structure)."""
    if not (isinstance(cutoff, (int, float)) and math.isfinite(cutoff) and cutoff > 0):
        raise FastCSIError(f"radius_graph: cutoff must be a positive finite number of Å, got {cutoff!r}")
    if batch.pos.ndim != 2 or batch.pos.shape[1] != 3:
        raise FastCSIError(f"radius_graph: batch.pos must have shape (N, 3), got {tuple(batch.pos.shape)}")
    if batch.batch.shape[0] != batch.pos.shape[0]:
        raise FastCSIError("radius_graph: batch.batch and batch.pos have different numbers of atoms")
    pos = batch.pos.detach()
    # numpy on the CPU: one pass, no intra-op thread pool to wake for a cheap check
    finite = bool(np.isfinite(pos.numpy()).all()) if pos.device.type == "cpu" else bool(torch.isfinite(pos).all())
    if pos.shape[0] and not finite:
        bad = int(batch.batch[~torch.isfinite(pos).all(1)][0])
        raise FastCSIError(f"radius_graph: structure {bad} of the batch has NaN or inf positions")


def structure_meta(batch):
    """Per-structure float64 cell, bool pbc and atom offsets on the CPU, validated.

    Cells of partly periodic structures are completed along the non-periodic axes (so fractional
    coordinates exist); a periodic axis with a degenerate lattice vector is a user error.
    """
    cell = batch.cell.detach().to("cpu", torch.float64).reshape(-1, 3, 3).clone()
    pbc = batch.pbc.detach().to("cpu", torch.bool).reshape(-1, 3).clone()
    natoms = batch.natoms.detach().to("cpu", torch.long)
    # only periodic structures need a look (a batch of 10k molecules must not loop in Python)
    for b in pbc.any(1).nonzero().flatten().tolist():
        if not torch.isfinite(cell[b]).all():
            raise FastCSIError(f"radius_graph: structure {b} of the batch is periodic but its cell has NaN or inf")
        cell[b] = complete_cell(cell[b], pbc[b], b)
    ptr = torch.zeros(natoms.shape[0] + 1, dtype=torch.long)
    ptr[1:] = torch.cumsum(natoms, 0)
    return cell, pbc, ptr


def complete_cell(cell: torch.Tensor, pbc: torch.Tensor, index: int) -> torch.Tensor:
    """Replace non-periodic lattice rows by unit vectors orthogonal to the periodic ones.

    Along a non-periodic axis no image is taken, so its row only has to complete a basis; an
    orthogonal completion also gives the tightest image bound for the periodic axes.
    """
    cell = cell.clone()
    periodic = [a for a in range(3) if pbc[a]]
    free = [a for a in range(3) if not pbc[a]]
    scale = max(float(cell.norm(dim=1).max()), 1.0)
    if len(periodic) == 2:
        normal = torch.linalg.cross(cell[periodic[0]], cell[periodic[1]])
        if float(normal.norm()) <= 1e-10 * scale * scale:
            raise FastCSIError(f"radius_graph: structure {index} of the batch has a degenerate periodic cell")
        cell[free[0]] = normal / normal.norm()
    elif len(periodic) == 1:
        a = cell[periodic[0]]
        if float(a.norm()) <= 1e-10:
            raise FastCSIError(f"radius_graph: structure {index} of the batch has a zero periodic lattice vector")
        trial = torch.eye(3, dtype=cell.dtype)[int(torch.argmin(a.abs()))]
        u = torch.linalg.cross(a, trial)
        u = u / u.norm()
        v = torch.linalg.cross(a, u)
        cell[free[0]], cell[free[1]] = u, v / v.norm()
    if abs(float(torch.linalg.det(cell))) <= 1e-10 * scale**3:
        raise FastCSIError(f"radius_graph: structure {index} of the batch is periodic with a singular cell")
    return cell


def image_bounds(cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> list[int]:
    """Largest |n_a| an edge can need once positions are wrapped into [0, 1) fractional coordinates.

    The spacing between lattice planes a is 1/|column a of inv(cell)|; a wrapped pair differs by less
    than one plane spacing, so ceil(cutoff / spacing) images suffice (+1 absorbs wrap rounding).
    """
    inv = torch.linalg.inv(cell)
    return [int(math.ceil(cutoff * float(inv[:, a].norm()))) + 1 if pbc[a] else 0 for a in range(3)]


def wrap_positions(pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor):
    """Wrap float64 ``pos`` into the cell along periodic axes: (wrapped, integer shift s) with
    wrapped = pos + s @ cell."""
    shift = torch.zeros(pos.shape, dtype=torch.long)
    if pbc.any() and pos.shape[0]:
        frac = pos @ torch.linalg.inv(cell)
        shift = -torch.floor(frac).to(torch.long)
        shift[:, ~pbc] = 0
    return pos + shift.to(pos.dtype) @ cell, shift


def edge_geometry(batch, edge_index: torch.Tensor, cell_offsets: torch.Tensor):
    """Differentiable ``vectors``/``distances`` from indices and shifts (input dtype and device)."""
    source, target = edge_index[0], edge_index[1]
    pos = batch.pos
    vectors = pos.index_select(0, source) - pos.index_select(0, target)
    if source.numel() and bool(batch.pbc.any()):
        cell = batch.cell.to(pos.dtype)
        offsets = cell_offsets.to(pos.dtype)
        if cell.shape[0] == 1:
            vectors = vectors + offsets @ cell[0]
        else:
            per_edge = cell.index_select(0, batch.batch.index_select(0, source))  # (E, 3, 3)
            vectors = vectors + torch.bmm(offsets.unsqueeze(1), per_edge).squeeze(1)
    distances = torch.sqrt((vectors * vectors).sum(-1)) if not vectors.requires_grad else \
        torch.linalg.vector_norm(vectors, dim=-1)
    return vectors, distances


def assemble(batch, source, target, offsets) -> RadiusGraph:
    """Build the :class:`RadiusGraph` from a pair search result (CPU int64 tensors)."""
    device = batch.pos.device
    edge_index = torch.stack([source, target]).to(device)
    cell_offsets = offsets.to(device)
    vectors, distances = edge_geometry(batch, edge_index, cell_offsets)
    num_neighbors = torch.bincount(edge_index[1], minlength=batch.pos.shape[0])
    return RadiusGraph(edge_index, cell_offsets, distances, vectors, num_neighbors)


def _available(batch, device) -> dict:
    is_cpu = str(device) == "cpu"
    available = {"cpu": is_cpu and _native.has("neighbors_batch"), "triton": False, "cuda": False}
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


def select_neighbors(graph: RadiusGraph, cutoff: float | None = None, max_neighbors: int | None = None,
                     strict: bool = False, degeneracy_tolerance: float = 0.01) -> RadiusGraph:
    """Sub-select edges of an existing graph: a smaller ``cutoff`` (inclusive) and/or per-target
    nearest neighbours, as GemNet-OC takes its main, atom-edge and quadruplet graphs from one graph.

    Tie rule for ``max_neighbors = k`` (that of fairchem/JMP ``get_max_neighbors_mask``), applied
    after the cutoff, per target with more than k candidate edges:

    * ``strict=False`` (fairchem's default): keep every edge with
      ``d <= d_(k+1) + degeneracy_tolerance`` where ``d_(k+1)`` is the (k+1)-th smallest distance of
      that target. Degenerate shells are never split, so a target may keep MORE than k edges (at
      least k+1: fcc Cu with k=10 keeps all 12 first-shell neighbours). This keeps e.g. bulk energies
      invariant to the choice of unit cell.
    * ``strict=True`` (``enforce_max_neighbors_strictly``): exactly the k nearest; among equal
      distances the earlier edge in the graph order (source j, then image shift) wins, so the choice
      is deterministic (fairchem's is arbitrary).

    ``max_neighbors <= 0`` or None keeps all edges (fairchem treats a non-positive threshold so).
    The edge order is preserved.
    """
    keep = torch.ones(graph.num_edges, dtype=torch.bool, device=graph.edge_index.device)
    distances = graph.distances.detach()
    if cutoff is not None:
        if not (math.isfinite(cutoff) and cutoff > 0):
            raise FastCSIError(f"select_neighbors: cutoff must be a positive finite number of Å, got {cutoff!r}")
        keep &= distances <= cutoff
    if max_neighbors is not None and max_neighbors > 0 and graph.num_edges:
        keep &= _nearest_mask(graph.edge_index[1], distances, keep, int(max_neighbors), strict,
                              float(degeneracy_tolerance), graph.num_neighbors.shape[0])
    if bool(keep.all()):
        return graph if cutoff is None and max_neighbors is None else graph.subset(keep)
    return graph.subset(keep)


def _ranks_torch(target, d, num_atoms):
    """Rank of each edge within its target by (distance, edge position): two stable sorts."""
    num_edges = target.shape[0]
    order = torch.sort(d, stable=True).indices
    order = order[torch.sort(target[order], stable=True).indices]
    per_target = torch.bincount(target, minlength=num_atoms)
    start = torch.cumsum(per_target, 0) - per_target
    rank = torch.empty(num_edges, dtype=torch.long, device=target.device)
    rank[order] = torch.arange(num_edges, device=target.device) - start[target[order]]
    return rank


@functools.cache
def _rank_walk():
    """The numba rank walk, imported lazily (numba adds ~0.5 s to the first import); None without numba."""
    try:
        from fastcsi.graph._rank_walk import ranks_within_target
    except ImportError:  # pragma: no cover - numba missing
        return None
    return ranks_within_target


def _ranks(target, d, num_atoms):
    """:func:`_ranks_torch`, computed by a numba walk on CPU tensors (same ranks, see _rank_walk)."""
    walk = _rank_walk() if target.device.type == "cpu" else None
    if walk is not None:
        return torch.from_numpy(walk(target.contiguous().numpy(), d.contiguous().numpy(), num_atoms))
    return _ranks_torch(target, d, num_atoms)


def _nearest_mask(target, distances, candidate, k, strict, tolerance, num_atoms):
    """Boolean mask over edges implementing the tie rule of :func:`select_neighbors`."""
    d = torch.where(candidate, distances, torch.full_like(distances, float("inf")))
    rank = _ranks(target, d, num_atoms)
    if strict:
        return candidate & (rank < k)
    # distance of the (k+1)-th nearest candidate of each target (inf when it has <= k)
    threshold = torch.full((num_atoms,), float("inf"), dtype=distances.dtype, device=distances.device)
    at_k = candidate & (rank == k)
    threshold[target[at_k]] = d[at_k] + tolerance
    return candidate & (d <= threshold[target])
