"""Periodic-cell geometry shared by every radius-graph backend: the :class:`RadiusGraph` record,
input checks, cell completion, image bounds, wrapping, and the differentiable edge geometry.

A module of its own so that the dispatcher (``radius.py``), the reference and the kernels all import
it and none imports another (see ``radius.py`` for the exact edge semantics and order).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from fastcsi.errors import FastCSIError

# Input limits every backend enforces (csrc/radius.cpp repeats them; tests/graph/test_kernel_limits.py
# keeps the two in step). No atomistic structure has coordinates or cell vectors beyond 100 µm:
# such numbers come from a wrong unit, and beyond them bin and image counts stop being small
# integers. MAX_IMAGES bounds the periodic images one atom pair may need (prod over periodic axes of
# 2 * image_bound + 1): 2^20 is a cell ~50x thinner than the cutoff along all three axes, where real
# cells stay below ~10^4 (a one-atom metal cell at a 12 Å cutoff: ~7000).
MAX_COORDINATE = 1e6
MAX_IMAGES = 1 << 20
_AXES = "xyz"


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
    if batch.pos.shape[0] >= 2**31:  # atom indices are int32 inside the kernels
        raise FastCSIError(f"radius_graph: a batch of {batch.pos.shape[0]} atoms (2^31 or more); use smaller batches")
    pos = batch.pos.detach()
    # numpy on the CPU: one pass, no intra-op thread pool to wake for a cheap check
    finite = bool(np.isfinite(pos.numpy()).all()) if pos.device.type == "cpu" else bool(torch.isfinite(pos).all())
    if pos.shape[0] and not finite:
        bad = int(batch.batch[~torch.isfinite(pos).all(1)][0])
        raise FastCSIError(f"radius_graph: structure {bad} of the batch has NaN or inf positions")
    _check_magnitudes(batch, pos)


def _check_magnitudes(batch, pos: torch.Tensor) -> None:
    """Positions and periodic cell entries within ±MAX_COORDINATE Å (one reduction when they are)."""
    if pos.shape[0] and float(pos.abs().max()) > MAX_COORDINATE:
        bad = int(batch.batch[(pos.abs() > MAX_COORDINATE).any(1)][0])
        mine = pos[batch.batch == bad].to(torch.float64)
        span = mine.max(0).values - mine.min(0).values
        reach = mine.abs().max(0).values
        axis = int(torch.argmax(torch.maximum(span, reach)))
        what = (f"atoms span {float(span[axis]):.2g} Å along {_AXES[axis]}" if span[axis] > MAX_COORDINATE
                else f"atoms lie {float(reach[axis]):.2g} Å from the origin along {_AXES[axis]}")
        raise FastCSIError(f"radius_graph: structure {bad} of the batch: {what} (the limit is "
                           f"{MAX_COORDINATE:.0e} Å): coordinates in the wrong unit?")
    pbc = batch.pbc.detach().reshape(-1, 3).any(1)
    if bool(pbc.any()):
        cells = batch.cell.detach().reshape(-1, 9)
        large = (cells.abs() > MAX_COORDINATE).any(1) & pbc.to(cells.device)
        if bool(large.any()):
            bad = int(large.nonzero()[0, 0])
            raise FastCSIError(f"radius_graph: structure {bad} of the batch has cell entries up to "
                               f"{float(cells[bad].abs().max()):.2g} Å (the limit is {MAX_COORDINATE:.0e} Å): "
                               "cell in the wrong unit?")


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


def image_bounds(cell: torch.Tensor, pbc: torch.Tensor, cutoff: float, index: int | None = None) -> list[int]:
    """Largest |n_a| an edge can need once positions are wrapped into [0, 1) fractional coordinates.

    The spacing between lattice planes a is 1/|column a of inv(cell)|; a wrapped pair differs by less
    than one plane spacing, so ceil(cutoff / spacing) images suffice (+1 absorbs wrap rounding).
    Raises :class:`FastCSIError` (naming structure ``index`` when given) when the pair would need
    more than MAX_IMAGES images: the products are formed in float, so no size can wrap around.
    """
    inv = torch.linalg.inv(cell)
    reach = [cutoff * float(inv[:, a].norm()) if pbc[a] else 0.0 for a in range(3)]
    images = math.prod(2.0 * (math.ceil(r) + 1) + 1 if pbc[a] else 1.0 for a, r in enumerate(reach)) \
        if all(math.isfinite(r) for r in reach) else math.inf
    if not images <= MAX_IMAGES:
        name = "a structure" if index is None else f"structure {index} of the batch"
        raise FastCSIError(f"radius_graph: {name} needs {images:.3g} periodic images per atom pair (the limit "
                           f"is {MAX_IMAGES}): its cell is far thinner than the cutoff")
    return [int(math.ceil(r)) + 1 if pbc[a] else 0 for a, r in enumerate(reach)]


def image_shifts(cell: torch.Tensor, pbc: torch.Tensor, cutoff: float, index: int | None = None) -> torch.Tensor:
    """(M, 3) int64 image shifts with |n_a| <= :func:`image_bounds` (only the zero shift for a
    non-periodic structure), in lexicographic order, so a search that tests them in this order
    yields the canonical (target, source, shift) edge order."""
    bounds = image_bounds(cell, pbc, cutoff, index) if bool(pbc.any()) else [0, 0, 0]
    grids = torch.meshgrid(*[torch.arange(-m, m + 1) for m in bounds], indexing="ij")
    return torch.stack(grids, -1).reshape(-1, 3)


def wrap_positions(pos: torch.Tensor, cell: torch.Tensor, pbc: torch.Tensor, index: int | None = None):
    """Wrap float64 ``pos`` into the cell along periodic axes: (wrapped, integer shift s) with
    wrapped = pos + s @ cell."""
    shift = torch.zeros(pos.shape, dtype=torch.long)
    if pbc.any() and pos.shape[0]:
        frac = pos @ torch.linalg.inv(cell)
        cells_away = -torch.floor(frac)
        check_wrap(cells_away[:, pbc], index)
        shift = cells_away.to(torch.long)
        shift[:, ~pbc] = 0
    return pos + shift.to(pos.dtype) @ cell, shift


# Wrap shifts are int32 in the C++ kernel; an atom 2^30 cells out has no digits left anyway.
MAX_WRAP_CELLS = 1 << 30


def check_wrap(cells_away: torch.Tensor, index: int | None = None) -> None:
    """Raise :class:`FastCSIError` when an atom lies MAX_WRAP_CELLS or more cells out of its cell
    (``cells_away``: float wrap shifts along periodic axes)."""
    if cells_away.numel() and not float(cells_away.abs().max()) < MAX_WRAP_CELLS:
        name = "a structure" if index is None else f"structure {index} of the batch"
        raise FastCSIError(f"radius_graph: {name} has an atom {float(cells_away.abs().max()):.3g} cells away "
                           "from its cell: coordinates or cell in the wrong unit?")


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
