"""Triton radius graph, cell-list path: large structures (periodic bulk, slabs, big clusters).

Algorithm, for the structures routed here (see :func:`plan_cells`), all of them in one launch:

1. Binning (torch, on the device). Positions are wrapped into the cell along periodic axes (done by
   the caller). Along each axis a the atoms are binned in fractional coordinates into
   ``nbins_a = floor(length_a / cutoff')`` bins (cutoff' = cutoff * (1 + 1e-6)), where length_a is the
   perpendicular height of the cell (the lattice-plane spacing, so triclinic cells need no special
   case) on a periodic axis and the atoms' extent along the plane normal on a non-periodic one.
   Every bin is thus at least one cutoff wide, measured perpendicular to its faces. At most ~2 bins
   per atom (sparse boxes stay O(n) in memory). Atoms are sorted by (bin, index), bins get a start
   pointer by a prefix sum.
2. Neighbour bins (torch). Two atoms within the cutoff are at most ``reach_a = ceil(cutoff' /
   bin_width_a)`` bins apart along axis a (1 for a cell at least one cutoff high; more when the cell
   is thinner than the cutoff: the extra offsets wrap onto further periodic images, so small cells
   need no separate rule). Offset d along a periodic axis maps to bin (b + d) mod nbins and image
   m = floor((b + d) / nbins); along a non-periodic axis an offset outside the box is dropped. Each
   bin gets its CANDIDATE list, a CSR over bins of (neighbour slot, image code): the atoms of its
   prod(2 reach + 1) neighbour bins (27 for cells above the cutoff), ~27 x atoms-per-bin entries,
   8 bytes each.
3. Kernel (Triton). One program takes up to BLOCK_I centres of one bin and walks the bin's candidate
   list in BLOCK_J tiles, testing |x_j + m @ cell - x_i|^2 <= cutoff^2 in float64 (the zero-image
   self pair excluded; the image shift m @ cell comes from a small per-structure table indexed by the
   image code). One flat candidate loop instead of a loop over neighbour bins keeps tiles full
   (bins hold ~20 atoms, tiles 64) and the interpreter fast. It runs twice: a COUNT pass writes each
   centre's in-degree; a prefix sum gives every centre its output range; the WRITE pass writes
   (target, source, image code) at fixed positions (an in-tile cumsum, no atomics), so the output
   never depends on scheduling. Compiled without FMA contraction (``enable_fp_fusion=False``), so
   the squared distance rounds as the float64 reference's does.
4. Canonical order. One sort of the unique key (target, source, image code) (torch, on the device)
   gives the edge order every backend uses (target, then source, then shift lexicographically; the
   code encodes m lexicographically and the final shift n = m + s_source - s_target is, for one pair,
   a constant offset of m). Shifts are then mapped back to the caller's unwrapped positions.

Complexity: O(n) binning plus a sort of n keys, O(n * prod(2 reach + 1) * atoms per bin) distance
tests (about 27 x 20 per atom for metals at 6 Å), O(E log E) for the final sort; memory O(E) plus
the candidate lists (~27 x 8 bytes per atom), against O(n^2 * images) work for the all-pairs
kernel. Verified here under TRITON_INTERPRET=1 on CPU tensors only (no GPU on the development
machine); the kernel is written for CUDA devices.
"""
from __future__ import annotations

import math
import os

import torch

from fastcsi._native import check_budget
from fastcsi.errors import FastCSIError
from fastcsi.graph.periodic import image_bounds
from fastcsi.graph.ragged import ragged_range

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover - triton missing
    AVAILABLE = False

