"""Tiny fine-tuning runs shared by the inference tests (gemnet-oc-tiny, one epoch on rMD17
ethanol frames written as the dataset's own train / val / test files)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))  # inference_runs: a name no other test folder uses

from inference_runs import finetune_settings  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    """Every test here runs tiny models on one torch thread (tests/conftest.py)."""


@pytest.fixture(scope="session")
def rmd17(shared_data):
    return shared_data / "rmd17" / "rmd17_ethanol_train_1.extxyz"


@pytest.fixture(scope="session")
def split_files(rmd17, tmp_path_factory):
    """Disjoint train (16) / val (4) / test (6) files of rMD17 ethanol frames, as users hold the
    official splits."""
    from ase.io import read, write

    root = tmp_path_factory.mktemp("ethanol")
    frames = read(rmd17, index=":26")
    files = {}
    for name, part in (("train", frames[:16]), ("val", frames[16:20]), ("test", frames[20:26])):
        files[name] = root / f"{name}.extxyz"
        write(files[name], part)
    return files


@pytest.fixture(scope="session")
def ethanol_run(split_files, tmp_path_factory):
    """Energy + gradient forces (the rMD17 recipe), trained a few steps: (run directory, results)."""
    from fastcsi.train import run_finetune

    rundir = tmp_path_factory.mktemp("runs") / "ethanol"
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        results = run_finetune(finetune_settings(split_files, rundir, epochs=2), log=lambda *a, **k: None)
    finally:
        torch.set_num_threads(before)
    return rundir, results


@pytest.fixture(scope="session")
def energy_only_run(split_files, tmp_path_factory):
    """An energy-only fine-tune through the CLI with the dataset's own split files:
    (run directory, results)."""
    import json

    from click.testing import CliRunner

    from fastcsi.cli.app import cli

    rundir = tmp_path_factory.mktemp("runs") / "energy_only"
    args = ["finetune", "--pretrained", "none", "--train", split_files["train"], "--val", split_files["val"],
            "--test", split_files["test"], "--target", "energy", "--recipe", "rmd17", "--model", "gemnet-oc-tiny",
            "--epochs", 1, "--batch-size", 4, "--threads", 1, "--quiet", "-o", rundir]
    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return rundir, json.loads((rundir / "results.json").read_text())
