"""fairchem's ASE-LMDB (``*.aselmdb``): files written here with ``ase.db.connect`` in the exact layout
fairchem's datasets use (rows with calculator results, ``data`` holding the dataset's own ids), read
through every route a user takes: the API, ``data info``/``sample``, and as a read-only copy."""
import json
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

pytest.importorskip("ase_db_backends")

sys.path.insert(0, str(Path(__file__).resolve().parent))
from format_writers import write_aselmdb  # noqa: E402

from fastcsi.cli.app import cli  # noqa: E402
from fastcsi.data import detect_format, open_dataset  # noqa: E402
from fastcsi.errors import FastCSIError  # noqa: E402


@pytest.fixture
def readonly_copy(tmp_path):
    """A read-only directory holding one written .aselmdb (as ../shared is in CI)."""
    source = write_aselmdb(tmp_path / "src.aselmdb")
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy(source, folder / "omat.aselmdb")
    os.chmod(folder / "omat.aselmdb", 0o444)
    os.chmod(folder, 0o555)
    yield folder / "omat.aselmdb"
    os.chmod(folder, 0o755)


def test_rows_read_with_labels_stress_and_the_datasets_own_system_id(readonly_copy):
    before = sorted(p.name for p in readonly_copy.parent.iterdir())
    ds = open_dataset(readonly_copy)
    assert ds.format == "aselmdb" and len(ds) == 6
    s = ds[3]
    assert s.n_atoms == 5 and s.energy == pytest.approx(-4.5) and s.forces.shape == (5, 3)
    assert [s.targets[f"stress_{c}"] for c in ("xx", "yy", "zz", "yz", "xz", "xy")] == pytest.approx(np.arange(6.0) + 3)
    assert s.class_key == "mp-1" and s.periodic and s.id == "4"  # ASE row ids start at 1
    assert "calc_id" in s.targets  # other scalars of `data` are kept as targets
    assert list(ds.class_keys()) == ["mp-0", "mp-0", "mp-1", "mp-1", "mp-2", "mp-2"]
    assert list(ds.n_atoms_per_structure()) == [2, 3, 4, 5, 2, 3]
    assert sorted(p.name for p in readonly_copy.parent.iterdir()) == before  # no lock or side file


def test_detected_by_content_without_the_suffix_and_as_a_directory_of_shards(tmp_path):
    plain = write_aselmdb(tmp_path / "x.aselmdb")
    renamed = tmp_path / "renamed.lmdb"
    shutil.copy(plain, renamed)
    assert detect_format(renamed) == "aselmdb"
    shards = tmp_path / "shards"
    shards.mkdir()
    write_aselmdb(shards / "a.aselmdb", n=3)
    write_aselmdb(shards / "b.aselmdb", n=4, seed=1)
    (shards / "b.aselmdb-lock").write_bytes(b"")  # left by a writer: not a dataset
    ds = open_dataset(shards)
    assert ds.format == "aselmdb" and len(ds) == 7 and ds[5].id == "b.aselmdb:3"


def test_class_key_conventions_omol_data_id_then_the_formula(tmp_path):
    omol = write_aselmdb(tmp_path / "omol.aselmdb", n=4,
                         data=lambda i: {"data_id": ["elytes", "biomolecules"][i % 2], "charge": 0, "spin": 1})
    assert list(open_dataset(omol).class_keys()) == ["elytes", "biomolecules", "elytes", "biomolecules"]
    bare = write_aselmdb(tmp_path / "bare.aselmdb", n=2, data=lambda i: {})
    assert list(open_dataset(bare).class_keys()) == ["Cu2", "Cu2O"]
    # key_value_pairs come first (what `ase db` queries), then data
    both = write_aselmdb(tmp_path / "both.aselmdb", n=2, key_value_pairs=lambda i: {"sid": f"kv{i}"})
    assert list(open_dataset(both).class_keys()) == ["kv0", "kv1"]


