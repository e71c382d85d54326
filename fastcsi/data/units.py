"""Unit constants (CODATA 2018) and a parser for unit strings stored in files.

Inside fastcsi: Å, eV, eV/Å. Readers multiply by these factors at the boundary.
"""
from __future__ import annotations

import math
import warnings

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


def atomic_energy_ev(z: int) -> float:
    """Approximate all-electron total energy (eV) of the neutral atom with atomic number ``z``.

    The Thomas-Fermi energy with Scott's and Schwinger's corrections,
    E = -0.768745 Z^(7/3) + Z^2/2 - 0.269900 Z^(5/3) hartree (J. Schwinger, Phys. Rev. A 24, 2353
    (1981)): within about 1% of Hartree-Fock energies from carbon on (C: -37.6 vs -37.7 Ha,
    O: -75.0 vs -74.8 Ha), 6% for helium. Enough to tell whether a number can be an energy in eV."""
    z = float(z)
    return HARTREE_EV * (-0.768745 * z ** (7 / 3) + 0.5 * z * z - 0.269900 * z ** (5 / 3))


# An all-electron energy per atom is at most a few eV per atom below that of its heaviest atom
# (the atoms' own energies dominate; bonds add a few eV): below 1.5x of it, it cannot be eV.
_BELOW_ALL_ELECTRON = 1.5
# the units a file's energies are most often in when they are not eV, most likely first
_LIKELY_UNITS = ("kcal/mol", "kJ/mol", "Ha", "meV")


class EnergyUnitWarning(UserWarning):
    """Energies read as eV that cannot be eV (far below the all-electron energy of their atoms)."""


def implausible_energy_unit(numbers, energy_ev: float, factor: float = 1.0) -> str | None:
    """The unit a stored energy is likely in when, read as ``energy_ev`` eV (after multiplying the
    stored value by ``factor``), it is not a possible energy; None when it is possible.

    Only too-negative energies are caught: energies referenced to atoms (atomization, formation)
    and pseudopotential totals are small and cannot be told from eV by size alone."""
    numbers = [int(z) for z in numbers]
    if not numbers or energy_ev is None or not math.isfinite(energy_ev):
        return None
    per_atom = energy_ev / len(numbers)
    floor = _BELOW_ALL_ELECTRON * atomic_energy_ev(max(numbers)) - 10.0  # -10 eV: the H2 molecule's margin
    if per_atom >= floor:
        return None
    stored = energy_ev / factor
    expected = sum(atomic_energy_ev(z) for z in numbers)  # the all-electron total, roughly

    def mismatch(unit):
        converted = stored * ENERGY_UNITS[_clean(unit)]
        return abs(math.log(converted / expected)) if converted < 0 else math.inf

    return min(_LIKELY_UNITS, key=mismatch)


# (directory, likely unit) already warned about: a directory of 1000 such files gets one line, not 1000
_WARNED_DIRECTORIES: set = set()


def warn_if_implausible_energy(where, numbers, energy_ev, factor: float = 1.0, unit_given: str | None = None,
                               option: str = "--energy-unit") -> bool:
    """One warning line (an :class:`EnergyUnitWarning`) when ``energy_ev`` cannot be eV; True then.
    Further files of the same directory with the same likely unit are not warned about again."""
    from pathlib import Path

    likely = implausible_energy_unit(numbers, energy_ev, factor)
    if likely is None:
        return False
    directory = (str(Path(where).resolve().parent), likely)
    if directory in _WARNED_DIRECTORIES:
        return True
    _WARNED_DIRECTORIES.add(directory)
    read_as = f"read as {unit_given} and converted" if unit_given else "read as eV"
    per_atom = energy_ev / len(numbers)
    warnings.warn(
        f"{where}: energies {read_as} give {per_atom:,.0f} eV per atom, below any all-electron energy of "
        f"these elements, so they are not in that unit; likely {likely} (pass {option} {likely})",
        EnergyUnitWarning, stacklevel=2)
    return True
