"""Benchmark: the persistent dataset index on a generated OC20-style sharded LMDB directory.

Writes N entries (default 100,000, as issue 24's figures; ``--entries 1000000`` for the full goal)
into 4 LMDB shards in a temporary directory (deleted afterwards, never committed): pickled
torch_geometric ``Data`` as fairchem writes them (positions, forces, cell, atomic numbers, tags,
fixed, natoms, sid, fid; 20-120 atoms per entry, ~7 kB, 25 entries per system id).

Measured, in this run, on this machine (page cache warm: the files were just written):
  header pass (before)  the header pass as it was before the index (each entry unpickled with
                        tensors kept undecoded, one read transaction per entry): entries/s, 1 core
  index build -j 1      ``build_indices`` with one process: entries/s (ratio to the line above)
  index build -j all    with every core (``os.cpu_count()``)
  first / second run    a fresh ``python`` process: open the directory, draw 100 structures
                        class-balanced, read the first one; run 1 with an empty cache directory
                        (builds the index), run 2 with the index it left. Time inside the process
                        from open to the first structure, the process's wall time, its peak RSS.
Goals (issue 24): run 2 < 1 s at 1M entries; build >= 3x the old header pass per core; the build
scales with cores.

    python bench/data_index.py [--quick] [--entries N] [--shards K] [--out FILE.json]
"""
from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

RUN = r"""
import json, resource, sys, time
t0 = time.perf_counter()
from fastcsi.data import open_dataset, sample_indices
t1 = time.perf_counter()
ds = open_dataset(sys.argv[1])
picked = sample_indices(ds, 100, sys.argv[2], seed=0)
first = ds[int(picked[0])]
t2 = time.perf_counter()
# VmHWM: this process's own peak (ru_maxrss would keep the parent's size at the fork before exec)
status = open("/proc/self/status").read() if sys.platform == "linux" else ""
peak = int(status.split("VmHWM:")[1].split()[0]) if "VmHWM:" in status else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({"import_s": t1 - t0, "to_first_structure_s": t2 - t1, "entries": len(ds), "peak_rss_mb": peak / 1024}))
"""


def _fake_pyg():
    """torch_geometric's Data and GlobalStorage as pickling sees them (module and class names)."""
    data_mod = types.ModuleType("torch_geometric.data.data")
    storage_mod = types.ModuleType("torch_geometric.data.storage")
    data_mod.Data = type("Data", (), {"__module__": data_mod.__name__})
    storage_mod.GlobalStorage = type("GlobalStorage", (), {"__module__": storage_mod.__name__})
    sys.modules.update({"torch_geometric": types.ModuleType("torch_geometric"),
                        "torch_geometric.data": types.ModuleType("torch_geometric.data"),
                        data_mod.__name__: data_mod, storage_mod.__name__: storage_mod})
    return data_mod.Data, storage_mod.GlobalStorage


SID_BASE = 1 << 40  # 6-byte LONG1 in the pickle, so that each entry's sid and fid patch in place


def _templates(rng, sizes):
    """One pickled entry per atom count; sid and fid are placeholders patched per entry."""
    import torch

    Data, Storage = _fake_pyg()
    out = {}
    for m in map(int, sizes):  # plain ints, as fairchem stores natoms
        fields = {"pos": torch.from_numpy(rng.random((m, 3), dtype=np.float32) * 10),
                  "cell": 10 * torch.eye(3).unsqueeze(0),
                  "atomic_numbers": torch.from_numpy(rng.integers(1, 80, m).astype(np.float32)),
                  "natoms": m, "tags": torch.zeros(m, dtype=torch.long), "y": -1.0,
                  "force": torch.from_numpy(rng.normal(size=(m, 3)).astype(np.float32)),
                  "fixed": torch.zeros(m), "sid": SID_BASE, "fid": SID_BASE + 1}
        data, store = Data(), Storage()
        store._mapping = fields
        data._store = store
        raw = pickle.dumps(data, protocol=4)
        placeholders = [raw.find(b"\x8c\x03sid\x94\x8a\x06"), raw.find(b"\x8c\x03fid\x94\x8a\x06")]
        assert min(placeholders) > 0
        out[m] = (raw, [p + 8 for p in placeholders])  # after key, MEMOIZE, LONG1 and its width
    return out


