"""Unit constants (CODATA 2018) and a parser for unit strings stored in files.

Inside fastcsi: Å, eV, eV/Å. Readers multiply by these factors at the boundary.
"""
from __future__ import annotations

from fastcsi.errors import FastCSIError

HARTREE_EV = 27.211386245988  # 1 Hartree in eV (CODATA 2018)
KCAL_MOL_EV = 0.0433641043  # 1 kcal/mol in eV
KJ_MOL_EV = 0.0103642688  # 1 kJ/mol in eV
BOHR_ANGSTROM = 0.529177210903  # 1 bohr in Å (CODATA 2018)

ENERGY_UNITS = {
    "ev": 1.0,
    "hartree": HARTREE_EV,
    "ha": HARTREE_EV,
    "kcal/mol": KCAL_MOL_EV,
    "kj/mol": KJ_MOL_EV,
    "mev": 1e-3,
}
LENGTH_UNITS = {
    "angstrom": 1.0,
    "ang": 1.0,
    "a": 1.0,
    "å": 1.0,
    "bohr": BOHR_ANGSTROM,
    "nanometer": 10.0,
    "nm": 10.0,
}


def _clean(unit) -> str:
    if isinstance(unit, bytes):
        unit = unit.decode()
    return str(unit).strip().lower().replace(" ", "")


def energy_factor(unit, where: str = "") -> float:
    """Factor that converts an energy in ``unit`` to eV."""
    key = _clean(unit)
    if key not in ENERGY_UNITS:
        raise FastCSIError(f"{where}: unknown energy unit {unit!r} (known: {sorted(ENERGY_UNITS)})")
    return ENERGY_UNITS[key]


def length_factor(unit, where: str = "") -> float:
    """Factor that converts a length in ``unit`` to Å."""
    key = _clean(unit)
    if key not in LENGTH_UNITS:
        raise FastCSIError(f"{where}: unknown length unit {unit!r} (known: {sorted(LENGTH_UNITS)})")
    return LENGTH_UNITS[key]


def force_factor(unit, where: str = "") -> float:
    """Factor that converts a force (or gradient) in ``energy/length`` to eV/Å."""
    key = _clean(unit)
    if "/" not in key:
        raise FastCSIError(f"{where}: force unit {unit!r} is not of the form energy/length")
    # kcal/mol/angstrom has two slashes: the length is the last part.
    energy, length = key.rsplit("/", 1)
    return energy_factor(energy, where) / length_factor(length, where)
