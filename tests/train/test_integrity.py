"""No code runs from a checkpoint, interrupts and failures are recorded honestly.

Malicious files are real pickles whose ``__reduce__`` would create a marker file when unpickled;
every way fastcsi reads a checkpoint (``pretrain --resume``, ``finetune --resume``,
``finetune --pretrained RUN``, ``select --checkpoint``, the best-weights reload) must refuse them
in one line before anything of them runs.
"""
import json
import os
import pickle
import signal
import subprocess
import sys
import time

import pytest
import torch
from click.testing import CliRunner

from fastcsi.cli.app import cli
from fastcsi.errors import FastCSIError
from fastcsi.train import checkpoint as ckpt

from train_toy import lj_structures

FAST = ["--model", "gemnet-oc-tiny", "--batch-size", "4", "--threads", "1", "--quiet"]


class _Payload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _malicious(path, marker, kind="fastcsi-train-state"):
    torch.save({"kind": kind, "state": _Payload(marker)}, path)
    return path


def _one_line_exit_2(result, *needles):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()  # progress and the budget printout go to stdout
    assert len(lines) == 1 and lines[0].startswith("fastcsi: error: "), result.output
    assert "weights_only=False" not in result.output and "Warning" not in result.output
    for needle in needles:
        assert needle in lines[0]


def run(args):
    return CliRunner().invoke(cli, [str(a) for a in args])


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from ase.io import write

    root = tmp_path_factory.mktemp("data")
    path = root / "toy.extxyz"
    write(path, [s.to_ase() for s in lj_structures(16, seed=5, min_atoms=3, max_atoms=5)])
    return path


@pytest.fixture(scope="module")
def pretrained(data, tmp_path_factory):
    rundir = tmp_path_factory.mktemp("runs") / "pre"
    result = run(["pretrain", "--data", data, "--samples", 8, "--epochs", 1, "-o", rundir, *FAST])
    assert result.exit_code == 0, result.output
    return rundir


def test_pickled_code_in_a_checkpoint_never_runs(tmp_path):
    marker = tmp_path / "owned"
    for kind, name in (("fastcsi-train-state", ckpt.LAST), ("fastcsi-best", ckpt.BEST)):
        path = _malicious(tmp_path / name, marker, kind)
        with pytest.raises(FastCSIError, match="fastcsi will not unpickle them") as info:
            ckpt.load(path, kind=kind)
        assert "weights_only=False" not in str(info.value)
    assert not marker.exists()


def test_pretrain_resume_refuses_a_malicious_last_pt(data, pretrained, tmp_path):
    import shutil

    rundir = tmp_path / "pre"
    shutil.copytree(pretrained, rundir)
    marker = tmp_path / "owned"
    _malicious(rundir / ckpt.LAST, marker)
    result = run(["pretrain", "--data", data, "--samples", 8, "--epochs", 1, "-o", rundir, "--resume", *FAST])
    _one_line_exit_2(result, "last.pt", "will not unpickle")
    assert not marker.exists()


def test_finetune_refuses_malicious_files_in_its_own_and_the_pretrained_run(data, pretrained, tmp_path):
    import shutil

    marker = tmp_path / "owned"
    ft = tmp_path / "ft"
    common = ["--data", data, "--split", "8,4,rest", "--epochs", 2, *FAST]
    assert run(["finetune", "--pretrained", pretrained, "-o", ft, "--stop-after", 1, *common]).exit_code == 0
    _malicious(ft / ckpt.LAST, marker)
    _one_line_exit_2(run(["finetune", "--pretrained", pretrained, "-o", ft, "--resume", *common]), "will not unpickle")

    evil_run = tmp_path / "evil_run"
    shutil.copytree(pretrained, evil_run)
    for name in ("backbone.pt", ckpt.LAST, ckpt.BEST):
        _malicious(evil_run / name, marker, kind="pretrain")
    # A backbone file may be a foreign (Lightning) checkpoint, so it is read through the allow-list
    # unpickler: the planted object stays an inert record and the file is refused for what it holds.
    _one_line_exit_2(run(["finetune", "--pretrained", evil_run, "-o", tmp_path / "ft2", *common]),
                     "backbone.pt", "neither a state_dict nor a checkpoint")
    assert not marker.exists()


