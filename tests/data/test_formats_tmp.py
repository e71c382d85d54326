"""Each reader on small files written here, random access vs streaming, pickling, bad input."""
import os
import pickle

import h5py
import numpy as np
import pytest
import torch

from fastcsi.data import detect_format, iter_batches, open_dataset
from fastcsi.data.units import BOHR_ANGSTROM, HARTREE_EV, KCAL_MOL_EV
from fastcsi.errors import FastCSIError

from format_writers import RNG, _mol, write_ani1x, write_extxyz, write_lmdb, write_spice, write_t1x


def _check_stream_equals_random_access(ds):
    streamed = list(ds)
    assert len(streamed) == len(ds)
    for i, s in enumerate(streamed):
        r = ds[i]
        assert s.id == r.id and np.array_equal(s.positions, r.positions) and s.energy == r.energy
    assert np.array_equal(ds.n_atoms_per_structure(), [s.n_atoms for s in streamed])
    assert list(ds.class_keys()) == [s.class_key for s in streamed]
    with pytest.raises(IndexError):
        ds[len(ds)]
    clone = pickle.loads(pickle.dumps(ds))  # handles are dropped and reopened lazily
    assert np.array_equal(clone[len(ds) - 1].positions, ds[len(ds) - 1].positions)


def test_hdf5_layouts(tmp_path):
    ds = open_dataset(write_ani1x(tmp_path / "a.h5"))
    assert ds.format == "ani1x" and len(ds) == 5 and list(ds.class_keys()) == ["C1H4"] * 3 + ["H2O1"] * 2
    with h5py.File(ds.path) as h5:
        assert ds[4].energy == pytest.approx(h5["H2O1/wb97x_dz.energy"][1] * HARTREE_EV)
    _check_stream_equals_random_access(ds)
    sp = open_dataset(write_spice(tmp_path / "s.h5"))
    assert sp.format == "spice"
    with h5py.File(sp.path) as h5:
        assert np.allclose(sp[1].positions, h5["mol/conformations"][1] * BOHR_ANGSTROM)
        assert np.allclose(sp[1].forces, -h5["mol/dft_total_gradient"][1] * HARTREE_EV / BOHR_ANGSTROM)
    assert sp[4].energy == pytest.approx(-31.0) and np.allclose(sp[4].forces, -1.0)
    assert sp[4].positions[1, 2] == pytest.approx(0.74)
    _check_stream_equals_random_access(sp)
    t1x = open_dataset(write_t1x(tmp_path / "t.h5"))
    assert t1x.format == "t1x" and len(t1x) == 5  # reactant/product/TS are not extra structures
    assert len(open_dataset(t1x.path, split="train")) == 5
    with pytest.raises(FastCSIError, match="split 'val' not in file"):
        open_dataset(t1x.path, split="val")
    _check_stream_equals_random_access(t1x)


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_layouts(tmp_path, compressed):
    save = np.savez_compressed if compressed else np.savez
    R, F, E = _mol(6, 3), _mol(6, 3), RNG.normal(size=(6, 1))
    save(tmp_path / "m.npz", z=np.array([8, 1, 1]), R=R, F=F, E=E)
    ds = open_dataset(tmp_path / "m.npz")
    assert ds.format == "sgdml" and ds[2].energy == pytest.approx(E[2, 0] * KCAL_MOL_EV)
    assert np.allclose(ds[2].forces, F[2] * KCAL_MOL_EV) and np.allclose(ds[2].positions, R[2])
    _check_stream_equals_random_access(ds)
    save(tmp_path / "r.npz", nuclear_charges=np.array([8, 1, 1]), coords=R, energies=E[:, 0], forces=F)
    assert detect_format(tmp_path / "r.npz") == "rmd17" and len(open_dataset(tmp_path / "r.npz")) == 6


