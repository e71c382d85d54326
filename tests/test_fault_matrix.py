"""The promise, as a property of every command: a user mistake gets exit status 2, exactly one
stderr line starting ``fastcsi: error:``, no traceback, and leaves no new file where output goes.

A matrix: each command that reads a dataset x each bad dataset (missing, directory for a file,
truncated and random-bytes files of each format family, NaN positions, a zero-atom frame), and
each command x bad output locations (not creatable, an existing file where a directory goes and
the reverse). Commands run in-process through click's runner; signals and rlimits, which need a
real process, are in ``tests/test_faults.py``.
"""
from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastcsi.cli.app import cli

sys.path.insert(0, str(Path(__file__).resolve().parent / "data"))
from format_writers import write_ani1x, write_ase_db, write_aselmdb, write_extxyz, write_lmdb, write_sgdml_npz  # noqa: E402

# one file of each format family: written here (the core, which needs no ../shared), and the real samples
GENERATED_FAMILIES = {
    "hdf5": lambda root: write_ani1x(root / "ani1x.hdf5"),
    "lmdb": lambda root: write_lmdb(root / "data.0000.lmdb", 4),
    "npz": lambda root: write_sgdml_npz(root / "md22.npz"),
    "extxyz": lambda root: write_extxyz(root / "ref_keys.extxyz", 5) and root / "ref_keys.extxyz",  # cut mid-frame
    "db": lambda root: write_ase_db(root / "alloys.db"),
    "aselmdb": lambda root: write_aselmdb(root / "omat.aselmdb"),  # fairchem's ASE-LMDB
}
SHARED_FAMILIES = {
    "hdf5": "ani1x/ani1x_n5.hdf5",
    "lmdb": "generated/oc20/s2ef_pyg2/data.0000.lmdb",
    "npz": "generated/md22/md22_sample.npz",
    "extxyz": "generated/extxyz/ref_keys.extxyz",
    "db": "generated/bulk/alloys.db",
}

TINY = ["--quiet"]
TRAIN_FAST = ["--model", "gemnet-oc-tiny", "--batch-size", "2", "--threads", "1", "--quiet"]
UNCREATABLE = "/proc/fastcsi-forbidden/out"  # /proc takes no new entries, even from root


def _toy_frames(n=6, seed=0):
    from ase import Atoms
    from ase.calculators.singlepoint import SinglePointCalculator

    rng = np.random.default_rng(seed)
    frames = []
    for _ in range(n):
        atoms = Atoms("CH4", positions=[[0, 0, 0], [1.09, 0, 0], [0, 1.09, 0], [0, 0, 1.09], [-0.6, -0.6, -0.6]])
        atoms.positions += rng.normal(0, 0.03, (5, 3))
        atoms.calc = SinglePointCalculator(atoms, energy=float(rng.normal()), forces=rng.normal(0, 0.1, (5, 3)))
        frames.append(atoms)
    return frames


@pytest.fixture(scope="module")
def good(tmp_path_factory):
    """Valid inputs for every command: a dataset, a stats file, a select run, a fine-tuning run."""
    from ase.io import write

    root = tmp_path_factory.mktemp("good")
    data = root / "toy.extxyz"
    write(data, _toy_frames())
    runner = CliRunner()
    stats = root / "toy.npz"
    out = runner.invoke(cli, ["stats", "compute", str(data), "-o", str(stats), "--samples", "all", "--quiet"])
    assert out.exit_code == 0, out.output
    model = root / "ft"
    out = runner.invoke(cli, ["finetune", "--pretrained", "none", "--data", str(data), "--split", "3,1,2",
                              "--epochs", "1", "-o", str(model), *TRAIN_FAST])
    assert out.exit_code == 0, out.output
    return {"data": data, "stats": stats, "root": root, "model": model}


