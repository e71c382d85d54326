"""Triton radius graph: tiled all-pairs per structure, and the dispatch to the cell list.

Routing (``method="auto"``, what ``radius_graph(..., backend="triton")`` and ``auto`` on CUDA use):
each structure of the batch goes to ONE path. Large ones (at least ``CELL_MIN_ATOMS`` = 512 atoms
and a cell list estimated 4x cheaper than all pairs: see ``radius_triton_cells``) take the cell list
(``radius_triton_cells.py``); molecules and small or medium cells, including cells thinner than the
cutoff, take the all-pairs kernel below. ``method="cells"`` / ``"pairs"`` force one path (tests).
The two results are merged by a stable sort on the target, so the output is in the canonical order.

All-pairs algorithm: positions are wrapped into the cell (float64, torch, on the device); every
structure b gets its lexicographic list of M_b image shifts (|n_a| <= ceil(cutoff / plane_spacing_a)
+ 1 on periodic axes, the zero shift only otherwise). One program handles BLOCK_I targets of one
structure and loops over its sources in BLOCK_J tiles and over its images, writing a 0/1 byte for
every (target, source, image) triple into a per-structure segment laid out [target][source][image].
A ``torch.nonzero`` over the bytes then yields the edges directly in the canonical order (target,
source, shift). Complexity O(sum_b n_b^2 * M_b) work and bytes; work is split into chunks of at most
``MAX_MASK_BYTES`` so memory stays bounded. The distance test runs in float64, as on every backend.

Both kernels are verified only under TRITON_INTERPRET=1 on CPU tensors here (no GPU on the
development machine); they are written for CUDA devices.
"""
from __future__ import annotations

import torch

from fastcsi._native import device_budget_bytes
from fastcsi.errors import FastCSIError
from fastcsi.graph.periodic import RadiusGraph, assemble, check_wrap, image_shifts, structure_meta
from fastcsi.graph import radius_triton_cells as cells

try:
    import triton
    import triton.language as tl

    AVAILABLE = True
except ImportError:  # pragma: no cover - triton missing
    AVAILABLE = False

BLOCK_I = 16
BLOCK_J = 32
MAX_MASK_BYTES = 1 << 28

if AVAILABLE:

    @triton.jit
    def _pair_mask_kernel(
        pos_ptr,  # (N, 3) float64 wrapped positions
        item_structure_ptr,  # (P,) structure of each program
        item_first_ptr,  # (P,) first target (structure-local) of each program
        item_mask_ptr,  # (P,) byte offset of target `first` row in the mask
        atom_start_ptr,  # (B,) first atom of each structure
        natoms_ptr,  # (B,)
        nimages_ptr,  # (B,)
        image_start_ptr,  # (B,) first row of the structure's images in image_vec
        zero_image_ptr,  # (B,) index of the zero shift in the structure's image list
        image_vec_ptr,  # (sum M_b, 3) float64 Cartesian image shifts
        mask_ptr,  # int8 output
        cutoff_sq_ptr,  # (1,) float64: a Python float argument would be typed fp32 by Triton
        BLOCK_I: tl.constexpr,
        BLOCK_J: tl.constexpr,
    ):
        pid = tl.program_id(0)
        cutoff_sq = tl.load(cutoff_sq_ptr)
        b = tl.load(item_structure_ptr + pid)
        first = tl.load(item_first_ptr + pid)
        row0 = tl.load(item_mask_ptr + pid)
        start = tl.load(atom_start_ptr + b)
        n = tl.load(natoms_ptr + b)
        m_count = tl.load(nimages_ptr + b)
        image0 = tl.load(image_start_ptr + b)
        zero = tl.load(zero_image_ptr + b)
        i_local = first + tl.arange(0, BLOCK_I)
        i_valid = i_local < n
        xi = tl.load(pos_ptr + (start + i_local) * 3 + 0, mask=i_valid, other=0.0)
        yi = tl.load(pos_ptr + (start + i_local) * 3 + 1, mask=i_valid, other=0.0)
        zi = tl.load(pos_ptr + (start + i_local) * 3 + 2, mask=i_valid, other=0.0)
        for j0 in range(0, n, BLOCK_J):
            j_local = j0 + tl.arange(0, BLOCK_J)
            j_valid = j_local < n
            xj = tl.load(pos_ptr + (start + j_local) * 3 + 0, mask=j_valid, other=0.0)
            yj = tl.load(pos_ptr + (start + j_local) * 3 + 1, mask=j_valid, other=0.0)
            zj = tl.load(pos_ptr + (start + j_local) * 3 + 2, mask=j_valid, other=0.0)
            dx0 = xj[None, :] - xi[:, None]
            dy0 = yj[None, :] - yi[:, None]
            dz0 = zj[None, :] - zi[:, None]
            valid = i_valid[:, None] & j_valid[None, :]
            same = i_local[:, None] == j_local[None, :]
            rows = (i_local[:, None] - first) * n + j_local[None, :]
            for m in range(0, m_count):
                sx = tl.load(image_vec_ptr + (image0 + m) * 3 + 0)
                sy = tl.load(image_vec_ptr + (image0 + m) * 3 + 1)
                sz = tl.load(image_vec_ptr + (image0 + m) * 3 + 2)
                dx = dx0 + sx
                dy = dy0 + sy
                dz = dz0 + sz
                inside = (dx * dx + dy * dy + dz * dz) <= cutoff_sq
                keep = inside & valid & ~(same & (m == zero))
                tl.store(mask_ptr + row0 + rows * m_count + m, keep.to(tl.int8), mask=valid)


