"""Faults that need a real process: a disk that fills up mid-write, SIGINT during select, SIGKILL
during pretraining, two selects sharing one cache at the same time."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fastcsi.data.demo import demo_paths

FAST = ["--model", "gemnet-oc-tiny", "--batch-size", "2", "--threads", "1", "--quiet"]
ENV = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}


def fastcsi(*args, limit_bytes=None, **kwargs):
    def preexec():
        if limit_bytes is not None:
            resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.Popen([sys.executable, "-m", "fastcsi", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=ENV, preexec_fn=preexec, **kwargs)


def _wait_for(predicate, proc, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.05)
    return False


@pytest.fixture(scope="module")
def demo():
    paths = demo_paths()
    return {"down": paths["downstream_md"], "up": [paths[k] for k in sorted(paths) if k.startswith("upstream")]}


def test_disk_full_mid_write_keeps_the_previous_output_and_leaves_no_partial_file(demo, tmp_path):
    out = tmp_path / "stats.npz"
    first = fastcsi("stats", "compute", demo["down"], "-o", out, "--samples", "8", "--quiet")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    previous = out.read_bytes()
    # a file size limit below the output's size: the write fails part-way (EFBIG, as a full disk's ENOSPC)
    again = fastcsi("stats", "compute", demo["down"], "-o", out, "--samples", "8", "--seed", "1", "--quiet",
                    limit_bytes=len(previous) // 2)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastcsi: error: ") and "too large" in lines[0].lower(), err
    assert out.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stats.npz"]


def _finished_entries(cache):
    # pathlib's glob matches dot files: an atomic write's temp file (.<stem>.XXXX.npz) is not an entry
    return [p for p in cache.glob("*.npz") if not p.name.startswith(".")]


def test_sigint_during_select_is_one_line_and_the_rerun_reuses_the_cache(demo, tmp_path):
    outdir, cache = tmp_path / "sel", tmp_path / "cache"
    args = ["select", "--downstream", demo["down"], *sum((["--upstream", u] for u in demo["up"]), []),
            "--samples", "16", "--seeds", "0,1", "--threads", "1", "--cache-dir", cache, "-o", outdir, "--quiet"]
    proc = fastcsi(*args)
    try:
        assert _wait_for(lambda: cache.is_dir() and bool(_finished_entries(cache)), proc, 240), proc.communicate()[1]
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    if proc.returncode == 0:
        pytest.skip("select finished before the interrupt arrived")
    assert proc.returncode == 130, err
    assert err.strip().splitlines()[-1:] == ["fastcsi: interrupted"] and "Traceback" not in err, err
    cached = {p.name: p.stat().st_mtime_ns for p in _finished_entries(cache)}
    assert cached and not list(cache.glob(".*"))  # finished entries only, no torn temp files
    rerun = fastcsi(*args)
    _, err = rerun.communicate(timeout=300)
    assert rerun.returncode == 0, err
    assert json.loads((outdir / "csi.json").read_text())["ranking"]
    for name, mtime in cached.items():  # reused, not recomputed
        assert (cache / name).stat().st_mtime_ns == mtime


def test_two_selects_sharing_one_cache_both_finish(demo, tmp_path):
    cache = tmp_path / "cache"
    procs = [fastcsi("select", "--downstream", demo["down"], "--upstream", demo["up"][0], "--upstream", demo["up"][1],
                     "--samples", "8", "--seeds", "0", "--threads", "1", "--cache-dir", cache, "-o", tmp_path / f"s{k}",
                     "--quiet") for k in range(2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, results):
        assert p.returncode == 0, err
    rankings = [json.loads((tmp_path / f"s{k}" / "csi.json").read_text())["ranking"] for k in range(2)]
    assert [r["csi"] for r in rankings[0]] == pytest.approx([r["csi"] for r in rankings[1]], rel=1e-12)


def test_sigkill_during_pretrain_then_resume_ends_with_the_uninterrupted_weights(tmp_path):
    from ase.io import write

    sys.path.insert(0, str(Path(__file__).parent / "train"))
    from train_toy import lj_structures

    data = tmp_path / "toy.extxyz"
    write(data, [s.to_ase() for s in lj_structures(12, seed=9, min_atoms=3, max_atoms=5)])
    common = ["pretrain", "--data", data, "--samples", 8, "--epochs", 30, "--checkpoint-every", 1, *FAST]
    full = fastcsi(*common, "-o", tmp_path / "full")
    killed = fastcsi(*common, "-o", tmp_path / "killed")
    try:
        last = tmp_path / "killed" / "last.pt"
        assert _wait_for(last.is_file, killed, 240), killed.communicate()[1]
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
    finally:
        if killed.poll() is None:
            killed.kill()
    record = json.loads((tmp_path / "killed" / "pretrain.json").read_text())
    assert record["status"] == "running"  # killed mid-run: nothing could record the end
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err
    resumed = fastcsi(*common, "-o", tmp_path / "killed", "--resume")
    out, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    if not (tmp_path / "killed" / "backbone.pt").is_file():
        pytest.fail(f"resume did not finish: {out}{err}")
    assert "never recorded an end" in out and "resuming at step" in out
    a = torch.load(tmp_path / "full" / "backbone.pt", weights_only=True)["state_dict"]
    b = torch.load(tmp_path / "killed" / "backbone.pt", weights_only=True)["state_dict"]
    for name in a:
        assert torch.equal(a[name], b[name]), name