# Tile shapes. On a GPU 16 centres x 64 candidates with 4 warps (8 float64 pairs per thread): ptxas
# for sm_90 reports 121 (count pass) / 168 (write pass) registers and no spills, where 32 x 64 used
# 224-255 and spilled. Not timed (no GPU here). The interpreter (tests on CPU) pays per operation,
# not per element, so it gets wide tiles: the logic is the same for every shape (all masked).
_INTERPRET = os.environ.get("TRITON_INTERPRET", "0") == "1"
BLOCK_I = 32 if _INTERPRET else 16  # centres per program (a bin one cutoff wide holds ~20 in a solid)
BLOCK_J = 256 if _INTERPRET else 64  # candidates per tile (a bin has ~27 x 20 in a dense solid)
NUM_WARPS = 4
# Bin widths and reaches are widened by this relative margin so rounding never drops a candidate;
# the final |v|^2 <= cutoff^2 test alone decides membership.
MARGIN = 1e-6
# Routing rule of ``method="auto"`` (per structure): the cell list when the structure has at least
# CELL_MIN_ATOMS atoms AND its estimated candidate tests, n * (neighbour bins) * (atoms per bin), are
# at most 1 / CELL_ADVANTAGE of the all-pairs kernel's n^2 * images. Why: below a few hundred atoms
# the all-pairs kernel is a single launch of at most ~10^7 float64 tests (microseconds on a GPU)
# while the cell path adds about fifteen small launches, a sort and three host synchronisations; the
# factor 4 pays for those and for the final sort. Both numbers are estimates, not GPU measurements
# (no GPU on the development machine): `bench/radius.py --device cuda` is where to calibrate them.
CELL_MIN_ATOMS = 512
CELL_ADVANTAGE = 4.0