@torch.no_grad()
def search_triton(batch, cutoff: float, method: str = "auto"):
    """Kernel-level pair search: (source, target, shifts) int64 tensors on the batch's device.

    ``method``: "auto" (cell list for large structures, see the module docstring), "cells" (every
    structure through the cell list) or "pairs" (every structure through the all-pairs kernel).
    """
    if method not in ("auto", "cells", "pairs"):
        raise FastCSIError(f"radius_graph: unknown Triton method {method!r}; choose auto, cells or pairs")
    device = batch.pos.device
    cell, pbc, ptr = structure_meta(batch)
    num_structures = cell.shape[0]
    natoms = (ptr[1:] - ptr[:-1]).tolist()
    cell[~pbc.any(1)] = torch.eye(3, dtype=torch.float64)
    # wrap into the cell along periodic axes (fractional shift s: wrapped = pos + s @ cell)
    pos = batch.pos.detach().to(device, torch.float64)
    batch_index = batch.batch.to(device)
    cell_d, pbc_d = cell.to(device), pbc.to(device)
    frac = torch.einsum("nk,nkl->nl", pos, torch.linalg.inv(cell_d)[batch_index])
    wrap = torch.where(pbc_d[batch_index], -torch.floor(frac), torch.zeros_like(frac))
    check_wrap(wrap)
    wrap = wrap.to(torch.long)
    wrapped = (pos + torch.einsum("nk,nkl->nl", wrap.to(torch.float64), cell_d[batch_index])).contiguous()

    # which structures take the cell list (their fractional extent sizes the bins of free axes)
    if method == "pairs":
        candidates = []
    elif method == "cells":
        candidates = list(range(num_structures))
    else:
        candidates = [b for b in range(num_structures) if natoms[b] >= cells.CELL_MIN_ATOMS]
    chosen = {}
    if candidates:
        frac_wrapped = frac + wrap.to(torch.float64)
        lo_hi = torch.stack([_segment_reduce(frac_wrapped, batch_index, num_structures, "amin"),
                             _segment_reduce(frac_wrapped, batch_index, num_structures, "amax")]).cpu()
        chosen = cells.plan_cells(cell, pbc, natoms, lo_hi[0][candidates], lo_hi[1][candidates], cutoff,
                                  candidates, "cells" if method == "cells" else "auto")
    cell_result = None
    if chosen:
        cell_result = cells.search_cells(wrapped, frac_wrapped, wrap, batch_index, cell, pbc, ptr, cutoff, chosen)
    pair_structures = [b for b in range(num_structures) if b not in chosen]

    periodic = pbc.any(1).tolist()
    single_zero = torch.zeros((1, 3), dtype=torch.long)
    image_lists = [image_shifts(cell[b], pbc[b], cutoff, b) if periodic[b] else single_zero
                   for b in range(num_structures)]
    nimages = [len(x) for x in image_lists]
    zero_index = [int((x == 0).all(1).nonzero()[0, 0]) for x in image_lists]
    images = torch.cat(image_lists) if image_lists else torch.zeros((0, 3), dtype=torch.long)
    image_vec = torch.cat([x.to(torch.float64) @ cell[b] for b, x in enumerate(image_lists)]) if image_lists \
        else torch.zeros((0, 3), dtype=torch.float64)
    image_start = [0] * num_structures
    for b in range(1, num_structures):
        image_start[b] = image_start[b - 1] + nimages[b - 1]

    # programs: one per BLOCK_I targets; chunks of programs with bounded mask bytes
    items = []  # (structure, first target, bytes)
    budget = device_budget_bytes(device)  # a chunk holds at least one item, whatever MAX_MASK_BYTES says
    for b in pair_structures:
        row = natoms[b] * nimages[b]
        if min(BLOCK_I, natoms[b]) * row > budget:
            raise FastCSIError(f"radius_graph: structure {b} of the batch has {natoms[b]} atoms x {nimages[b]} periodic "
                               f"images, {min(BLOCK_I, natoms[b]) * row / 2**30:.3g} GiB per all-pairs tile (budget "
                               f"{budget / 2**30:.3g} GiB): its cell is far thinner than the cutoff")
        for first in range(0, natoms[b], BLOCK_I):
            items.append((b, first, min(BLOCK_I, natoms[b] - first) * row))
    meta = {name: torch.tensor(values, dtype=torch.long, device=device) for name, values in (
        ("atom_start", ptr[:-1].tolist()), ("natoms", natoms), ("nimages", nimages),
        ("image_start", image_start), ("zero", zero_index))}
    images_d, image_vec_d = images.to(device), image_vec.to(device).contiguous()
    cutoff_sq = torch.tensor([float(cutoff) ** 2], dtype=torch.float64, device=device)
    sources, targets, shifts = [], [], []
    k = 0
    while k < len(items):
        chunk, size = [], 0
        while k < len(items) and (not chunk or size + items[k][2] <= MAX_MASK_BYTES):
            chunk.append(items[k] + (size,))
            size += items[k][2]
            k += 1
        item_structure = torch.tensor([c[0] for c in chunk], dtype=torch.long, device=device)
        item_first = torch.tensor([c[1] for c in chunk], dtype=torch.long, device=device)
        item_mask = torch.tensor([c[3] for c in chunk], dtype=torch.long, device=device)
        mask = torch.zeros(size, dtype=torch.int8, device=device)
        _pair_mask_kernel[(len(chunk),)](
            wrapped, item_structure, item_first, item_mask, meta["atom_start"], meta["natoms"],
            meta["nimages"], meta["image_start"], meta["zero"], image_vec_d, mask, cutoff_sq,
            BLOCK_I=BLOCK_I, BLOCK_J=BLOCK_J, enable_fp_fusion=False,  # round as the float64 reference does
        )
        flat = mask.nonzero().flatten()
        which = torch.searchsorted(item_mask, flat, right=True) - 1
        local = flat - item_mask[which]
        b = item_structure[which]
        n_b, m_b = meta["natoms"][b], meta["nimages"][b]
        m = local % m_b
        rest = local // m_b
        target = meta["atom_start"][b] + item_first[which] + rest // n_b
        source = meta["atom_start"][b] + rest % n_b
        shift = images_d[meta["image_start"][b] + m] + wrap[source] - wrap[target]
        sources.append(source)
        targets.append(target)
        shifts.append(shift)
    if cell_result is not None:
        sources.append(cell_result[0])
        targets.append(cell_result[1])
        shifts.append(cell_result[2])
    if not sources:
        empty = torch.zeros(0, dtype=torch.long, device=device)
        return empty, empty.clone(), torch.zeros((0, 3), dtype=torch.long, device=device)
    source, target, shift = torch.cat(sources), torch.cat(targets), torch.cat(shifts)
    if cell_result is not None and len(sources) > 1:
        # each target's edges come from one path, already in canonical order: a stable sort merges
        merge = torch.sort(target, stable=True).indices
        source, target, shift = source[merge], target[merge], shift[merge]
    return source, target, shift


def _segment_reduce(values, index, size, reduce):
    """Per-structure min/max of (N, 3) values (structures without atoms get 0)."""
    out = torch.zeros((size, values.shape[1]), dtype=values.dtype, device=values.device)
    return out.scatter_reduce(0, index[:, None].expand_as(values), values, reduce, include_self=False)


def radius_graph_triton(batch, cutoff: float, method: str = "auto") -> RadiusGraph:
    """Triton :func:`fastcsi.graph.radius_graph` (no ``max_neighbors``; the dispatcher applies it).
    ``method``: "auto", "cells" or "pairs" (see :func:`search_triton`)."""
    source, target, shifts = search_triton(batch, cutoff, method)
    return assemble(batch, source, target, shifts)
