"""The shipped demo datasets: present, matching their manifest, physically labelled, reproducible."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path
from collections import Counter

import numpy as np
import pytest

import ase.io
from fastcsi.data import demo
from fastcsi.errors import FastCSIError

TOOLS = Path(__file__).resolve().parents[2] / "tools"
sys.path.insert(0, str(TOOLS))
import make_demo_data as generator  # noqa: E402 - the generator script, not part of the package

MOLECULAR = ("upstream_organic", "upstream_reactions", "downstream_md")
SLAB = ("upstream_slabs", "downstream_catalysis")
METALS = {"Al", "Cu", "Ag", "Au", "Ni", "Pd", "Pt"}


@pytest.fixture(scope="module")
def manifest():
    return demo.load_manifest()


@pytest.fixture(scope="module")
def frames():
    return {name: ase.io.read(path, ":") for name, path in demo.demo_paths().items()}


def test_api_points_at_the_shipped_files():
    paths = demo.demo_paths()
    assert set(paths) == set(demo.FILE_NAMES)
    assert all(p.is_file() and p.parent == demo.DEMO_DIR for p in paths.values())
    assert [p.stem for p in demo.demo_upstreams()] == list(demo.UPSTREAM_NAMES)
    assert demo.demo_downstream() == paths["downstream_md"]
    assert demo.demo_downstream("downstream_catalysis") == paths["downstream_catalysis"]
    with pytest.raises(FastCSIError, match="unknown demo downstream"):
        demo.demo_downstream("upstream_bulk")


def test_total_size_is_small():
    total = sum(p.stat().st_size for p in demo.DEMO_DIR.iterdir())
    assert total < 3_000_000, f"demo data is {total / 1e6:.2f} MB"


def test_manifest_matches_files(manifest, frames):
    assert manifest["quick"] is False and manifest["seed"] == 0
    assert set(manifest["files"]) == {f"{n}.extxyz" for n in demo.FILE_NAMES}
    for name, path in demo.demo_paths().items():
        entry = manifest["files"][path.name]
        assert hashlib.sha256(path.read_bytes()).hexdigest() == entry["sha256"], path
        got = generator.summarize(frames[name])
        for key in ("n_structures", "n_atoms_total", "elements", "classes"):
            assert got[key] == entry[key], (path.name, key)
        assert entry["generator_version"] == generator.GENERATOR_VERSION
        assert entry["units"]["energy"] == "eV"


def test_sizes_fit_the_demo_plan(manifest):
    files = manifest["files"]
    for name in demo.UPSTREAM_NAMES:
        assert 150 <= files[f"{name}.extxyz"]["n_structures"] <= 400, name
        assert len(files[f"{name}.extxyz"]["classes"]) >= 8, name
    md = files["downstream_md.extxyz"]
    assert 200 <= md["n_structures"] <= 300
    # enough of each molecule for a train/val/test split
    assert min(md["classes"].values()) >= 50


def test_labels_are_finite_and_in_ev(frames):
    for name, items in frames.items():
        for i, atoms in enumerate(items):
            energy = atoms.get_potential_energy()
            forces = atoms.get_forces()
            assert np.isfinite(energy) and np.isfinite(forces).all(), (name, i)
            assert forces.shape == (len(atoms), 3)
            per_atom = energy / len(atoms)
            if name in MOLECULAR:
                # GFN2-xTB totals: -20 to -100 eV per atom here; in Hartree they would be ~27x smaller
                assert -120.0 < per_atom < -8.0, (name, i, per_atom)
            else:
                # EMT energies are relative to the elements' fcc references: a few eV per atom at most
                assert abs(per_atom) < 5.0, (name, i, per_atom)
            assert np.abs(forces).max() < 60.0, (name, i)
        # a dataset of only near-zero forces would teach nothing
        assert np.mean([np.abs(a.get_forces()).mean() for a in items]) > 0.05, name


def test_geometry_conventions(frames):
    for name, items in frames.items():
        for i, atoms in enumerate(items):
            assert atoms.info["config_type"], (name, i)
            if name in MOLECULAR:
                assert not atoms.pbc.any() and set(atoms.get_chemical_symbols()) <= {"C", "H", "N", "O"}
                assert len(atoms) <= 21
            else:
                assert atoms.pbc.all() and abs(atoms.cell.volume) > 1.0, (name, i)
            distances = atoms.get_all_distances(mic=atoms.pbc.any())[np.triu_indices(len(atoms), 1)]
            assert distances.min() > 0.5, (name, i, distances.min())


def test_slab_tags_follow_oc20(frames):
    for name in SLAB:
        for i, atoms in enumerate(frames[name]):
            assert "tags" in atoms.arrays, (name, i)
            tags = atoms.get_tags()
            symbols = np.array(atoms.get_chemical_symbols())
            assert set(tags) == {0, 1, 2}, (name, i)
            assert all(s not in METALS for s in symbols[tags == 2])
            assert all(s in METALS for s in symbols[tags < 2])
            # the surface layer lies above the subsurface layers
            assert atoms.positions[tags == 1, 2].min() > atoms.positions[tags == 0, 2].max()
    for name in set(demo.FILE_NAMES) - set(SLAB):
        assert "tags" not in frames[name][0].arrays, name


def test_catalysis_systems_differ_from_upstream_slabs(manifest):
    upstream = set(manifest["files"]["upstream_slabs.extxyz"]["classes"])
    downstream = set(manifest["files"]["downstream_catalysis.extxyz"]["classes"])
    assert upstream and downstream and not upstream & downstream


def test_emt_labels_recompute(frames):
    from ase.calculators.emt import EMT

    for name in ("upstream_slabs", "upstream_bulk", "downstream_catalysis"):
        for atoms in frames[name][:: max(1, len(frames[name]) // 4)]:
            stored_e, stored_f = atoms.get_potential_energy(), atoms.get_forces()
            probe = atoms.copy()
            probe.calc = EMT()
            assert probe.get_potential_energy() == pytest.approx(stored_e, abs=1e-6)
            np.testing.assert_allclose(probe.get_forces(), stored_f, atol=1e-6)


def test_forces_are_minus_energy_gradient(frames):
    """Finite differences on one bulk frame: the stored forces really are -dE/dx in eV/Å."""
    from ase.calculators.emt import EMT

    atoms = frames["upstream_bulk"][3].copy()
    atoms.calc = EMT()
    forces = atoms.get_forces()
    step = 1e-4
    for atom, axis in ((0, 0), (5, 2)):
        plus, minus = atoms.copy(), atoms.copy()
        plus.positions[atom, axis] += step
        minus.positions[atom, axis] -= step
        plus.calc, minus.calc = EMT(), EMT()
        numeric = -(plus.get_potential_energy() - minus.get_potential_energy()) / (2 * step)
        assert numeric == pytest.approx(forces[atom, axis], abs=1e-4)


# ----------------------------------------------------------------------------------------------
# regeneration
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_dir(tmp_path_factory):
    pytest.importorskip("tblite.ase")
    out = tmp_path_factory.mktemp("demo_quick")
    # through the script, as a user regenerates: in this process torch has already started OpenMP
    # with every core, and tblite's spinning threads would make this ~50x slower on a busy CI box
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, str(TOOLS / "make_demo_data.py"), "--out", str(out), "--quick", "--seed", "0"],
                   check=True, env=env, capture_output=True)
    return out


def _by_class(items):
    groups: dict[str, list] = {}
    for atoms in items:
        groups.setdefault(atoms.info["config_type"], []).append(atoms)
    return groups


def test_quick_regeneration_matches_shipped_prefix(quick_dir, frames):
    quick_manifest = demo.load_manifest(quick_dir)
    assert quick_manifest["quick"] is True
    for name, path in demo.demo_paths(quick_dir).items():
        quick = ase.io.read(path, ":")
        assert len(quick) == generator.QUICK_CLASSES * generator.QUICK_FRAMES, name
        shipped = _by_class(frames[name])
        for label, items in _by_class(quick).items():
            reference = shipped[label][: len(items)]
            for a, b in zip(items, reference):
                assert (a.numbers == b.numbers).all(), (name, label)
                # extxyz stores 8 decimals; MD integrates xTB forces, so it gets a looser bound
                tol = 1e-6 if name == "downstream_md" else 1e-7
                np.testing.assert_allclose(a.positions, b.positions, atol=tol, err_msg=f"{name} {label}")
                assert a.get_potential_energy() == pytest.approx(b.get_potential_energy(), abs=1e-5)
                np.testing.assert_allclose(a.get_forces(), b.get_forces(), atol=1e-4)


def test_regeneration_is_deterministic_and_seeded(quick_dir, tmp_path):
    # EMT files only: in-process xTB is slow here (see quick_dir); the xTB files are checked
    # against the shipped ones through the script above
    cheap = ["upstream_slabs", "upstream_bulk"]
    again = generator.generate(tmp_path / "again", seed=0, quick=True, only=cheap, progress=False)
    first = demo.load_manifest(quick_dir)
    for name in cheap:
        fname = f"{name}.extxyz"
        assert again["files"][fname]["sha256"] == first["files"][fname]["sha256"], name
    other = generator.generate(tmp_path / "other", seed=1, quick=True, only=["upstream_bulk"], progress=False)
    assert other["files"]["upstream_bulk.extxyz"]["sha256"] != first["files"]["upstream_bulk.extxyz"]["sha256"]


def test_generate_rejects_unknown_names(tmp_path):
    with pytest.raises(FastCSIError, match="unknown demo file"):
        generator.generate(tmp_path, only=["upstream_nothing"], progress=False)


def test_missing_tblite_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "tblite.ase", None)  # makes `from tblite.ase import ...` fail
    with pytest.raises(FastCSIError, match="tblite"):
        generator.generate(tmp_path, quick=True, only=["upstream_organic"], progress=False)
    assert not list(tmp_path.iterdir()), "nothing may be written when labels cannot be computed"


def test_module_imports_without_tblite():
    code = (
        "import sys; sys.modules['tblite'] = None; sys.modules['tblite.ase'] = None\n"
        "from fastcsi.data import demo\n"
        "assert demo.demo_downstream().is_file()\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_open_dataset_reads_demo_files(manifest):
    from fastcsi import data as fdata

    if not hasattr(fdata, "open_dataset"):
        pytest.skip("fastcsi.data.open_dataset does not exist yet")
    for name, path in demo.demo_paths().items():
        entry = manifest["files"][path.name]
        dataset = fdata.open_dataset(path)
        assert len(dataset) == entry["n_structures"], name
        assert dict(Counter(str(k) for k in dataset.class_keys())) == entry["classes"], name
        first = dataset[0]
        assert first.energy is not None and first.forces is not None, name
        assert first.periodic == entry["periodic"], name
        assert (first.tags is not None) == entry["has_tags"], name
