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
torch.ones(10_000_000)  # 40 MB, past glibc's largest adaptive mmap threshold (32 MB)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(5):
    torch.ones(10_000_000)
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
    off, switched_off = faults("tune", FASTCSI_MALLOC_TUNING="0")
    assert tuned and not untuned and not off
    # each fresh 40 MB block faults ~9800 pages in without the tuning; with it freed blocks are reused
    assert without > 5 * 9000 and switched_off > 5 * 9000
    assert with_tuning * 4 < without