def generate(root: Path, entries: int, shards: int, seed: int = 0) -> Path:
    import lmdb

    rng = np.random.default_rng(seed)
    sizes = np.arange(20, 121)
    templates = _templates(rng, sizes)
    natoms = rng.choice(sizes, size=entries)
    bounds = np.linspace(0, entries, shards + 1).astype(int)
    for k in range(shards):
        env = lmdb.open(str(root / f"data.{k:04d}.lmdb"), subdir=False, map_size=1 << 40, meminit=False,
                        map_async=True, sync=False)
        txn = env.begin(write=True)
        for local, i in enumerate(range(bounds[k], bounds[k + 1])):
            raw, (sid_at, fid_at) = templates[int(natoms[i])]
            entry = bytearray(raw)
            entry[sid_at:sid_at + 6] = (SID_BASE + i // 25).to_bytes(6, "little")
            entry[fid_at:fid_at + 6] = (SID_BASE + i).to_bytes(6, "little")
            txn.put(str(local).encode(), bytes(entry))
            if local % 20000 == 19999:
                txn.commit()
                txn = env.begin(write=True)
        txn.put(b"length", pickle.dumps(int(bounds[k + 1] - bounds[k])))
        txn.commit()
        env.sync(True)
        env.close()
    return root


def header_pass_before(dataset, limit: int) -> float:
    """The header pass as it was before the index (its code at commit 14749d2): per entry one read
    transaction and a lazy unpickle. Returns entries/s over the first ``limit`` entries of a shard
    (all of them when it holds fewer)."""
    from fastcsi.data.lmdb_reader import _to_numpy

    n = min(limit, len(dataset))
    start = time.perf_counter()
    keys, natoms = [], []
    for i in range(n):
        f = dataset._fields(i, lazy=True)
        keys.append(dataset._class_of(f, i))
        natoms.append(int(_to_numpy(f["natoms"]).reshape(-1)[0]) if f.get("natoms") is not None
                      else int(_to_numpy(f["atomic_numbers"]).shape[0]))
    return n / (time.perf_counter() - start)


def build_rate(directory: Path, cache: Path, workers: int) -> tuple[float, int]:
    from fastcsi.data import open_dataset
    from fastcsi.data.index import build_indices

    os.environ["FASTCSI_CACHE_DIR"] = str(cache)
    dataset = open_dataset(directory)
    start = time.perf_counter()
    report = build_indices(dataset, workers=workers)
    seconds = time.perf_counter() - start
    dataset.close()
    return report["entries_built"] / seconds, report["entries_built"]


def sample_run(directory: Path, cache: Path, strategy: str) -> dict:
    env = dict(os.environ, FASTCSI_CACHE_DIR=str(cache), OMP_NUM_THREADS="1")
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", RUN, str(directory), strategy], capture_output=True, text=True,
                          env=env)
    wall = time.perf_counter() - start
    if done.returncode:
        raise RuntimeError(done.stderr[-2000:])
    row = json.loads(done.stdout.strip().splitlines()[-1])
    row["process_wall_s"] = wall
    return row


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="20,000 entries (seconds)")
    parser.add_argument("--entries", type=int, default=None, help="entries in all (default 100,000; quick 20,000)")
    parser.add_argument("--shards", type=int, default=4)
    parser.add_argument("--baseline-entries", type=int, default=20_000,
                        help="entries the old header pass is timed on (it is slow)")
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON here (atomic)")
    args = parser.parse_args(argv)
    entries = args.entries or (20_000 if args.quick else 100_000)
    cores = os.cpu_count() or 1
    result = {"entries": entries, "shards": args.shards, "cores": cores, "load_1min": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="fastcsi-bench-index-") as tmp:
        tmp = Path(tmp)
        data = tmp / "oc20"
        data.mkdir()
        start = time.perf_counter()
        generate(data, entries, args.shards)
        result["generate_s"] = time.perf_counter() - start
        result["dataset_mb"] = sum(p.stat().st_size for p in data.glob("*.lmdb")) / 2**20
        print(f"{entries:,} entries in {args.shards} shards, {result['dataset_mb']:.0f} MB "
              f"(written in {result['generate_s']:.1f} s); {cores} cores, load {result['load_1min']:.2f}")

        from fastcsi.data import open_dataset

        os.environ["FASTCSI_CACHE_DIR"] = "off"
        shard = open_dataset(sorted(data.glob("*.lmdb"))[0])
        before = header_pass_before(shard, args.baseline_entries)
        shard.close()
        result["header_pass_before_entries_per_s"] = before
        one, _ = build_rate(data, tmp / "cache-j1", 1)
        many, _ = build_rate(data, tmp / "cache-jall", cores)
        result.update(build_j1_entries_per_s=one, build_jall_entries_per_s=many)
        print(f"header pass (before)     {before:12,.0f} entries/s  (1 core, {min(args.baseline_entries, entries // args.shards):,} entries)")
        print(f"index build -j 1         {one:12,.0f} entries/s  x{one / before:.1f} the pass before")
        print(f"index build -j {cores:<3d}      {many:12,.0f} entries/s  x{many / one:.2f} of -j 1")

        cache = tmp / "cache-runs"
        runs = {"random (no index needed)": sample_run(data, tmp / "cache-random", "random"),
                "balanced run 1 (builds)": sample_run(data, cache, "balanced"),
                "balanced run 2 (index)": sample_run(data, cache, "balanced")}
        result["runs"] = runs
        for name, row in runs.items():
            print(f"{name:26s} to first structure {row['to_first_structure_s']:7.3f} s   process "
                  f"{row['process_wall_s']:6.2f} s (import {row['import_s']:.2f} s)   peak RSS {row['peak_rss_mb']:7.0f} MB")
        result["index_mb"] = sum(p.stat().st_size for p in (cache / "index").glob("*.npz")) / 2**20
        print(f"index on disk: {result['index_mb']:.2f} MB")
    result["max_rss_mb_this_process"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if args.out:
        from fastcsi.utils import atomic_write

        with atomic_write(args.out) as fh:
            json.dump(result, fh, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