def _truncated_copies(sources: dict, root: Path, prefix: str) -> dict:
    out = {}
    for family, source in sources.items():
        raw = source.read_bytes()
        path = root / f"{prefix}truncated_{family}{source.suffix}"
        path.write_bytes(raw[: len(raw) // 2])
        out[f"{prefix}truncated-{family}"] = path
    return out


@pytest.fixture(scope="module")
def bad_inputs(tmp_path_factory):
    """name -> path of a bad dataset file or directory, all made here."""
    from ase.io import write

    root = tmp_path_factory.mktemp("bad")
    out = {"missing": root / "does-not-exist.extxyz", "directory": root / "a-directory"}
    out["directory"].mkdir()
    (out["directory"] / "notes.md").write_text("no structures here\n")
    intact = root / "intact"
    intact.mkdir()
    out.update(_truncated_copies({family: write(intact) for family, write in GENERATED_FAMILIES.items()}, root, ""))
    rng = np.random.default_rng(0)
    out["random-bytes"] = root / "random.bin"
    out["random-bytes"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    frames = _toy_frames(3)
    frames[1].positions[2, 0] = np.nan
    out["nan-positions"] = root / "nan.extxyz"
    write(out["nan-positions"], frames)
    frames = _toy_frames(3)
    (root / "zero.extxyz").write_text("5\nProperties=species:S:1:pos:R:3\n"
                                      + "".join(f"{a.symbol} {a.position[0]} {a.position[1]} {a.position[2]}\n"
                                                for a in frames[0])
                                      + "0\nProperties=species:S:1:pos:R:3\n")
    out["zero-atoms"] = root / "zero.extxyz"
    return out


@pytest.fixture(scope="module")
def bad_real_inputs(shared_data, tmp_path_factory):
    """The real samples of ../shared/data cut in half."""
    return _truncated_copies({family: shared_data / rel for family, rel in SHARED_FAMILIES.items()},
                             tmp_path_factory.mktemp("bad-real"), "real-")


BAD_INPUT_NAMES = ["missing", "directory", "truncated-hdf5", "truncated-lmdb", "truncated-npz",
                   "truncated-extxyz", "truncated-db", "truncated-aselmdb", "random-bytes", "nan-positions", "zero-atoms",
                   *(f"real-truncated-{family}" for family in SHARED_FAMILIES)]


# command -> argv with {data}, {good}, {stats}, {out}; {data} is the bad input under test
DATA_COMMANDS = {
    "data info": ["data", "info", "{data}"],
    "data convert": ["data", "convert", "{data}", "{out}/converted.extxyz"],
    "data sample": ["data", "sample", "{data}", "-n", "2", "-o", "{out}/idx.json"],
    "stats compute": ["stats", "compute", "{data}", "-o", "{out}/s.npz", "--samples", "all", *TINY],
    "select (downstream)": ["select", "--downstream", "{data}", "--upstream", "{good}", "--samples", "4",
                            "--seeds", "0", "-o", "{out}/sel", *TINY],
    "select (upstream)": ["select", "--downstream", "{good}", "--upstream", "{data}", "--samples", "4",
                          "--seeds", "0", "-o", "{out}/sel", *TINY],
    "pretrain": ["pretrain", "--data", "{data}", "--samples", "2", "--epochs", "1", "-o", "{out}/pt", *TRAIN_FAST],
    "finetune": ["finetune", "--pretrained", "none", "--data", "{data}", "--split", "2,1,1", "--epochs", "1",
                 "-o", "{out}/ft", *TRAIN_FAST],
    "predict": ["predict", "--model", "{model}", "--data", "{data}", "-o", "{out}/pred.extxyz", "--quiet"],
    "evaluate": ["evaluate", "--model", "{model}", "--data", "{data}", "-o", "{out}/eval", "--quiet"],
}


def _snapshot(root: Path) -> set:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def _check_user_error(result, args):
    shown = " ".join(args)
    assert result.exit_code == 2, f"{shown}\nexit {result.exit_code}\n{result.output}"
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastcsi: error: "), f"{shown}\n{result.stderr}"
    assert "Traceback" not in result.output, f"{shown}\n{result.output}"


def _invoke(argv, **values):
    args = [a.format(**{k: str(v) for k, v in values.items()}) for a in argv]
    return CliRunner().invoke(cli, args), args


# sampling reads the index (counts, class keys), not the structures it picks: their contents
# are checked by whatever reads them
DATA_CASES = [(c, b) for c in DATA_COMMANDS for b in BAD_INPUT_NAMES
              if not (c == "data sample" and b in ("nan-positions", "zero-atoms"))]


@pytest.mark.parametrize("command, bad", DATA_CASES)
def test_bad_dataset_is_one_line_exit_2_and_writes_nothing(command, bad, good, request, tmp_path):
    bad_input = request.getfixturevalue("bad_real_inputs" if bad.startswith("real-") else "bad_inputs")[bad]
    out = tmp_path / "out"
    out.mkdir()
    before = _snapshot(bad_input.parent)
    result, args = _invoke(DATA_COMMANDS[command], data=bad_input, good=good["data"], model=good["model"],
                           out=out)
    _check_user_error(result, args)
    assert _snapshot(out) == set(), f"{' '.join(args)} left {_snapshot(out)}"
    assert _snapshot(bad_input.parent) == before  # no side files beside inputs


# command -> argv whose output location is {out}; every other input is valid
OUTPUT_COMMANDS = {
    "data convert": ["data", "convert", "{data}", "{out}"],
    "data sample": ["data", "sample", "{data}", "-n", "2", "-o", "{out}"],
    "stats compute": ["stats", "compute", "{data}", "-o", "{out}", "--samples", "all", *TINY],
    "stats merge": ["stats", "merge", "{stats}", "{stats}", "-o", "{out}"],
    "select": ["select", "--downstream", "{data}", "--upstream", "{stats}", "--samples", "4", "--seeds", "0",
               "-o", "{out}", *TINY],
    "pretrain": ["pretrain", "--data", "{data}", "--samples", "2", "--epochs", "1", "-o", "{out}", *TRAIN_FAST],
    "finetune": ["finetune", "--pretrained", "none", "--data", "{data}", "--split", "2,1,3", "--epochs", "1",
                 "-o", "{out}", *TRAIN_FAST],
    "predict": ["predict", "--model", "{model}", "--data", "{data}", "-o", "{out}", "--quiet"],
    "evaluate": ["evaluate", "--model", "{model}", "--data", "{data}", "-o", "{out}", "--quiet"],
}
FILE_OUTPUTS = {"data convert": ".extxyz", "data sample": ".json", "stats compute": ".npz", "stats merge": ".npz",
                "predict": ".extxyz"}


# a command writes either a file (the suffix given) or a directory: each gets the other's mistake
OUTPUT_CASES = [(c, w) for c in OUTPUT_COMMANDS for w in
                ("uncreatable", "directory-for-file" if c in FILE_OUTPUTS else "file-for-directory")]


@pytest.mark.parametrize("command, where", OUTPUT_CASES)
def test_bad_output_location_is_one_line_exit_2(command, where, good, tmp_path):
    suffix = FILE_OUTPUTS.get(command)
    if where == "uncreatable":
        target = Path(UNCREATABLE + (suffix or ""))
    elif where == "file-for-directory":
        target = tmp_path / "occupied"
        target.write_text("someone's file\n")
    else:
        target = tmp_path / f"a-directory{suffix}"
        target.mkdir()
    before = _snapshot(tmp_path)
    result, args = _invoke(OUTPUT_COMMANDS[command], data=good["data"], stats=good["stats"], model=good["model"],
                           out=target)
    _check_user_error(result, args)
    assert _snapshot(tmp_path) == before
    if where == "file-for-directory":
        assert target.read_text() == "someone's file\n"


STATS_COMMANDS = {
    "stats info": ["stats", "info", "{bad}"],
    "stats merge": ["stats", "merge", "{good}", "{bad}", "-o", "{out}/m.npz"],
    "csi": ["csi", "{good}", "{bad}"],
    "stats from-features": ["stats", "from-features", "{bad}", "-o", "{out}/f.npz"],
    "report": ["report", "{bad}", "{bad}"],
}


@pytest.fixture(scope="module")
def bad_stats(good, tmp_path_factory):
    root = tmp_path_factory.mktemp("badstats")
    raw = good["stats"].read_bytes()
    out = {"missing": root / "none.npz", "truncated": root / "truncated.npz", "random-bytes": root / "random.npz"}
    out["truncated"].write_bytes(raw[: len(raw) // 2])
    out["random-bytes"].write_bytes(np.random.default_rng(1).integers(0, 256, 2048, dtype=np.uint8).tobytes())
    out["directory"] = root / "dir.npz"
    out["directory"].mkdir()
    with np.load(good["stats"]) as npz:
        arrays = {k: npz[k] for k in npz.files}
    mean_key = next(k for k in arrays if k.endswith("mean") and arrays[k].ndim == 1)
    arrays[mean_key] = arrays[mean_key][:-1]  # lengths no longer match the scatter matrix
    out["mismatched"] = root / "mismatched.npz"
    np.savez(out["mismatched"], **arrays)
    with np.load(good["stats"]) as npz:
        arrays = {k: npz[k] for k in npz.files}
    arrays[mean_key] = np.full_like(arrays[mean_key], np.nan)
    out["nan"] = root / "nan.npz"
    np.savez(out["nan"], **arrays)
    return out


# from-features reads features and report reads run directories: stats-file damage does not apply
STATS_CASES = [(c, b) for c in STATS_COMMANDS
               for b in ("missing", "truncated", "random-bytes", "directory", "mismatched", "nan")
               if not (c in ("stats from-features", "report") and b in ("mismatched", "nan"))]


@pytest.mark.parametrize("command, bad", STATS_CASES)
def test_bad_stats_file_is_one_line_exit_2(command, bad, good, bad_stats, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    result, args = _invoke(STATS_COMMANDS[command], bad=bad_stats[bad], good=good["stats"], out=out)
    _check_user_error(result, args)
    assert _snapshot(out) == set()


@pytest.mark.parametrize("origin", ["generated", "shared"])
def test_inputs_are_never_written_locked_or_given_side_files(good, tmp_path, request, origin):
    # read-only copies of every format family (as in CI's shared/): commands must not need write access
    sources = tmp_path / "inputs"
    sources.mkdir()
    if origin == "generated":
        for family in ("hdf5", "lmdb", "npz", "db", "aselmdb"):
            GENERATED_FAMILIES[family](sources)
        for lock in sources.glob("*-lock"):  # the writer's, which a copied file does not have
            lock.unlink()
    else:
        shared_data = request.getfixturevalue("shared_data")
        for family in ("hdf5", "lmdb", "npz", "db"):
            shutil.copy(shared_data / SHARED_FAMILIES[family], sources / Path(SHARED_FAMILIES[family]).name)
    os.chmod(sources, 0o555)
    try:
        def state():
            return {p.name: (p.stat().st_size, p.stat().st_mtime_ns, p.read_bytes()) for p in sources.iterdir()}

        before = state()
        for path in sorted(sources.iterdir()):
            result = CliRunner().invoke(cli, ["data", "info", str(path)])
            assert result.exit_code == 0, result.output
            result = CliRunner().invoke(cli, ["stats", "compute", str(path), "-o", str(tmp_path / f"{path.stem}.npz"),
                                              "--samples", "4", "--quiet"])
            assert result.exit_code == 0, result.output
        assert state() == before
    finally:
        os.chmod(sources, 0o755)


def test_finetune_names_a_missing_checkpoint_before_the_split(good, tmp_path):
    # the recipe's default split (950,50,rest) does not fit 6 structures either: the checkpoint the
    # user named is what is wrong first
    result, args = _invoke(["finetune", "--pretrained", "{missing}", "--data", "{data}", "-o", "{out}", *TRAIN_FAST],
                           missing=tmp_path / "nonexistent", data=good["data"], out=tmp_path / "ft")
    _check_user_error(result, args)
    assert "nonexistent" in result.stderr and "split" not in result.stderr


@pytest.mark.parametrize("command", ["predict", "evaluate"])
@pytest.mark.parametrize("bad", ["missing", "empty-directory", "random-bytes", "stats-file"])
def test_bad_model_is_one_line_exit_2(command, bad, good, tmp_path):
    models = {"missing": tmp_path / "no-model", "empty-directory": tmp_path / "empty",
              "random-bytes": tmp_path / "random.pt", "stats-file": good["stats"]}
    models["empty-directory"].mkdir()
    models["random-bytes"].write_bytes(np.random.default_rng(2).integers(0, 256, 1024, dtype=np.uint8).tobytes())
    out = tmp_path / "out"
    out.mkdir()
    target = "{out}/pred.extxyz" if command == "predict" else "{out}/eval"
    result, args = _invoke([command, "--model", "{model}", "--data", "{data}", "-o", target, "--quiet"],
                           model=models[bad], data=good["data"], out=out)
    _check_user_error(result, args)
    assert _snapshot(out) == set()