@pytest.mark.parametrize("pyg2", [True, False])
def test_lmdb_pyg_layouts_and_shards(tmp_path, pyg2):
    shard_dir = tmp_path / "shards"
    shard_dir.mkdir()
    write_lmdb(shard_dir / "data.0000.lmdb", 3, pyg2)
    write_lmdb(shard_dir / "data.0001.lmdb", 2, pyg2)
    one = open_dataset(shard_dir / "data.0000.lmdb")
    assert one.format == "lmdb" and len(one) == 3
    s = one[1]
    assert s.tags.tolist() == [0, 1, 2, 2] and s.atomic_numbers.tolist() == [29, 29, 8, 1] and s.periodic
    assert s.energy == 1.0 and list(one.class_keys()) == ["100", "101", "100"]
    both = open_dataset(shard_dir)
    assert both.format == "lmdb" and len(both) == 5 and both[4].id == "data.0001.lmdb:1"
    _check_stream_equals_random_access(both)


@pytest.mark.parametrize("layout, unpickled", [
    ({"protocol": 2}, False),  # PyG 1.x pickles: BINUNICODE keys, still read from the bytes
    ({"tensor_sid": True}, True),
    ({"natoms": "tensor"}, True),
    ({"natoms": "absent"}, True),  # atom count from the shape of atomic_numbers
    ({"tensor_sid": True, "natoms": "absent", "protocol": 2}, True),
])
def test_lmdb_header_pass_matches_full_reads_for_every_sid_and_natoms_layout(tmp_path, monkeypatch, layout, unpickled):
    from fastcsi.data.lmdb_reader import LmdbDataset

    monkeypatch.setenv("FASTCSI_CACHE_DIR", "off")  # every call below is a header pass
    calls = []
    original = LmdbDataset._unpickled_header
    monkeypatch.setattr(LmdbDataset, "_unpickled_header", lambda self, raw, i: calls.append(i) or original(self, raw, i))
    sids = [7, 300, 70_000, 300]  # BININT1, BININT2, BININT
    entries = [([8.0] + [1.0] * m, np.zeros((m + 1, 3)), None, sid) for m, sid in zip((1, 2, 4, 3), sids)]
    path = write_lmdb(tmp_path / "x.lmdb", entries=entries, **layout)
    ds = open_dataset(path)
    keys, natoms = list(ds.class_keys()), list(ds.n_atoms_per_structure())
    assert bool(calls) == unpickled
    full = [ds[i] for i in range(len(ds))]
    assert keys == [s.class_key for s in full] == [str(sid) for sid in sids]
    assert natoms == [s.n_atoms for s in full] == [2, 3, 5, 4]


def test_ase_formats_written_here(tmp_path):
    images = write_extxyz(tmp_path / "f.extxyz")
    ds = open_dataset(tmp_path / "f.extxyz")
    assert ds.format == "extxyz" and list(ds.class_keys()) == ["even", "odd", "even", "odd"]
    for i, a in enumerate(images):
        assert ds[i].energy == a.info["REF_energy"] and np.allclose(ds[i].forces, a.arrays["REF_forces"])
    _check_stream_equals_random_access(ds)
    with pytest.raises(FastCSIError, match="energy key 'nope' not found"):
        open_dataset(tmp_path / "f.extxyz", energy_key="nope")[0]
    import ase.db
    from ase.io.trajectory import Trajectory

    with ase.db.connect(tmp_path / "d.db") as db:
        for a in images:
            db.write(a, config_type=a.info["config_type"])
    db_ds = open_dataset(tmp_path / "d.db")
    assert db_ds.format == "ase-db" and len(db_ds) == 4 and db_ds.class_keys()[1] == "odd"
    _check_stream_equals_random_access(db_ds)
    with Trajectory(tmp_path / "t.traj", "w") as traj:
        for a in images:
            traj.write(a)
    tr = open_dataset(tmp_path / "t.traj")
    assert tr.format == "traj" and tr.n_atoms_per_structure().tolist() == [3, 5, 3, 5]
    _check_stream_equals_random_access(tr)