def test_data_info_and_a_balanced_sample_through_the_cli(readonly_copy, tmp_path):
    runner = CliRunner()
    result = runner.invoke(cli, ["data", "info", str(readonly_copy), "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert summary["format"] == "aselmdb" and summary["n_structures"] == 6 and summary["n_classes"] == 3
    result = runner.invoke(cli, ["data", "sample", str(readonly_copy), "-n", "3", "--strategy", "balanced",
                                 "-o", str(tmp_path / "idx.json")])
    assert result.exit_code == 0, result.output
    picked = json.loads((tmp_path / "idx.json").read_text())["indices"]
    assert sorted(open_dataset(readonly_copy).class_keys()[picked]) == ["mp-0", "mp-1", "mp-2"]


def test_a_truncated_file_and_a_damaged_row_are_one_error_naming_the_file(tmp_path):
    path = write_aselmdb(tmp_path / "x.aselmdb")
    raw = path.read_bytes()
    cut = tmp_path / "cut.aselmdb"
    cut.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FastCSIError, match="cut.aselmdb"):
        ds = open_dataset(cut)
        [ds[i] for i in range(len(ds))]


def test_force_unit_converts_the_forces_and_only_a_given_one_joins_the_fingerprint(readonly_copy):
    from fastcsi.data.units import BOHR_ANGSTROM, HARTREE_EV

    result = CliRunner().invoke(cli, ["data", "info", "--json", "--force-unit", "hartree/bohr", str(readonly_copy)])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output.strip().splitlines()[-1])
    assert "hartree/bohr" in summary["units_note"]
    plain, converted = open_dataset(readonly_copy), open_dataset(readonly_copy, force_unit="hartree/bohr")
    assert "force_unit" not in plain.options and converted.fingerprint != plain.fingerprint
    assert converted[3].forces == pytest.approx(plain[3].forces * HARTREE_EV / BOHR_ANGSTROM)
    assert converted[3].energy == pytest.approx(plain[3].energy)  # energies stay in eV


def test_index_built_in_worker_processes_matches_the_rows(tmp_path, monkeypatch):
    from fastcsi.data.index import build_indices

    monkeypatch.setenv("FASTCSI_CACHE_DIR", str(tmp_path / "cache"))
    shards = tmp_path / "shards"
    shards.mkdir()
    write_aselmdb(shards / "a.aselmdb", n=9)
    write_aselmdb(shards / "b.aselmdb", n=5, seed=1)
    ds = open_dataset(shards)
    # rows of both shards read in this process first (the forked workers inherit open connections)
    assert len(ds[0].atomic_numbers) == 2 and ds[13].class_key == "mp-2"
    report = build_indices(ds, workers=2, min_part=3)
    assert report["built"] == 2 and report["entries_built"] == 14
    again = open_dataset(shards)
    expected = [f"mp-{i // 2}" for i in range(9)] + [f"mp-{i // 2}" for i in range(5)]  # the writer's sids
    assert list(again.class_keys()) == [s.class_key for s in again] == expected
    assert list(again.n_atoms_per_structure()) == [s.n_atoms for s in again]


@pytest.mark.slow
def test_select_pretrain_finetune_predict_on_aselmdb(tmp_path):
    runner = CliRunner()
    data = write_aselmdb(tmp_path / "omat.aselmdb", n=12)
    fast = ["--model", "gemnet-oc-tiny", "--batch-size", "2", "--threads", "1", "--quiet"]
    commands = {
        "select": ["select", "--downstream", str(data), "--upstream", str(data), "--samples", "6", "--seeds", "0",
                   "-o", str(tmp_path / "sel"), "--quiet", "--threads", "1", "--max-atoms-per-batch", "8"],
        "pretrain": ["pretrain", "--data", str(data), "--samples", "6", "--epochs", "1", "-o", str(tmp_path / "pt"),
                     "--max-atoms-per-batch", "8", *fast],
        "finetune": ["finetune", "--pretrained", "none", "--data", str(data), "--split", "6,3,3", "--epochs", "1",
                     "-o", str(tmp_path / "ft"), *fast],
        "predict": ["predict", "--model", str(tmp_path / "ft"), "--data", str(data), "-o", str(tmp_path / "p.extxyz"),
                    "--quiet", "--max-atoms-per-batch", "8"],
    }
    for name, args in commands.items():
        result = runner.invoke(cli, args)
        assert result.exit_code == 0, f"{name}: {result.output}"
    from ase.io import read

    predicted = read(tmp_path / "p.extxyz", ":")
    assert len(predicted) == 12 and all("fastcsi_energy" in a.info for a in predicted)
