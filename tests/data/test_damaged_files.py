"""Damaged files are refused in one line, never read short (issue: silently short datasets).

Copies of sample files with bytes zeroed in place (same size), as a bad disk or an interrupted copy
leaves them. Each read either gives every structure the intact file gives, or raises one
FastCSIError naming the file; ``skip_unreadable`` reads the rest and lists what it left. Every test
runs on files written here (the core, no ../shared needed) and on the real samples in ../shared/data.
"""
import json
import sys
import warnings

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastcsi.cli.app import cli
from fastcsi.data import open_dataset
from fastcsi.data.base import UnreadableSkipped
from fastcsi.errors import FastCSIError

sys.path.insert(0, str(Path(__file__).resolve().parent))
from format_writers import write_ani1x, write_extxyz, write_lmdb, write_t1x  # noqa: E402

SHARED_SAMPLES = {"ani1x": "ani1x/ani1x_n5.hdf5", "t1x": "generated/t1x/transition1x_sample.h5",
                  "lmdb": "generated/oc20/s2ef_pyg2/data.0000.lmdb", "extxyz": "generated/extxyz/ref_keys.extxyz"}
ORIGINS = ["generated", "shared"]
ANI1X_MOLECULES = (("C1H4", 3, [6, 1, 1, 1, 1]), ("H2O1", 2, [8, 1, 1]), ("H3N1", 2, [7, 1, 1, 1]),
                   ("C2H6", 2, [6, 6, 1, 1, 1, 1, 1, 1]))


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    root = tmp_path_factory.mktemp("samples")
    extxyz = root / "ref_keys.extxyz"
    write_extxyz(extxyz, 6)
    return {"ani1x": write_ani1x(root / "ani1x.hdf5", ANI1X_MOLECULES), "t1x": write_t1x(root / "t1x.h5"),
            "lmdb": write_lmdb(root / "data.0000.lmdb", 6), "extxyz": extxyz}


@pytest.fixture(params=ORIGINS)
def sample(request):
    """name -> path of an intact sample file, written here or from ../shared/data."""
    if request.param == "generated":
        return request.getfixturevalue("generated")
    shared = request.getfixturevalue("shared_data")
    return {name: shared / rel for name, rel in SHARED_SAMPLES.items()}


def _damaged(tmp_path, source, offset, width, name="damaged"):
    raw = bytearray(source.read_bytes())
    raw[offset:offset + width] = bytes(width)
    path = tmp_path / f"{name}{source.suffix}"
    path.write_bytes(bytes(raw))
    return path


def _nth(source, needle: bytes, n: int) -> int:
    raw, at = source.read_bytes(), -1
    for _ in range(n):
        at = raw.index(needle, at + 1)
    return at


def _read_all(path, **options):
    ds = open_dataset(path, **options)
    return ds, [s.id for s in ds]


def test_a_group_whose_dataset_name_is_damaged_is_an_error_not_a_shorter_dataset(tmp_path, sample):
    # the second group's link name 'coordinates' zeroed: h5py then says the group has no such dataset,
    # and a reader that skips groups without it would read the other groups without a word
    ani1x = sample["ani1x"]
    path = _damaged(tmp_path, ani1x, _nth(ani1x, b"coordinates", 2), 4)
    with pytest.raises(FastCSIError, match=r"damaged\.hdf5: HDF5 group '.+' holds no 'coordinates'.*--skip-unreadable"):
        open_dataset(path)


