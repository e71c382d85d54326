import os
import platform
import subprocess
import sys
import stat

import pytest

from fastcsi.utils import atomic_path, atomic_write


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_atomic_write_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_write(target) as fh:
            fh.write("half")
            raise RuntimeError("crash")
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]  # no temp file left behind
    with atomic_write(target) as fh:
        fh.write("new")
    assert target.read_text() == "new"


def test_atomic_outputs_get_umask_permissions(tmp_path):
    mask = os.umask(0o022)
    try:
        with atomic_write(tmp_path / "a.txt") as fh:
            fh.write("x")
        with atomic_path(tmp_path / "b.npz") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(mask)
    assert _mode(tmp_path / "a.txt") == 0o644
    assert _mode(tmp_path / "b.npz") == 0o644


_FAULTS_SCRIPT = """
import resource, sys
import torch
from fastcsi.utils import tune_allocator
tuned = tune_allocator() if sys.argv[1] == "tune" else False
torch.manual_seed(0)
w = [torch.randn(512, 512) / 23 for _ in range(8)]
def step():  # a GemNet-like chain of (2304, 512) temporaries: what a model forward allocates
    x = torch.randn(2304, 512)
    keep = []
    for layer in w:
        y = torch.nn.functional.silu(x @ layer)
        x = (x + y) * 0.7
        keep.append(y)
    return sum(k.sum() for k in keep)
step()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    step()
print(tuned, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc", reason="glibc only")
def test_tune_allocator_reuses_freed_memory_instead_of_faulting_it_in_again():
    def faults(mode, **env):
        out = subprocess.run([sys.executable, "-c", _FAULTS_SCRIPT, mode], capture_output=True, text=True,
                             check=True, env={**os.environ, **env}).stdout.split()
        return out[0] == "True", int(out[1])

    tuned, with_tuning = faults("tune")
    untuned, without = faults("plain")
    off, _ = faults("tune", FASTCSI_MALLOC_TUNING="0")
    assert tuned and not untuned and not off
    # Plain glibc hands freed (2304, 512) temporaries back and faults them in again: 37k-184k pages
    # over these 10 steps here, depending on how its adaptive threshold settles. Tuned, the steps
    # reuse the first one's memory: 0 pages, or a one-off ~7k, never a step's worth (>= 12k).
    assert with_tuning < 10_000
    assert without > with_tuning
