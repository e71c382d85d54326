"""Periodic-cell geometry shared by every radius-graph backend: the :class:`RadiusGraph` record,
input checks, cell completion, image bounds, wrapping, and the differentiable edge geometry.

A module of its own so that the dispatcher (``radius.py``), the reference and the kernels all import
it and none imports another (see ``radius.py`` for the exact edge semantics and order).
"""
from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np
import torch

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


def image_shifts(cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> torch.Tensor:
    """(M, 3) int64 image shifts with |n_a| <= :func:`image_bounds` (only the zero shift for a
    non-periodic structure), in lexicographic order, so a search that tests them in this order
    yields the canonical (target, source, shift) edge order."""
    bounds = image_bounds(cell, pbc, cutoff) if bool(pbc.any()) else [0, 0, 0]
    return torch.tensor(list(itertools.product(*[range(-m, m + 1) for m in bounds])), dtype=torch.long)


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
    """Build the :class:`RadiusGraph` from a pair search result (int64 tensors on any device)."""
    device = batch.pos.device
    edge_index = torch.stack([source, target]).to(device)
    cell_offsets = offsets.to(device)
    vectors, distances = edge_geometry(batch, edge_index, cell_offsets)
    num_neighbors = torch.bincount(edge_index[1], minlength=batch.pos.shape[0])
    return RadiusGraph(edge_index, cell_offsets, distances, vectors, num_neighbors)
