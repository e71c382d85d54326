"""Every shared sample is detected, opened and counted; numbers checked against expected.json
(generated files) or computed independently here with h5py / numpy / ase (real samples)."""
import json
from pathlib import Path

import h5py
import numpy as np
import pytest

from fastcsi.data.convert import summarize
from fastcsi.data import detect_format, open_dataset
from fastcsi.data.units import BOHR_ANGSTROM, HARTREE_EV, KCAL_MOL_EV
from fastcsi.errors import FastCSIError

EXPECTED_KEYS = ("n_structures", "n_atoms_total", "elements", "has_energy", "has_forces", "periodic", "n_classes")


def _expected(shared):
    return json.loads((shared / "generated" / "expected.json").read_text())


def test_generated_files_match_expected_json(shared_data):
    for entry in _expected(shared_data):
        path = shared_data / "generated" / entry["file"]
        assert detect_format(path) == entry["format"], entry["file"]
        with open_dataset(path) as ds:
            got = summarize(ds, progress=False)
        for key in EXPECTED_KEYS:
            assert got[key] == entry[key], (entry["file"], key, got[key], entry[key])


def test_every_shared_file_is_recognised(shared_data):
    structure_files = 0
    for path in sorted(p for p in shared_data.rglob("*") if p.is_file()):
        fmt = detect_format(path)  # must not raise
        assert fmt, path
        if fmt not in ("property-table", "vasp-oszicar", "document") and path.name != "rmd17_benzene_10frames.npz":
            with open_dataset(path) as ds:
                assert len(ds) > 0 and ds[0].n_atoms > 0 and ds[len(ds) - 1].n_atoms > 0
            structure_files += 1
    assert structure_files >= 40


def test_ani1x_counts_and_units(shared_data):
    path = shared_data / "ani1x" / "ani1x_n5.hdf5"
    with h5py.File(path, "r") as h5:
        rows = [(g, k) for g in h5 for k in range(h5[g]["coordinates"].shape[0])]
        natoms = sum(h5[g]["coordinates"].shape[1] for g, _ in rows)
        g0, _ = rows[0]
        e0 = h5[g0]["wb97x_dz.energy"][0] * HARTREE_EV
        f0 = h5[g0]["wb97x_dz.forces"][0] * HARTREE_EV
        e_tz = h5[g0]["wb97x_tz.energy"][0] * HARTREE_EV
    ds = open_dataset(path)
    assert ds.format == "ani1x" and len(ds) == len(rows) == 8
    assert ds.n_atoms_per_structure().sum() == natoms
    assert set(ds.class_keys()) == {g for g, _ in rows}
    s = ds[0]
    assert s.energy == pytest.approx(e0, rel=1e-12) and np.allclose(s.forces, f0)
    assert open_dataset(path, level="wb97x_tz")[0].energy == pytest.approx(e_tz, rel=1e-12)
    with pytest.raises(FastCSIError, match="levels present"):
        open_dataset(path, level="nonsense")


def test_ani1_old_layout_uses_species(shared_data):
    ds = open_dataset(shared_data / "ani1" / "gdb_HC_s02.h5")
    assert ds.format == "ani1" and len(ds) == 17109
    assert sorted(set(ds.class_keys())) == ["gdb11_s02-0", "gdb11_s02-3", "gdb11_s02-7"]
    with h5py.File(ds.path, "r") as h5:
        species = [s.decode() for s in h5["gdb11_s02/gdb11_s02-0/species"][:]]
        e = h5["gdb11_s02/gdb11_s02-0/energies"][5] * HARTREE_EV
    s = ds[5]
    assert s.forces is None and s.energy == pytest.approx(e, rel=1e-12)
    assert sorted(s.atomic_numbers.tolist()) == sorted({"C": 6, "H": 1}[x] for x in species)  # C2H6, not CO2


def test_ani2x_and_spice(shared_data):
    ani2x = open_dataset(shared_data / "ani2x" / "ani2x_minimal.hdf5")
    assert ani2x.format == "ani2x" and len(ani2x) == 5706 and ani2x.n_atoms_per_structure().sum() == 11412
    path = shared_data / "spice" / "SPICE-1.1.4_n2.hdf5"
    ds = open_dataset(path)
    assert ds.format == "spice" and len(ds) == 55 and sorted(set(ds.class_keys())) == ["103147721", "C#C.[Na+]"]
    with h5py.File(path, "r") as h5:
        g = h5["103147721"]
        pos = g["conformations"][3].astype(np.float64) * BOHR_ANGSTROM
        energy = g["dft_total_energy"][3] * HARTREE_EV
        forces = -g["dft_total_gradient"][3].astype(np.float64) * HARTREE_EV / BOHR_ANGSTROM
    s = ds[3]
    assert np.allclose(s.positions, pos) and s.energy == pytest.approx(energy) and np.allclose(s.forces, forces)


