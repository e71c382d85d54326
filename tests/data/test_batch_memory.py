"""Memory bounded by the batch: peak RSS of real ``fastcsi`` processes (ru_maxrss of the child), on
OC20-style LMDBs written here. Small on purpose; each run is one tiny-backbone process."""
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fastcsi.data import open_dataset
from fastcsi.data.lmdb_reader import release_pages

sys.path.insert(0, str(Path(__file__).resolve().parent))
from format_writers import write_lmdb  # noqa: E402

pytestmark = pytest.mark.slow


def _molecules(n, seed=0):
    rng = np.random.default_rng(seed)
    return [([6, 1, 1, 1, 1], rng.normal(size=(5, 3)) * 0.8 + 15, np.eye(3) * 30, i % 50) for i in range(n)]


def _slabs(n, reps, seed=0):
    from ase.build import fcc111

    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        atoms = fcc111("Cu", size=(reps, reps, 3), vacuum=6.0)
        atoms.positions += rng.normal(0, 0.05, atoms.positions.shape)
        out.append((atoms.numbers, atoms.positions, np.asarray(atoms.cell), i % 5))
    return out


def _peak_mb(args, tmp_path) -> float:
    """Peak RSS (MB) of one ``python -m fastcsi ARGS`` process, measured in a fresh measuring process
    (RUSAGE_CHILDREN of this test process would keep the largest child of the whole session)."""
    probe = ("import resource, subprocess, sys; r = subprocess.run([sys.executable, '-m', 'fastcsi', *sys.argv[1:]], "
             "capture_output=True, text=True); sys.stderr.write(r.stderr[-2000:]); "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss if r.returncode == 0 else -1)")
    done = subprocess.run([sys.executable, "-c", probe, *map(str, args), "--quiet", "--threads", "1"],
                          capture_output=True, text=True, cwd=tmp_path)
    peak = int(done.stdout.strip().splitlines()[-1])
    assert peak > 0, done.stderr
    return peak / 1024


def test_select_peak_rss_does_not_grow_with_the_entries_it_samples_from(tmp_path):
    small = write_lmdb(tmp_path / "small.lmdb", entries=_molecules(400))
    large = write_lmdb(tmp_path / "large.lmdb", entries=_molecules(4000, seed=1))  # 10x the entries
    down = write_lmdb(tmp_path / "down.lmdb", entries=_molecules(40, seed=2))
    peaks = [_peak_mb(["select", "--downstream", down, "--upstream", up, "--samples", 24, "--seeds", 0,
                       "-o", tmp_path / f"run-{up.stem}", "--max-atoms-per-batch", 200], tmp_path)
             for up in (small, large)]
    assert peaks[1] <= 1.10 * peaks[0], f"peak RSS {peaks[0]:.0f} MB on 400 entries, {peaks[1]:.0f} MB on 4000"


def test_peak_rss_at_an_atom_budget_is_flat_across_slab_sizes_and_not_without_it(tmp_path):
    small = write_lmdb(tmp_path / "small.lmdb", entries=_slabs(16, reps=2))  # 12 atoms each
    large = write_lmdb(tmp_path / "large.lmdb", entries=_slabs(16, reps=4, seed=1))  # 48 atoms each

    def peak(path, *budget):
        return _peak_mb(["stats", "compute", path, "-o", tmp_path / f"{path.stem}{len(budget)}.npz",
                         "--samples", 16, "--batch-size", 16, *budget], tmp_path)

    budgeted = [peak(p, "--max-atoms-per-batch", 96) for p in (small, large)]
    assert abs(budgeted[1] - budgeted[0]) <= 0.10 * budgeted[0], f"at 96 atoms per batch: {budgeted} MB"
    unbounded = peak(large)  # 16 x 48 atoms in one batch
    assert unbounded > 1.10 * budgeted[1], f"without a budget {unbounded:.0f} MB, with {budgeted[1]:.0f} MB"


def test_header_pass_and_reads_leave_no_mapped_pages_behind(tmp_path, monkeypatch):
    monkeypatch.setenv("FASTCSI_CACHE_DIR", "off")
    path = write_lmdb(tmp_path / "big.lmdb", entries=_molecules(3000) * 1)

    def mapped_kb():
        with open("/proc/self/smaps") as smaps:
            text = smaps.read()
        at = text.find(str(path.resolve()))
        if at < 0:
            return 0
        block = text[at:].split("VmFlags", 1)[0]
        return int(block.split("Rss:", 1)[1].split()[0])

    if not Path("/proc/self/smaps").exists():
        pytest.skip("needs /proc/self/smaps (Linux)")
    ds = open_dataset(path)
    ds._scan_headers()
    assert mapped_kb() < 64  # the pages the pass read were dropped from this process
    [ds[i] for i in range(0, 2000, 10)]  # 200 reads
    assert mapped_kb() > 64  # (the measure sees pages when they are mapped)
    [ds[i] for i in range(2000, 2056)]  # the 256th read drops them: a long stream keeps its working set
    assert mapped_kb() < 64
    [ds[i] for i in range(2056, 2100)]
    release_pages(path)
    assert mapped_kb() < 64


def test_predict_batches_follow_the_atom_budget(tmp_path):
    from fastcsi.inference.predict import iter_predictions

    sizes = [3, 3, 10, 2, 2, 2, 7]

    class CountingModel:
        properties = ("energy",)
        batches = []

        def check_properties(self, properties):
            return list(properties)

        def predict(self, structures, properties, where):
            self.batches.append([s.n_atoms for s in structures])
            return [{"energy": 0.0} for _ in structures]

    path = write_lmdb(tmp_path / "mixed.lmdb",
                      entries=[([1] * m, np.arange(3 * m).reshape(m, 3), None, i) for i, m in enumerate(sizes)])
    model = CountingModel()
    done = list(iter_predictions(model, open_dataset(path), batch_size=4, progress=False, max_atoms=6))
    assert [i for i, _, _ in done] == list(range(7))
    assert model.batches == [[3, 3], [10], [2, 2, 2], [7]]  # never above 6 atoms but for a structure alone
