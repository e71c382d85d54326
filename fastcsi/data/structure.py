"""The one structure record every reader yields and every later stage consumes.

Units inside fastcsi: positions and cell in Å, energy in eV, forces in eV/Å. Readers convert at the
boundary (see each reader's ``units`` note).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from fastcsi.errors import FastCSIError


@dataclass
class Structure:
    """One conformation / frame / entry.

    ``cell`` is all zeros and ``pbc`` all False for molecules. ``tags`` follow the OC20 convention
    (0 subsurface, 1 surface, 2 adsorbate) and are None when the source stores none. ``class_key``
    is what class-balanced sampling balances over (formula group, reaction, system id, ...);
    ``id`` is stable across runs (file-relative, e.g. ``"C1H4N4O4/3"``).
    """

    atomic_numbers: np.ndarray  # (n,) int64
    positions: np.ndarray  # (n, 3) float64, Å
    cell: np.ndarray = field(default_factory=lambda: np.zeros((3, 3)))  # (3, 3) float64, Å, rows = lattice vectors
    pbc: np.ndarray = field(default_factory=lambda: np.zeros(3, dtype=bool))  # (3,) bool
    energy: float | None = None  # eV
    forces: np.ndarray | None = None  # (n, 3) float64, eV/Å
    targets: dict = field(default_factory=dict)  # name -> float, in the source's stated unit
    class_key: str = ""
    id: str = ""
    tags: np.ndarray | None = None  # (n,) int64

    def __post_init__(self):
        self.atomic_numbers = np.asarray(self.atomic_numbers, dtype=np.int64).reshape(-1)
        self.positions = np.asarray(self.positions, dtype=np.float64).reshape(-1, 3)
        self.cell = np.asarray(self.cell, dtype=np.float64).reshape(3, 3)
        self.pbc = np.broadcast_to(np.asarray(self.pbc, dtype=bool), (3,)).copy()
        if self.forces is not None:
            self.forces = np.asarray(self.forces, dtype=np.float64).reshape(-1, 3)
        if self.tags is not None:
            self.tags = np.asarray(self.tags, dtype=np.int64).reshape(-1)

    @property
    def n_atoms(self) -> int:
        return int(self.atomic_numbers.shape[0])

    @property
    def periodic(self) -> bool:
        return bool(self.pbc.any())

    def validate(self, where: str = "") -> "Structure":
        """Raise :class:`FastCSIError` (naming ``where``) on records no model can use."""
        label = where or self.id or "structure"
        n = self.n_atoms
        if n == 0:
            raise FastCSIError(f"{label}: structure has zero atoms")
        if self.positions.shape[0] != n:
            raise FastCSIError(
                f"{label}: {n} atomic numbers but {self.positions.shape[0]} positions"
            )
        if not np.isfinite(self.positions).all():
            raise FastCSIError(f"{label}: positions contain NaN or inf")
        if (self.atomic_numbers < 1).any() or (self.atomic_numbers > 118).any():
            raise FastCSIError(f"{label}: atomic numbers outside 1..118")
        if self.forces is not None and self.forces.shape != (n, 3):
            raise FastCSIError(f"{label}: forces have shape {self.forces.shape}, expected ({n}, 3)")
        if self.tags is not None and self.tags.shape != (n,):
            raise FastCSIError(f"{label}: tags have shape {self.tags.shape}, expected ({n},)")
        if self.pbc.any() and not np.isfinite(self.cell).all():
            raise FastCSIError(f"{label}: cell contains NaN or inf")
        if self.pbc.any() and abs(np.linalg.det(self.cell)) < 1e-8:
            raise FastCSIError(f"{label}: periodic structure with a singular cell")
        return self

    def to_ase(self):
        """An ``ase.Atoms`` with a SinglePointCalculator holding energy/forces when present."""
        from ase import Atoms
        from ase.calculators.singlepoint import SinglePointCalculator

        atoms = Atoms(numbers=self.atomic_numbers, positions=self.positions, cell=self.cell, pbc=self.pbc)
        if self.tags is not None:
            atoms.set_tags(self.tags)
        if self.energy is not None or self.forces is not None:
            atoms.calc = SinglePointCalculator(atoms, energy=self.energy, forces=self.forces)
        atoms.info.update({k: v for k, v in self.targets.items()})
        if self.class_key:
            atoms.info["class_key"] = self.class_key
        if self.id:
            atoms.info["structure_id"] = self.id
        return atoms
