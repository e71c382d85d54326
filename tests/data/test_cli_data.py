"""`fastcsi data info/convert/sample` end to end (in-process click runner)."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from fastcsi.cli.app import cli
from fastcsi.data import open_dataset


def _run(*args):
    result = CliRunner().invoke(cli, ["data", *map(str, args)])
    assert result.exit_code == 0, result.output
    return result


def test_info_json_matches_expected(shared_data):
    entry = next(e for e in json.loads((shared_data / "generated" / "expected.json").read_text())
                 if e["file"].startswith("t1x"))
    out = json.loads(_run("info", "--json", shared_data / "generated" / entry["file"]).stdout)
    for key in ("n_structures", "n_atoms_total", "elements", "has_energy", "has_forces", "periodic", "n_classes"):
        assert out[key] == entry[key]
    text = _run("info", shared_data / "spice" / "SPICE-1.1.4_n2.hdf5").stdout
    assert "structures   55" in text and "Na:5" in text


@pytest.mark.parametrize("suffix", [".extxyz", ".db"])
def test_convert_round_trip(shared_data, tmp_path, suffix):
    src = shared_data / "generated" / "oc20" / "s2ef_pyg2" / "data.0000.lmdb"
    out = tmp_path / f"out{suffix}"
    _run("convert", src, out)
    a, b = open_dataset(src), open_dataset(out)
    assert len(a) == len(b) == 16
    for i in (0, 15):
        x, y = a[i], b[i]
        assert np.allclose(x.positions, y.positions) and x.energy == pytest.approx(y.energy)
        assert np.allclose(x.forces, y.forces) and np.array_equal(x.tags, y.tags) and np.allclose(x.cell, y.cell)
    assert b.class_keys().tolist() == a.class_keys().tolist()  # class key travels as config_type / kv pair


def test_sample_writes_indices_and_structures(shared_data, tmp_path):
    src = shared_data / "ani1" / "gdb_HC_s02.h5"
    _run("sample", src, "-n", 30, "--strategy", "balanced", "--seed", 7, "-o", tmp_path / "idx.json",
         "--write-structures", tmp_path / "chosen.extxyz")
    doc = json.loads((tmp_path / "idx.json").read_text())
    idx = np.array(doc["indices"])
    assert doc["settings"]["strategy"] == "balanced" and doc["settings"]["seed"] == 7 and "versions" in doc["settings"]
    keys = open_dataset(src).class_keys()[idx]
    assert len(idx) == 30 and sorted(np.unique(keys, return_counts=True)[1].tolist()) == [10, 10, 10]
    chosen = open_dataset(tmp_path / "chosen.extxyz")
    assert len(chosen) == 30 and chosen[0].energy == pytest.approx(open_dataset(src)[int(idx[0])].energy)
    _run("sample", src, "-n", 30, "--strategy", "balanced", "--seed", 7, "-o", tmp_path / "idx.npy")
    assert np.array_equal(np.load(tmp_path / "idx.npy"), idx)
    assert json.loads((tmp_path / "idx.npy.meta.json").read_text())["settings"]["n_selected"] == 30


def _qm9_like_frames():
    from ase.build import molecule

    frames = []
    for i, name in enumerate(("H2O", "CH4", "NH3")):
        atoms = molecule(name)
        atoms.info.update({"zpve": 0.04 + 0.001 * i, "homo": -0.3 - 0.01 * i})
        if i == 2:
            del atoms.info["homo"]
        frames.append(atoms)
    return frames


@pytest.mark.parametrize("suffix", [".extxyz", ".db"])
def test_info_lists_scalar_targets(tmp_path, suffix):
    import ase.db
    import ase.io

    path = tmp_path / f"qm9like{suffix}"
    if suffix == ".db":
        with ase.db.connect(str(path)) as db:
            for atoms in _qm9_like_frames():
                values = dict(atoms.info)
                atoms.info.clear()
                db.write(atoms, key_value_pairs=values)
    else:
        ase.io.write(path, _qm9_like_frames(), format="extxyz")
    summary = json.loads(_run("info", "--json", path).stdout)
    assert summary["targets"] == {"zpve": 3, "homo": 2}
    text = _run("info", path).stdout
    line = next(l for l in text.splitlines() if l.strip().startswith("targets"))
    assert "zpve" in line and "homo(2 of 3)" in line and "--target" in line


def test_info_lists_qm9_targets(shared_data):
    summary = json.loads(_run("info", "--json", shared_data / "qm9" / "qm9_reduced_100.extxyz").stdout)
    assert {"U0", "epsHOMO", "zpve"} <= set(summary["targets"]) and summary["targets"]["U0"] == 100
    db = json.loads(_run("info", "--json", shared_data / "qm9" / "schnetpack_test_qm9.db").stdout)
    assert db["targets"]["energy_U0"] == 20 and "homo" in db["targets"]