def test_select_with_a_raw_pickle_checkpoint_is_one_line(tmp_path, data):
    marker = tmp_path / "owned"
    evil = tmp_path / "evil.pt"
    with open(evil, "wb") as fh:
        pickle.dump(_Payload(marker), fh)
    result = run(["select", "--downstream", data, "--upstream", data, "--checkpoint", evil, "--samples", 4,
                  "--seeds", "0", "-o", tmp_path / "sel", "--quiet"])
    _one_line_exit_2(result, "evil.pt")
    assert not marker.exists() and not (tmp_path / "sel" / "csi.json").exists()


def test_pretrain_records_a_failure_after_set_up(data, tmp_path, monkeypatch):
    from fastcsi.train import loop

    def broken_step(self, global_idx):
        raise RuntimeError("simulated failure in a training step")

    monkeypatch.setattr(loop.Trainer, "train_step", broken_step)
    rundir = tmp_path / "fail"
    result = CliRunner().invoke(cli, ["pretrain", "--data", str(data), "--samples", "8", "--epochs", "1",
                                      "-o", str(rundir), *FAST])
    assert isinstance(result.exception, RuntimeError)  # a bug keeps its traceback...
    record = json.loads((rundir / "pretrain.json").read_text())
    assert record["status"] == "failed"  # ...and the record no longer says "running"
    assert "simulated failure" in record["results"]["error"]


def test_threads_follow_one_rule_in_every_command(data, tmp_path):
    for args in (["pretrain", "--data", data, "--samples", 8, "-o", tmp_path / "p"],
                 ["select", "--downstream", data, "--upstream", data, "-o", tmp_path / "s"]):
        for bad in ("0", "-2", "many"):
            result = run([*args, "--threads", bad, "--quiet"])
            _one_line_exit_2(result, f"--threads {bad!r}")


def _wait_for(predicate, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_sigint_is_one_line_status_130_and_resume_continues(data, tmp_path):
    rundir = tmp_path / "run"
    args = [sys.executable, "-m", "fastcsi", "pretrain", "--data", str(data), "--samples", "8", "--epochs", "400",
            "--checkpoint-every", "2", "-o", str(rundir), *FAST]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        started = _wait_for(lambda: (rundir / ckpt.LAST).is_file(), 120)
        assert started, proc.stderr.read() if proc.poll() is not None else "no checkpoint in 120 s"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert err.strip().splitlines() == ["fastcsi: interrupted"], err
    record = json.loads((rundir / "pretrain.json").read_text())
    assert record["status"] == "interrupted"
    steps_done = ckpt.load(rundir / ckpt.LAST, kind="fastcsi-train-state")["step"]
    assert 0 < steps_done < 800

    # the rerun continues from the last checkpoint (shortened by --stop-after)
    result = run(["pretrain", "--data", data, "--samples", 8, "--epochs", 400, "--checkpoint-every", 2,
                  "--stop-after", steps_done + 2, "-o", rundir, "--resume", *FAST])
    assert result.exit_code == 0, result.output
    assert f"resuming at step {steps_done}" in result.output


def test_resume_of_a_killed_run_says_so(data, pretrained, tmp_path):
    import shutil

    rundir = tmp_path / "killed"
    shutil.copytree(pretrained, rundir)
    record = json.loads((rundir / "pretrain.json").read_text())
    record["status"] = "running"  # what a SIGKILL leaves behind
    (rundir / "pretrain.json").write_text(json.dumps(record))
    result = run(["pretrain", "--data", data, "--samples", 8, "--epochs", 1, "-o", rundir, "--resume", *FAST])
    assert result.exit_code == 0, result.output
    assert "never recorded an end (killed" in result.output


def test_resume_before_any_checkpoint_starts_from_scratch(data, tmp_path):
    rundir = tmp_path / "early"
    rundir.mkdir()
    result = run(["pretrain", "--data", data, "--samples", 8, "--epochs", 1, "-o", rundir, "--resume", *FAST])
    assert result.exit_code == 0, result.output
    assert "nothing to resume" in result.output and "starting from scratch" in result.output
    assert json.loads((rundir / "pretrain.json").read_text())["status"] == "done"
