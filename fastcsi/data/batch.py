"""Collate structures into a :class:`Batch`: atoms of all structures concatenated, with a batch
index and per-structure cell/pbc. This is the input of graph construction and of the model."""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Sequence

import numpy as np
import torch

from fastcsi.data.structure import Structure

# JMP's convention for structures without OC20 tags (molecules, bulk): every atom is tagged 2
# (adsorbate), which also makes the quadruplet graph (built for tags 1/2 only) cover them.
DEFAULT_TAG = 2


@dataclass
class Batch:
    atomic_numbers: torch.Tensor  # (N,) int64
    pos: torch.Tensor  # (N, 3) float, Å
    batch: torch.Tensor  # (N,) int64, structure index of each atom
    natoms: torch.Tensor  # (B,) int64
    cell: torch.Tensor  # (B, 3, 3) float, Å (zeros for molecules)
    pbc: torch.Tensor  # (B, 3) bool
    tags: torch.Tensor  # (N,) int64
    energy: torch.Tensor | None = None  # (B,) float, eV
    forces: torch.Tensor | None = None  # (N, 3) float, eV/Å
    targets: dict = field(default_factory=dict)  # name -> (B,) float tensor
    ids: list = field(default_factory=list)

    @property
    def num_structures(self) -> int:
        return int(self.natoms.shape[0])

    @property
    def num_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def ptr(self) -> torch.Tensor:
        """(B+1,) offsets of each structure's first atom."""
        return torch.cat([self.natoms.new_zeros(1), torch.cumsum(self.natoms, 0)])

    def to(self, device=None, dtype: torch.dtype | None = None) -> "Batch":
        """Move tensors to ``device``; cast floating tensors to ``dtype`` when given."""

        def move(value):
            if isinstance(value, torch.Tensor):
                value = value.to(device) if device is not None else value
                if dtype is not None and value.is_floating_point():
                    value = value.to(dtype)
                return value
            if isinstance(value, dict):
                return {k: move(v) for k, v in value.items()}
            return value

        return replace(self, **{f.name: move(getattr(self, f.name)) for f in fields(self)})


def collate(
    structures: Sequence[Structure],
    dtype: torch.dtype = torch.float32,
    device: torch.device | str = "cpu",
) -> Batch:
    """Concatenate ``structures`` into one :class:`Batch`.

    Energy/forces/targets are included only when every structure has them (a partially labelled
    batch would silently mix labelled and unlabelled losses).
    """
    n_atoms = [s.n_atoms for s in structures]
    numbers = np.concatenate([s.atomic_numbers for s in structures]) if structures else np.zeros(0, np.int64)
    pos = np.concatenate([s.positions for s in structures]) if structures else np.zeros((0, 3))
    tags = (
        np.concatenate(
            [s.tags if s.tags is not None else np.full(s.n_atoms, DEFAULT_TAG, np.int64) for s in structures]
        )
        if structures
        else np.zeros(0, np.int64)
    )
    cell = np.stack([s.cell for s in structures]) if structures else np.zeros((0, 3, 3))
    pbc = np.stack([s.pbc for s in structures]) if structures else np.zeros((0, 3), bool)
    batch_index = np.repeat(np.arange(len(structures)), n_atoms)

    def tensor(a, dt):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dt, device=device)

    energy = forces = None
    if structures and all(s.energy is not None for s in structures):
        energy = tensor(np.array([s.energy for s in structures], dtype=np.float64), dtype)
    if structures and all(s.forces is not None for s in structures):
        forces = tensor(np.concatenate([s.forces for s in structures]), dtype)
    targets = {}
    if structures:
        common = set(structures[0].targets)
        for s in structures[1:]:
            common &= set(s.targets)
        for name in sorted(common):
            targets[name] = tensor(np.array([float(s.targets[name]) for s in structures]), dtype)
    return Batch(
        atomic_numbers=tensor(numbers, torch.long),
        pos=tensor(pos, dtype),
        batch=tensor(batch_index, torch.long),
        natoms=tensor(np.asarray(n_atoms, dtype=np.int64), torch.long),
        cell=tensor(cell, dtype),
        pbc=tensor(pbc, torch.bool),
        tags=tensor(tags, torch.long),
        energy=energy,
        forces=forces,
        targets=targets,
        ids=[s.id for s in structures],
    )


def structure_from_atoms(atoms, index: int = 0) -> Structure:
    """An ``ase.Atoms`` -> :class:`Structure` (labels from its calculator when present)."""
    energy = forces = None
    if atoms.calc is not None:
        results = getattr(atoms.calc, "results", {})
        if results.get("energy") is not None:
            energy = float(results["energy"])
        if results.get("forces") is not None:
            forces = np.asarray(results["forces"], dtype=np.float64)
    tags = atoms.get_tags() if atoms.has("tags") else None
    return Structure(
        atomic_numbers=atoms.get_atomic_numbers(),
        positions=atoms.get_positions(),
        cell=np.asarray(atoms.get_cell()),
        pbc=atoms.get_pbc(),
        energy=energy,
        forces=forces,
        class_key=atoms.get_chemical_formula(),
        id=str(index),
        tags=tags,
    )


def batch_from_atoms(atoms_list, dtype: torch.dtype = torch.float32, device="cpu") -> Batch:
    """Build a :class:`Batch` from ``ase.Atoms`` objects (tags from ``atoms.get_tags()``)."""
    return collate([structure_from_atoms(a, i) for i, a in enumerate(atoms_list)], dtype=dtype, device=device)
