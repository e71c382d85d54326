"""Energies that cannot be eV are caught (issue 25: MD22's kcal/mol read as eV without a word), and
--energy-unit / --force-unit reach the readers, the outputs and the fingerprint."""
import json
import warnings

import numpy as np
import pytest
from ase.build import molecule
from click.testing import CliRunner

from fastcsi.cli.app import cli
from fastcsi.data import open_dataset
from fastcsi.data.units import (BOHR_ANGSTROM, HARTREE_EV, KCAL_MOL_EV, KJ_MOL_EV, EnergyUnitWarning,
                                atomic_energy_ev, implausible_energy_unit)


@pytest.fixture(autouse=True)
def _fresh_warning_memory(monkeypatch):
    # the once-per-directory memory is per process: each test starts without it
    import fastcsi.data.units

    monkeypatch.setattr(fastcsi.data.units, "_WARNED_DIRECTORIES", set())


@pytest.mark.parametrize("z, hartree_fock", [(6, -37.689), (8, -74.809), (29, -1638.96), (79, -17865.4)])
def test_atomic_energy_is_close_to_hartree_fock(z, hartree_fock):
    # Hartree-Fock ground-state energies of the neutral atoms (Clementi-Roetti / Koga tables), in Ha
    assert atomic_energy_ev(z) / HARTREE_EV == pytest.approx(hartree_fock, rel=0.02)


def _all_electron_ev(numbers):
    # a plausible all-electron total: the atoms' energies and a few eV of binding per atom
    return sum(atomic_energy_ev(z) for z in numbers) - 3.0 * len(numbers)


@pytest.mark.parametrize("unit, factor", [("kcal/mol", KCAL_MOL_EV), ("kJ/mol", KJ_MOL_EV), ("meV", 1e-3)])
def test_energies_in_another_unit_are_named(unit, factor):
    numbers = molecule("CH3CH2OH").numbers
    stored = _all_electron_ev(numbers) / factor  # the file's number, in `unit`
    assert implausible_energy_unit(numbers, stored) == unit
    assert implausible_energy_unit(numbers, stored * factor) is None  # converted: fine


def test_plausible_energies_pass():
    water, copper = molecule("H2O").numbers, np.full(8, 29)
    assert implausible_energy_unit(water, _all_electron_ev(water)) is None  # all-electron eV
    assert implausible_energy_unit(copper, -3.7 * 8) is None  # pseudopotential DFT, eV
    assert implausible_energy_unit([1, 1], -31.7) is None  # H2, the tightest case
    assert implausible_energy_unit(water, -76.4) is None  # Ha read as eV cannot be told apart by size


def _write_kcal_file(path):
    import ase.io
    from ase.calculators.singlepoint import SinglePointCalculator

    frames = []
    for shift in (0.0, 0.01):
        atoms = molecule("CH3CH2OH")
        atoms.positions += shift
        energy = _all_electron_ev(atoms.numbers) / KCAL_MOL_EV
        forces = np.full((len(atoms), 3), 0.5)  # hartree/bohr in the test with --force-unit
        atoms.calc = SinglePointCalculator(atoms, energy=energy, forces=forces)
        frames.append(atoms)
    ase.io.write(path, frames, format="extxyz")
    return energy


def _invoke_showing_warnings(*args):
    """The CLI as a user runs it: Python warnings printed on (captured) stderr, not recorded by pytest."""
    import sys

    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.showwarning = lambda message, category, filename, lineno, file=None, line=None: sys.stderr.write(
            warnings.formatwarning(message, category, filename, lineno, line))
        return CliRunner().invoke(cli, [str(a) for a in args])


def test_data_info_warns_once_and_the_unit_options_apply(tmp_path):
    path = tmp_path / "kcal.extxyz"
    energy_kcal = _write_kcal_file(path)
    runner = CliRunner()
    plain = _invoke_showing_warnings("data", "info", path)
    assert plain.exit_code == 0, plain.output
    warned = [line for line in plain.stderr.splitlines() if line.startswith("fastcsi: warning:")]
    assert len(warned) == 1 and "likely kcal/mol" in warned[0] and "--energy-unit kcal/mol" in warned[0]
    summary = json.loads(runner.invoke(cli, ["data", "info", "--json", str(path)]).stdout)
    assert summary["energy_unit_likely"] == "kcal/mol"

    given = _invoke_showing_warnings("data", "info", "--json", "--energy-unit", "kcal/mol", "--force-unit",
                                     "hartree/bohr", path)
    assert given.exit_code == 0 and "warning" not in given.stderr
    converted = json.loads(given.stdout)
    assert converted["energy_unit_likely"] is None and "hartree/bohr" in converted["units_note"]
    assert converted["fingerprint"] != summary["fingerprint"]  # the options are part of the fingerprint
    ds = open_dataset(path, energy_unit="kcal/mol", force_unit="hartree/bohr")
    assert ds[0].energy == pytest.approx(energy_kcal * KCAL_MOL_EV)
    assert ds[0].forces[0, 0] == pytest.approx(0.5 * HARTREE_EV / BOHR_ANGSTROM)
    # a file opened without --force-unit keeps the fingerprint it had before the option existed
    assert "force_unit" not in open_dataset(path).options
    # without --force-unit the forces follow the energy unit per Å
    assert open_dataset(path, energy_unit="kcal/mol")[0].forces[0, 0] == pytest.approx(0.5 * KCAL_MOL_EV)


def test_the_warning_is_a_python_warning_for_the_api(tmp_path):
    path = tmp_path / "kcal.extxyz"
    _write_kcal_file(path)
    ds = open_dataset(path)
    with pytest.warns(EnergyUnitWarning, match="likely kcal/mol"):
        ds[0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        ds[1]  # once per dataset


def test_md22_sample_is_flagged(shared_data):
    path = shared_data / "md22" / "md22_Ac-Ala3-NHMe_5frames.xyz"
    result = _invoke_showing_warnings("data", "info", path)
    assert result.exit_code == 0 and "likely kcal/mol" in result.stderr
    fixed = _invoke_showing_warnings("data", "info", "--energy-unit", "kcal/mol", path)
    assert "warning" not in fixed.stderr


def test_a_directory_of_such_files_gets_one_line(tmp_path):
    from fastcsi.data import open_dataset as open_any

    for name in ("a.extxyz", "b.extxyz", "c.extxyz"):
        _write_kcal_file(tmp_path / name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ds = open_any(tmp_path)
        for i in range(len(ds)):
            ds[i]
    assert len([w for w in caught if issubclass(w.category, EnergyUnitWarning)]) == 1