if AVAILABLE:

    @triton.jit
    def _cell_pairs_kernel(
        pos_ptr,  # (A, 3) float64 wrapped positions, atoms in bin order
        atom_ptr,  # (A,) int64 global atom index of each bin-ordered slot
        bin_start_ptr,  # (total_bins + 1,) int64 first slot of each bin (bins numbered over structures)
        cand_start_ptr,  # (total_bins + 1,) int64 first candidate of each bin
        cand_slot_ptr,  # (C,) int32 slot of each candidate neighbour
        cand_code_ptr,  # (C,) int32 its image m, encoded ((m0 + H) * W + m1 + H) * W + m2 + H
        item_bin_ptr,  # (P,) int64 bin of each program
        item_first_ptr,  # (P,) int64 first centre of the program within its bin
        item_struct_ptr,  # (P,) int64 row of the program's structure in shift_ptr
        shift_ptr,  # (S, W^3, 3) float64 Cartesian shift m @ cell of every image code, per structure
        count_ptr,  # (A,) int32 out (COUNT pass): in-degree of each centre slot
        offset_ptr,  # (A,) int64 in (WRITE pass): first output edge of each centre slot
        target_ptr,  # (E,) int32 out (WRITE pass)
        source_ptr,  # (E,) int32 out
        code_ptr,  # (E,) int32 out: the image code
        cutoff_sq_ptr,  # (1,) float64: a Python float argument would be typed fp32 by Triton
        num_codes,  # W^3
        zero_code,  # code of m = 0
        WRITE: tl.constexpr,
        BLOCK_I: tl.constexpr,
        BLOCK_J: tl.constexpr,
    ):
        pid = tl.program_id(0)
        cutoff_sq = tl.load(cutoff_sq_ptr)
        bin_id = tl.load(item_bin_ptr + pid)
        first = tl.load(item_first_ptr + pid)
        shifts = shift_ptr + tl.load(item_struct_ptr + pid) * num_codes * 3
        bin_hi = tl.load(bin_start_ptr + bin_id + 1)
        cand_lo = tl.load(cand_start_ptr + bin_id)
        cand_hi = tl.load(cand_start_ptr + bin_id + 1)

        slots = tl.load(bin_start_ptr + bin_id) + first + tl.arange(0, BLOCK_I)
        i_valid = slots < bin_hi
        xi = tl.load(pos_ptr + slots * 3 + 0, mask=i_valid, other=0.0)
        yi = tl.load(pos_ptr + slots * 3 + 1, mask=i_valid, other=0.0)
        zi = tl.load(pos_ptr + slots * 3 + 2, mask=i_valid, other=0.0)
        atom_i = tl.load(atom_ptr + slots, mask=i_valid, other=-1)
        if WRITE:
            base = tl.load(offset_ptr + slots, mask=i_valid, other=0)
        # per-centre counts in int32 (a centre has < 2^31 neighbours): half the registers of int64
        running = tl.zeros([BLOCK_I], dtype=tl.int32)
        for j0 in range(cand_lo, cand_hi, BLOCK_J):
            cand = j0 + tl.arange(0, BLOCK_J)
            j_valid = cand < cand_hi
            slot_j = tl.load(cand_slot_ptr + cand, mask=j_valid, other=0).to(tl.int64)
            code = tl.load(cand_code_ptr + cand, mask=j_valid, other=0)
            # shifts come from a table (a few KB, cached) rather than decoding m: 64-bit integer
            # division is a long software sequence on GPUs and cost registers
            xj = tl.load(pos_ptr + slot_j * 3 + 0, mask=j_valid, other=0.0) + tl.load(shifts + code * 3 + 0)
            yj = tl.load(pos_ptr + slot_j * 3 + 1, mask=j_valid, other=0.0) + tl.load(shifts + code * 3 + 1)
            zj = tl.load(pos_ptr + slot_j * 3 + 2, mask=j_valid, other=0.0) + tl.load(shifts + code * 3 + 2)
            atom_j = tl.load(atom_ptr + slot_j, mask=j_valid, other=-2)
            self_pair = (atom_i[:, None] == atom_j[None, :]) & (code == zero_code)[None, :]
            dx = xj[None, :] - xi[:, None]
            dy = yj[None, :] - yi[:, None]
            dz = zj[None, :] - zi[:, None]
            keep = ((dx * dx + dy * dy + dz * dz) <= cutoff_sq) & i_valid[:, None] & j_valid[None, :]
            hits = tl.where(self_pair, 0, keep.to(tl.int32))
            if WRITE:
                where = base[:, None] + (running[:, None] + tl.cumsum(hits, axis=1) - 1).to(tl.int64)
                hit = hits > 0
                zeros = tl.zeros([BLOCK_I, BLOCK_J], dtype=tl.int32)
                tl.store(target_ptr + where, atom_i.to(tl.int32)[:, None] + zeros, mask=hit)
                tl.store(source_ptr + where, atom_j.to(tl.int32)[None, :] + zeros, mask=hit)
                tl.store(code_ptr + where, code[None, :] + zeros, mask=hit)
            running += tl.sum(hits, axis=1)
        if not WRITE:
            tl.store(count_ptr + slots, running.to(tl.int32), mask=i_valid)


def _check_budget(nbytes: int, device, what: str) -> None:
    check_budget(nbytes, device, f"radius_graph: the batch's cell-list search, for {what},",
                 "atoms at the same position, a cutoff far too large, or too many atoms per batch?")


def _sum_by(index: torch.Tensor, values: torch.Tensor, size: int) -> torch.Tensor:
    """Integer sums of ``values`` grouped by ``index`` (exact: no float weights)."""
    out = torch.zeros(size, dtype=values.dtype, device=values.device)
    return out.index_add_(0, index, values)


def pair_images(cell: torch.Tensor, pbc: torch.Tensor, cutoff: float) -> int:
    """Number of image shifts the all-pairs kernel loops over for one structure (its cost model)."""
    if not bool(pbc.any()):
        return 1
    return math.prod(2 * bound + 1 for bound in image_bounds(cell, pbc, cutoff))


