"""The persistent dataset index: per structure its class key and atom count, kept in the cache
directory so that sampling (``data sample``, ``select``, ``pretrain``) never repeats the per-entry
header pass on a dataset it has seen.

- One index file per dataset file (shard), named by that file's fingerprint (resolved path, size,
  mtime, format, reader options): a changed file gets a new index, an unchanged shard of a grown
  directory keeps its own.
- Compact: an ``.npz`` of numpy arrays; class keys as a sorted string table plus one int32 code
  per structure (a million structures of ~10k systems: ~8 MB), atom counts int32. Written
  atomically; a file that does not load or does not match its dataset is rebuilt, never trusted.
- Where: ``$FASTCSI_CACHE_DIR`` (``off`` disables it), else ``$XDG_CACHE_HOME/fastcsi``, else
  ``~/.cache/fastcsi``; the index lives in its ``index/`` folder. The inputs are never written.
- ``build_indices(dataset, workers)`` builds the missing ones in worker processes over shards and
  entry ranges (``fastcsi data index PATH -j N``); under torchrun the ranks split the files and
  exchange what they built.
- Atom counts only (random draws with an atom budget) come from fairchem's ``metadata.npz``
  (``natoms`` per entry of the directory's shards, in sorted file order) when it is present and
  its length matches, without any pass over the entries.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

INDEX_FORMAT = "fastcsi-dataset-index/1"
CACHE_ENV = "FASTCSI_CACHE_DIR"
_OFF = ("", "0", "off", "none", "false")


def cache_root() -> Path | None:
    """The cache directory (see the module docstring); None when ``FASTCSI_CACHE_DIR=off``."""
    value = os.environ.get(CACHE_ENV)
    if value is not None:
        return None if value.strip().lower() in _OFF else Path(value).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or (Path.home() / ".cache")
    return Path(base) / "fastcsi"


@dataclass
class DatasetIndex:
    """Class keys (as ``class_table[class_codes]``) and atom counts of one dataset file."""

    class_table: np.ndarray  # (C,) str, sorted, unique
    class_codes: np.ndarray  # (N,) int32 into class_table
    natoms: np.ndarray  # (N,) int32

    @classmethod
    def from_keys(cls, keys, natoms) -> "DatasetIndex":
        table, codes = np.unique(np.asarray(keys, dtype=str), return_inverse=True)
        return cls(table, codes.astype(np.int32).reshape(-1), np.asarray(natoms, dtype=np.int32))

    def __len__(self):
        return int(self.class_codes.shape[0])

    def class_keys(self) -> np.ndarray:
        return self.class_table[self.class_codes]

    def save(self, path, fingerprint: str):
        from fastcsi.utils import atomic_path

        with atomic_path(path) as tmp:
            np.savez(tmp, format=np.array(INDEX_FORMAT), fingerprint=np.array(fingerprint),
                     class_table=self.class_table, class_codes=self.class_codes, natoms=self.natoms)

    @classmethod
    def load(cls, path, fingerprint: str, length: int) -> "DatasetIndex | None":
        """The index in ``path`` when it is whole and belongs to ``fingerprint``; else None."""
        try:
            with np.load(path, allow_pickle=False) as npz:
                if str(npz["format"]) != INDEX_FORMAT or str(npz["fingerprint"]) != fingerprint:
                    return None
                index = cls(npz["class_table"], npz["class_codes"], npz["natoms"])
        except Exception:  # missing, half-copied or foreign: rebuilt, never trusted
            return None
        if len(index) != length or index.natoms.shape != (length,) or (
                length and (index.class_codes.min() < 0 or index.class_codes.max() >= len(index.class_table))):
            return None
        return index


def index_path(dataset) -> Path | None:
    root = cache_root()
    return None if root is None else root / "index" / f"{dataset.format}-{dataset.fingerprint}.npz"


def load_index(dataset) -> DatasetIndex | None:
    """The stored index of one dataset file, or None."""
    path = index_path(dataset)
    if path is None or not path.exists():
        return None
    return DatasetIndex.load(path, dataset.fingerprint, len(dataset))


def store_index(dataset, index: DatasetIndex) -> Path | None:
    """Write ``index`` for ``dataset`` into the cache; a cache that cannot be written is said once
    and skipped (the index is then rebuilt next time), never an error of the command."""
    path = index_path(dataset)
    if path is None:
        return None
    try:
        index.save(path, dataset.fingerprint)
    except OSError as exc:
        warnings.warn(f"dataset index not kept: cannot write {path} ({exc.strerror or exc}); set "
                      f"{CACHE_ENV} to a writable directory (or 'off')", stacklevel=2)
        return None
    return path


def file_index(dataset) -> DatasetIndex:
    """The index of one dataset file (a reader with ``_scan_headers``): stored, or built and stored."""
    index = load_index(dataset)
    if index is None:
        keys, natoms = dataset._scan_headers()
        index = DatasetIndex.from_keys(keys, natoms)
        store_index(dataset, index)
    return index


def indexable_files(dataset) -> list:
    """The dataset files under ``dataset`` whose class keys and atom counts come from a header pass."""
    children = getattr(dataset, "children", None)
    if children is not None:
        return [f for c in children for f in indexable_files(c)]
    return [dataset] if hasattr(dataset, "_scan_headers") else []


def _scan_part(dataset, start, stop):
    keys, natoms = dataset._scan_headers(start, stop) if dataset.ranged_scan else dataset._scan_headers()
    return np.asarray(keys, dtype=str), np.asarray(natoms, dtype=np.int64)


def _plan_parts(datasets, workers: int, min_part: int):
    """(dataset number, start, stop) pieces: whole shards when there are enough of them to keep
    every worker busy, else shards cut into entry ranges of at least ``min_part`` entries."""
    total = sum(len(d) for d in datasets)
    target = max(min_part, -(-total // max(1, 4 * workers)))
    parts = []
    for k, d in enumerate(datasets):
        n = len(d)
        pieces = max(1, min(-(-n // target), -(-n // min_part))) if d.ranged_scan else 1
        bounds = np.linspace(0, n, pieces + 1).astype(int)
        parts += [(k, int(a), int(b)) for a, b in zip(bounds[:-1], bounds[1:]) if b > a or n == 0]
    return parts


def build_indices(dataset, workers: int = 1, progress=None, min_part: int = 20_000, group=None) -> dict:
    """Build and store the index of every file of ``dataset`` that has none, with ``workers``
    processes. Returns ``{"files", "built", "entries_built", "paths"}`` (this process's files). ``progress(n)``
    is called with the entries done as parts finish.

    ``group``: the ranks of a torchrun job (a :class:`fastcsi.distributed.DistContext`: ``rank``,
    ``world_size``, ``raise_if_any_failed(error)``, ``all_gather_object(obj) -> list``). The ranks' caches
    may differ (one per node, some already holding indices), so they agree on the files that any rank
    lacks, by fingerprint; each rank builds every ``world_size``-th of those, the ranks exchange what they
    built keyed by fingerprint, and every rank stores the ones it lacked (idempotent atomic writes, so a
    cache directory shared by the ranks of a node is fine)."""
    files = indexable_files(dataset)
    missing = [d for d in files if load_index(d) is None]
    if group is None:
        built = {d.fingerprint: index for d, index in zip(missing, _build(missing, workers, progress, min_part).values())}
    else:
        built = _build_across_ranks(dataset, files, missing, group, workers, progress, min_part)
    paths = []
    for d in missing:
        d._header_index = built[d.fingerprint]
        paths.append(store_index(d, built[d.fingerprint]))
    return {"files": len(files), "built": len(missing), "entries_built": int(sum(len(d) for d in missing)),
            "paths": [str(p) for p in paths if p is not None]}


def _build_across_ranks(dataset, files, missing, group, workers, progress, min_part) -> dict:
    """``{fingerprint: DatasetIndex}`` for every file that some rank lacks, built shared among the ranks."""
    from fastcsi.errors import FastCSIError

    wanted = set().union(*group.all_gather_object([d.fingerprint for d in missing]))
    # one order on every rank (the sorted fingerprints), so the ranks' shares neither overlap nor leave a gap
    by_fingerprint = {d.fingerprint: d for d in files}
    share = [by_fingerprint.get(f) for f in sorted(wanted)[group.rank :: group.world_size]]
    error = None
    built = {}
    try:
        if None in share:
            raise FastCSIError(f"{dataset.path}: the ranks see different dataset files (rank {group.rank} lacks one "
                               "another rank needs); give every rank the same files")
        built = _build(share, workers, progress, min_part)
    except Exception as exc:  # every rank must reach the exchange, or the healthy ones wait forever
        error = exc if isinstance(exc, FastCSIError) else FastCSIError(
            f"{dataset.path}: building the index failed on rank {group.rank} ({type(exc).__name__}: {exc})")
    group.raise_if_any_failed(error)
    mine = {share[k].fingerprint: (i.class_table, i.class_codes, i.natoms) for k, i in built.items()}
    return {f: DatasetIndex(*arrays) for part in group.all_gather_object(mine) for f, arrays in part.items()}


def _build(missing, workers, progress, min_part) -> dict:
    """``{position in missing: DatasetIndex}`` built with ``workers`` processes."""
    results = {k: [] for k in range(len(missing))}
    parts = _plan_parts(missing, workers, min_part)
    if workers <= 1 or len(parts) <= 1:
        for k, start, stop in parts:
            results[k].append((start, _scan_part(missing[k], start, stop)))
            if progress:
                progress(stop - start)
    else:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        # fork: the workers inherit the opened readers (their handles reopen per process)
        context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(_scan_part, missing[k], start, stop): (k, start, stop) for k, start, stop in parts}
            for future in as_completed(futures):
                k, start, stop = futures[future]
                results[k].append((start, future.result()))
                if progress:
                    progress(stop - start)
    built = {}
    for k in range(len(missing)):
        pieces = [piece for _, piece in sorted(results[k], key=lambda item: item[0])]
        keys = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, dtype=str)
        natoms = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, dtype=np.int64)
        built[k] = DatasetIndex.from_keys(keys, natoms)
    return built


def metadata_natoms(directory, length: int) -> np.ndarray | None:
    """fairchem's ``metadata.npz`` atom counts for a directory of ``length`` entries, or None."""
    path = Path(directory) / "metadata.npz"
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            natoms = np.asarray(npz["natoms"]).reshape(-1)
    except Exception:
        return None
    if natoms.shape != (length,) or natoms.dtype.kind not in "iu" or (length and natoms.min() < 1):
        return None
    return natoms.astype(np.int64)