def test_skip_unreadable_reads_the_rest_warns_and_lists_the_groups(tmp_path, sample):
    ani1x = sample["ani1x"]
    path = _damaged(tmp_path, ani1x, _nth(ani1x, b"coordinates", 2), 4)
    _, intact = _read_all(ani1x)
    with pytest.warns(UnreadableSkipped, match="skipped 1 unreadable group"):
        ds, ids = _read_all(path, skip_unreadable=True)
    assert len(ds.skipped) == 1 and 0 < len(ids) < len(intact)
    assert set(ids) <= set(intact) and not any(i.startswith(ds.skipped[0] + "/") for i in ids)
    assert open_dataset(ani1x).fingerprint != ds.fingerprint  # other cache keys than a full read

    result = CliRunner().invoke(cli, ["data", "info", str(path), "--skip-unreadable", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout.strip().splitlines()[-1])
    assert summary["skipped_unreadable"] == ds.skipped and summary["n_structures"] == len(ids)


def test_damaged_group_through_the_cli_is_one_line_exit_2(tmp_path, sample):
    ani1x = sample["ani1x"]
    path = _damaged(tmp_path, ani1x, _nth(ani1x, b"atomic_numbers", 2) - 40, 200)
    result = CliRunner().invoke(cli, ["data", "info", str(path)])
    assert result.exit_code == 2
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastcsi: error: ") and str(path) in lines[0]


@pytest.mark.parametrize("name", ["ani1x", "t1x"])
def test_zeroed_bytes_anywhere_never_read_short_and_never_traceback(tmp_path, sample, name):
    source = sample[name]
    _, intact = _read_all(source)
    size = source.stat().st_size
    rng = np.random.default_rng(7)
    outcomes = {"full": 0, "refused": 0}
    for k in range(40):
        width = int(rng.choice([4, 16, 64, 256]))
        path = _damaged(tmp_path, source, int(rng.integers(0, size - width)), width, name=f"d{k}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # a reader that leaves something out must not be quiet
                _, ids = _read_all(path)
        except FastCSIError as exc:
            assert str(path) in str(exc)
            outcomes["refused"] += 1
            continue
        assert ids == intact, f"{path}: read {len(ids)} of {len(intact)} structures without an error"
        outcomes["full"] += 1
    assert outcomes["refused"] > 0  # the scan did hit structure it depends on


def test_other_formats_refuse_damaged_entries_rather_than_skip(tmp_path, sample):
    # LMDB entries, extxyz frames and ASE db rows are read on demand: damage is an error at the
    # entry (naming it), never a shorter dataset
    for source in (sample["lmdb"], sample["extxyz"]):
        _, intact = _read_all(source)
        size = source.stat().st_size
        rng = np.random.default_rng(3)
        for k in range(25):
            width = int(rng.choice([8, 64, 512]))
            path = _damaged(tmp_path, source, int(rng.integers(0, size - width)), width, name=f"{source.stem}{k}")
            try:
                _, ids = _read_all(path)
            except FastCSIError:
                continue
            assert len(ids) == len(intact), f"{path}: {len(ids)} of {len(intact)} structures"


def test_unknown_format_hint_names_the_cli_option(tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(bytes(range(256)) * 4)
    result = CliRunner().invoke(cli, ["data", "info", str(junk)])
    assert result.exit_code == 2 and "--format" in result.stderr and "format=" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_unreadable_input_is_one_line(tmp_path):
    import os

    target = "/proc/1/root"
    try:
        os.stat(target)
        pytest.skip(f"{target} is readable here")
    except PermissionError:
        pass
    result = CliRunner().invoke(cli, ["data", "info", target])
    assert result.exit_code == 2 and "Permission denied" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_aselmdb_refuses_damaged_rows_rather_than_skip(tmp_path):
    # fairchem's ASE-LMDB: zlib-compressed JSON rows read on demand; damage anywhere is one error
    # naming the file (or reads every row), never a shorter dataset
    pytest.importorskip("ase_db_backends")
    from format_writers import write_aselmdb

    source = write_aselmdb(tmp_path / "omat.aselmdb", n=8)
    _, intact = _read_all(source)
    size = source.stat().st_size
    rng = np.random.default_rng(5)
    refused = 0
    for k in range(25):
        width = int(rng.choice([8, 64, 512]))
        path = _damaged(tmp_path, source, int(rng.integers(0, size - width)), width, name=f"omat{k}")
        try:
            _, ids = _read_all(path)
        except FastCSIError as exc:
            assert f"omat{k}" in str(exc)
            refused += 1
            continue
        assert len(ids) == len(intact), f"{path}: {len(ids)} of {len(intact)} structures"
    assert refused > 0