def bin_geometry(cell: torch.Tensor, pbc: torch.Tensor, fmin, fmax, natoms: int, cutoff: float) -> dict:
    """Bins of one structure (float64 CPU ``cell``, completed; ``fmin``/``fmax``: the wrapped
    fractional extent of its atoms per axis). Returns nbins, reach, origin, extent (lists of 3)."""
    inv = torch.linalg.inv(cell)
    spacing = [1.0 / float(inv[:, a].norm()) for a in range(3)]
    width_needed = cutoff * (1.0 + MARGIN)
    origin, extent, nbins = [0.0] * 3, [1.0] * 3, [1] * 3
    for a in range(3):
        if not pbc[a]:
            origin[a] = float(fmin[a]) if natoms else 0.0
            extent[a] = max(float(fmax[a]) - float(fmin[a]), 0.0) if natoms else 0.0
        nbins[a] = max(1, int(math.floor(extent[a] * spacing[a] / width_needed)))
    # never more than ~2 bins per atom: sparse boxes (clusters in vacuum) stay O(n) in memory
    limit = max(8, 2 * natoms)
    while nbins[0] * nbins[1] * nbins[2] > limit:
        nbins = [max(1, x // 2) for x in nbins]
    reach = [0] * 3
    for a in range(3):
        if nbins[a] == 1 and not pbc[a]:
            continue
        bin_width = extent[a] * spacing[a] / nbins[a]
        reach[a] = int(math.ceil(width_needed / bin_width))
        if not pbc[a]:
            reach[a] = min(reach[a], nbins[a] - 1)
    return {"nbins": nbins, "reach": reach, "origin": origin, "extent": extent}


def plan_cells(cell: torch.Tensor, pbc: torch.Tensor, natoms: list[int], frac_lo, frac_hi, cutoff: float,
               candidates: list[int], method: str) -> dict:
    """Bin geometry of each candidate structure and the ones that take the cell list.

    ``method``: "cells" takes every candidate, "auto" applies the rule stated at CELL_MIN_ATOMS.
    Returns {structure index: geometry} for the structures routed to the cell list.
    """
    chosen = {}
    for row, b in enumerate(candidates):
        geometry = bin_geometry(cell[b], pbc[b], frac_lo[row], frac_hi[row], natoms[b], cutoff)
        if method == "auto":
            n = natoms[b]
            nbins, reach = geometry["nbins"], geometry["reach"]
            scanned = (2 * reach[0] + 1) * (2 * reach[1] + 1) * (2 * reach[2] + 1)
            cell_tests = n * scanned * n / (nbins[0] * nbins[1] * nbins[2])
            pair_tests = n * n * pair_images(cell[b], pbc[b], cutoff)
            if n < CELL_MIN_ATOMS or cell_tests * CELL_ADVANTAGE > pair_tests:
                continue
        chosen[b] = geometry
    return chosen


@torch.no_grad()
def search_cells(wrapped, frac, wrap, batch_index, cell, pbc, ptr, cutoff: float, structures: dict):
    """Pairs of the cell-list structures: (source, target, shifts) int64 on the device, canonical order.

    ``wrapped``/``frac``: (N, 3) float64 wrapped positions and fractional coordinates on the device;
    ``wrap``: (N, 3) int64 wrap shifts (wrapped = pos + wrap @ cell); ``cell``/``pbc``/``ptr``: the
    CPU tables of :func:`fastcsi.graph.periodic.structure_meta` (cells completed, identity for
    molecules); ``structures``: {structure index: geometry} from :func:`plan_cells`.
    """
    device = wrapped.device
    empty = torch.zeros(0, dtype=torch.long, device=device)
    order = sorted(structures)
    natoms = [int(ptr[b + 1] - ptr[b]) for b in order]
    if not order or sum(natoms) == 0:
        return empty, empty.clone(), torch.zeros((0, 3), dtype=torch.long, device=device)
    geometry = [structures[b] for b in order]
    bins_per = [g["nbins"][0] * g["nbins"][1] * g["nbins"][2] for g in geometry]
    bin_offset = [0] * len(order)
    for row in range(1, len(order)):
        bin_offset[row] = bin_offset[row - 1] + bins_per[row - 1]
    total_bins = bin_offset[-1] + bins_per[-1]
    half = max(max(g["reach"][a] // g["nbins"][a] + 1 if pbc[b][a] else 0 for a in range(3))
               for b, g in zip(order, geometry))

    def table(values, dtype=torch.long):
        return torch.tensor(values, dtype=dtype, device=device)

    nbins_t = table([g["nbins"] for g in geometry])
    reach_t = table([g["reach"] for g in geometry])
    pbc_t = table([[int(bool(x)) for x in pbc[b]] for b in order])
    width = 2 * half + 1
    m_grid = torch.stack(torch.meshgrid(*[torch.arange(-half, half + 1)] * 3, indexing="ij"), -1).reshape(-1, 3)
    shift_t = torch.stack([m_grid.to(torch.float64) @ cell[b] for b in order]).to(device).contiguous()
    origin_t = table([g["origin"] for g in geometry], torch.float64)
    extent_t = table([g["extent"] for g in geometry], torch.float64)
    bin_offset_t = table(bin_offset)

    # the atoms of the chosen structures, their structure row and their global bin
    row_of_structure = torch.full((cell.shape[0],), -1, dtype=torch.long)
    row_of_structure[torch.tensor(order)] = torch.arange(len(order))
    atom_row = row_of_structure.to(device)[batch_index]
    atoms = (atom_row >= 0).nonzero().flatten()
    atom_row = atom_row[atoms]
    extent = extent_t[atom_row]
    scaled = torch.where(extent > 0, (frac[atoms] - origin_t[atom_row]) / extent.clamp_min(1e-300),
                         torch.zeros_like(extent))
    nb = nbins_t[atom_row]
    k = torch.minimum(torch.floor(scaled * nb).to(torch.long).clamp_min(0), nb - 1)
    atom_bin = bin_offset_t[atom_row] + (k[:, 0] * nb[:, 1] + k[:, 1]) * nb[:, 2] + k[:, 2]
    by_bin = torch.sort(atom_bin, stable=True).indices  # ascending atom index inside a bin
    slot_atom = atoms[by_bin].contiguous()
    slot_pos = wrapped[slot_atom].contiguous()
    occupancy = torch.bincount(atom_bin, minlength=total_bins)
    bin_start = torch.zeros(total_bins + 1, dtype=torch.long, device=device)
    bin_start[1:] = torch.cumsum(occupancy, 0)

    # neighbour bins: every (bin, offset d) with |d_a| <= reach_a, mapped to a bin and an image m
    bin_struct = torch.repeat_interleave(torch.arange(len(order), device=device), table(bins_per))
    scanned = (2 * reach_t + 1).prod(1)
    pair_bin = torch.repeat_interleave(torch.arange(total_bins, device=device), scanned[bin_struct])
    pair_struct = bin_struct[pair_bin]
    offset_index = ragged_range(scanned[bin_struct])
    reach, nb = reach_t[pair_struct], nbins_t[pair_struct]
    w1, w2 = 2 * reach[:, 1] + 1, 2 * reach[:, 2] + 1
    d = torch.stack([offset_index // (w1 * w2), (offset_index // w2) % w1, offset_index % w2], 1) - reach
    local = pair_bin - bin_offset_t[pair_struct]
    b = torch.stack([local // (nb[:, 1] * nb[:, 2]), (local // nb[:, 2]) % nb[:, 1], local % nb[:, 2]], 1)
    t = b + d
    m = torch.where(pbc_t[pair_struct] > 0, torch.div(t, nb, rounding_mode="floor"), torch.zeros_like(t))
    t = t - m * nb
    inside = ((t >= 0) & (t < nb)).all(1)
    neighbour = bin_offset_t[pair_struct] + (t[:, 0] * nb[:, 1] + t[:, 1]) * nb[:, 2] + t[:, 2]
    image_code = ((m[:, 0] + half) * width + m[:, 1] + half) * width + m[:, 2] + half
    pair_bin, neighbour, image_code = pair_bin[inside], neighbour[inside], image_code[inside]
    # candidates of each bin: the atoms of its neighbour bins, with their image (CSR over bins)
    sizes = occupancy[neighbour]
    _check_budget(12 * int(sizes.sum()), device, "its candidate pairs")  # slot + code + bin of each
    cand_slot = (torch.repeat_interleave(bin_start[neighbour], sizes) + ragged_range(sizes)).to(torch.int32)
    cand_code = torch.repeat_interleave(image_code, sizes).to(torch.int32)
    cand_start = torch.zeros(total_bins + 1, dtype=torch.long, device=device)
    cand_start[1:] = torch.cumsum(_sum_by(pair_bin, sizes, total_bins), 0)
    # the kernel counts each centre's neighbours in int32: no bin may offer 2^31 candidates
    if total_bins and int((cand_start[1:] - cand_start[:-1]).max()) >= 2**31:
        raise FastCSIError("radius_graph: a cell-list bin has 2^31 or more candidate neighbours: atoms at the same "
                           "position, or a cutoff far too large?")

    programs = (occupancy + BLOCK_I - 1) // BLOCK_I
    item_bin = torch.repeat_interleave(torch.arange(total_bins, device=device), programs)
    item_first = ragged_range(programs) * BLOCK_I
    item_struct = bin_struct[item_bin].contiguous()
    grid = (int(item_bin.shape[0]),)

    zero_code = (half * width + half) * width + half
    counts = torch.zeros(slot_atom.shape[0], dtype=torch.int32, device=device)
    scratch = torch.zeros(1, dtype=torch.long, device=device)
    args = (slot_pos, slot_atom, bin_start, cand_start, cand_slot.contiguous(), cand_code.contiguous(),
            item_bin, item_first, item_struct, shift_t)
    cutoff_sq = torch.tensor([float(cutoff) ** 2], dtype=torch.float64, device=device)
    _cell_pairs_kernel[grid](*args, counts, scratch, scratch, scratch, scratch, cutoff_sq, width**3, zero_code,
                             WRITE=False, BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J, num_warps=NUM_WARPS,
                             enable_fp_fusion=False)
    counts = counts.to(torch.long)
    offsets = torch.cumsum(counts, 0) - counts
    num_edges = int(counts.sum())
    # int32 target/source/code, then int64 copies, sort keys and shifts: ~100 bytes per edge
    _check_budget(100 * num_edges, device, f"its {num_edges} edges")
    if num_edges == 0:
        return empty, empty.clone(), torch.zeros((0, 3), dtype=torch.long, device=device)
    target = torch.empty(num_edges, dtype=torch.int32, device=device)
    source = torch.empty_like(target)
    code = torch.empty_like(target)
    _cell_pairs_kernel[grid](*args, counts, offsets.contiguous(), target, source, code, cutoff_sq, width**3, zero_code,
                             WRITE=True, BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J, num_warps=NUM_WARPS,
                             enable_fp_fusion=False)

    target, source, code = target.long(), source.long(), code.long()
    # canonical order: (target, source, image code); one sort of a unique int64 key when it fits
    num_atoms = int(wrapped.shape[0])
    if num_atoms * num_atoms * width**3 < 2**62:
        order_edges = torch.sort((target * num_atoms + source) * width**3 + code).indices
    else:  # pragma: no cover - over ~10^9 atoms x images: two stable sorts instead
        order_edges = torch.sort(source * width**3 + code, stable=True).indices
        order_edges = order_edges[torch.sort(target[order_edges], stable=True).indices]
    target, source, code = target[order_edges], source[order_edges], code[order_edges]
    m = torch.stack([code // (width * width), (code // width) % width, code % width], 1) - half
    shifts = m + wrap[source] - wrap[target]
    return source, target, shifts