def test_iter_batches_bounded_and_with_workers(tmp_path):
    ds = open_dataset(write_ani1x(tmp_path / "a.h5"))
    batches = list(iter_batches(ds, [0, 3, 4, 1], batch_size=3, dtype=torch.float64))
    assert [b.num_structures for b in batches] == [3, 1]
    assert batches[0].ids == ["C1H4/0", "H2O1/0", "H2O1/1"] and batches[0].pos.dtype == torch.float64
    by_atoms = list(iter_batches(ds, None, batch_size=10, max_atoms=8))
    assert all(b.num_atoms <= 8 for b in by_atoms) and sum(b.num_structures for b in by_atoms) == 5
    workers = list(iter_batches(ds, None, batch_size=2, num_workers=2))
    serial = list(iter_batches(ds, None, batch_size=2))
    assert all(torch.equal(a.pos, b.pos) for a, b in zip(workers, serial)) and len(workers) == 3


def test_fingerprint_stable_and_option_sensitive(tmp_path):
    path = write_ani1x(tmp_path / "a.h5")
    assert open_dataset(path).fingerprint == open_dataset(path).fingerprint
    assert open_dataset(path).fingerprint != open_dataset(path, forces_key="none").fingerprint


# --- bad input --------------------------------------------------------------------------------
def _bad_files(tmp_path):
    files = {}
    files["missing"] = tmp_path / "nope.h5"
    (tmp_path / "garbage.bin").write_bytes(os.urandom(2048))
    files["garbage"] = tmp_path / "garbage.bin"
    good = write_ani1x(tmp_path / "good.h5").read_bytes()
    (tmp_path / "truncated.h5").write_bytes(good[: len(good) // 2])
    files["truncated hdf5"] = tmp_path / "truncated.h5"
    (tmp_path / "nan.extxyz").write_text("2\nProperties=species:S:1:pos:R:3\nH 0 0 nan\nH 0 0 0.7\n")
    files["nan coordinates"] = tmp_path / "nan.extxyz"
    (tmp_path / "zero.extxyz").write_text("0\nProperties=species:S:1:pos:R:3\n")
    files["zero atoms"] = tmp_path / "zero.extxyz"
    np.savez(tmp_path / "nokeys.npz", z=np.array([1, 1]), E=np.zeros(2))
    files["keys missing"] = tmp_path / "nokeys.npz"
    np.savez(tmp_path / "mismatch.npz", nuclear_charges=np.array([1, 1]), coords=_mol(2, 3))
    files["mismatched lengths"] = tmp_path / "mismatch.npz"
    files["evil pickle"] = write_lmdb(tmp_path / "evil.lmdb", 3, payload=pickle.dumps(os.system))
    return files


def _read_all(path):
    with open_dataset(path) as ds:
        for s in ds:
            pass


def test_bad_input_raises_fastcsi_error_naming_the_file(tmp_path):
    for label, path in _bad_files(tmp_path).items():
        with pytest.raises(FastCSIError) as info:
            _read_all(path)
        assert path.name in str(info.value), (label, str(info.value))
    with pytest.raises(FastCSIError, match=r"entry 1.*unexpected object (posix|os|nt)\.system"):
        _read_all(tmp_path / "evil.lmdb")
    with pytest.raises(FastCSIError, match="unknown format"):
        open_dataset(tmp_path / "good.h5", format="nonsense")


def test_bad_input_cli_one_line_exit_2(tmp_path):
    from click.testing import CliRunner

    from fastcsi.cli.app import cli

    runner = CliRunner()
    for label, path in _bad_files(tmp_path).items():
        result = runner.invoke(cli, ["data", "info", str(path)])
        assert result.exit_code == 2, (label, result.output)
        lines = result.stderr.strip().splitlines()
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert len(lines) == 1 and lines[0].startswith("fastcsi: error:") and path.name in lines[0], (label, lines)
        assert result.stdout == ""