def test_npz_formats(shared_data):
    with pytest.raises(FastCSIError, match=r"rmd17_benzene_10frames.npz.*10 atoms.*12"):
        open_dataset(shared_data / "rmd17" / "rmd17_benzene_10frames.npz")
    path = shared_data / "md17" / "ethanol_ccsd_t-train.npz"
    raw = np.load(path)
    ds = open_dataset(path)
    assert ds.format == "sgdml" and len(ds) == 1000 and ds.class_keys()[0] == "ethanol_ccsd"
    s = ds[17]
    assert s.energy == pytest.approx(raw["E"][17, 0] * KCAL_MOL_EV) and np.allclose(s.forces, raw["F"][17] * KCAL_MOL_EV)


def test_ase_text_formats(shared_data):
    import ase.io

    path = shared_data / "rmd17" / "rmd17_ethanol_train_1.extxyz"
    ds = open_dataset(path)
    assert len(ds) == 1000
    for i in (0, 537, 999):  # random access through the byte-offset index equals a full ase read
        ref = ase.io.read(path, index=i)
        s = ds[i]
        assert np.array_equal(s.positions, ref.positions) and s.energy == pytest.approx(ref.get_potential_energy())
    md22 = open_dataset(shared_data / "md22" / "md22_Ac-Ala3-NHMe_5frames.xyz", energy_unit="kcal/mol")
    assert md22[0].energy == pytest.approx(-620726.002662 * KCAL_MOL_EV) and md22[0].forces.shape == (42, 3)
    qm9 = open_dataset(shared_data / "qm9" / "gdb9_xyz")
    assert qm9.format == "qm9-xyz" and len(qm9) == 10
    assert qm9[0].targets["U0"] == pytest.approx(-40.47893) and qm9[0].n_atoms == 5
    frames = ase.io.read(shared_data / "qm9" / "qm9_reduced_100.extxyz", index=":")
    ds = open_dataset(shared_data / "qm9" / "qm9_reduced_100.extxyz")
    assert len(ds) == len(frames) == 100 and ds.n_atoms_per_structure().sum() == sum(len(a) for a in frames)
    assert ds[4].targets["U0"] == pytest.approx(frames[4].info["U0"]) and ds[4].energy is None
    assert list(ds.class_keys()) == [a.get_chemical_formula() for a in frames]


def test_ase_binary_formats(shared_data):
    import ase.db

    db = shared_data / "qm9" / "schnetpack_test_qm9.db"
    ds = open_dataset(db)
    assert ds.format == "ase-db" and len(ds) == 20 == ase.db.connect(db).count()
    assert ds[0].energy is None and "energy_U0" in ds[0].targets  # row.data in Ha stays a target
    traj = open_dataset(shared_data / "oc20" / "raw_relaxation_traj")
    assert traj.format == "traj" and len(traj) == 965 and len(set(traj.class_keys())) == 10
    assert traj.n_atoms_per_structure().min() == 33 and traj.n_atoms_per_structure().max() == 97
    s = traj[0]
    assert s.tags is None and s.periodic and s.forces is not None
    adslab = open_dataset(shared_data / "oc20" / "fairchem_test_adslab_atoms.json")
    assert adslab[0].tags is not None and adslab[0].n_atoms == 34
    cifs = open_dataset(shared_data / "qmof" / "cifs")
    assert len(cifs) == 3 and cifs.n_atoms_per_structure().sum() == 282 and cifs[0].periodic
    mb = open_dataset(shared_data / "matbench" / "format_reference_only" / "matminer_test_dataframe.json.gz")
    assert mb.format == "matbench" and len(mb) == 1 and mb[0].n_atoms == 2 and mb[0].periodic


def test_non_structure_files_say_what_they_are(shared_data):
    for rel in ("qmof/qmof_opt-bandgaps.csv", "qmof/GORGOL_FSR_OSZICAR", "qmof/qmof_thermo_ehull_within_0.005.json.gz"):
        with pytest.raises(FastCSIError, match=Path(rel).name):
            open_dataset(shared_data / rel)
