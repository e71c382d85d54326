"""fairchem's ASE-LMDB (``*.aselmdb``: OMat24, OMol25, ODAC25, fairchem v2 releases), read through
``ase.db.connect`` with the ``ase-db-backends`` package, lazily, one row per ``ds[i]``.

Layout (``ase_db_backends.aselmdb``): one LMDB file (no subdirectory); each row is a key
``b"<id>"`` holding zlib-compressed ASE JSON (``numbers``, ``positions``, ``cell``, ``pbc``, the
calculator results ``energy``/``forces``/``stress``, ``key_value_pairs``, ``data``); ``b"nextid"``
and ``b"deleted_ids"`` give the row ids. Opened read-only, without a lock file and without
readahead, so a read-only copy works and pages are read only when a row asks for them.

Labels: energy (eV), forces (eV/Å) and stress (eV/Å³, Voigt order xx yy zz yz xz xy, kept as the
targets ``stress_xx`` ...) from the stored calculator results, as fairchem writes them.

Class key (what balanced sampling balances over), the first present of, in ``key_value_pairs``
then in ``data`` (fairchem's readers copy ``data`` into ``atoms.info``):
``class_key`` (fastcsi convert), ``sid`` (OMat24, ODAC, OC20/OC22 conversions: the system id),
``system_id``, ``data_id`` (OMol25: the subset a molecule comes from), else the formula.

Header pass (class keys, atom counts): a row is one compressed JSON document, so positions and
forces are decompressed with the header; only their conversion to arrays is skipped.
"""
from __future__ import annotations

import json
import zlib

import numpy as np

from fastcsi.data.ase_readers import _AseLabels
from fastcsi.data.base import Dataset, HeaderIndexed, formula_of, given_options
from fastcsi.data.lmdb_reader import RELEASE_EVERY, PageReleaser, ReleasesReadPages, check_complete, forget_inherited
from fastcsi.errors import FastCSIError

# in order of preference; see the module docstring for which dataset uses which
ASELMDB_CLASS_KEYS = ("class_key", "sid", "system_id", "data_id")
STRESS_COMPONENTS = ("xx", "yy", "zz", "yz", "xz", "xy")
RESERVED_KEYS = (b"nextid", b"deleted_ids", b"metadata")


_DATABASES = {}  # (pid, resolved path) -> ase_db_backends LMDBDatabase


def open_aselmdb(path):
    """A read-only ASE-LMDB connection, shared per process: py-lmdb refuses to open one file twice."""
    import os
    from pathlib import Path

    key = (os.getpid(), str(Path(path).resolve()))
    if key not in _DATABASES:
        forget_inherited(_DATABASES, key, lambda db: db._env is not None and db._env.close())
        try:
            import ase.db
            import ase_db_backends.aselmdb  # noqa: F401  (checked here to name the package)
        except ImportError:
            raise FastCSIError(
                f"{path}: reading ASE-LMDB needs the ase-db-backends package (pip install ase-db-backends)"
            ) from None
        _check_whole_file(path)  # before ase reads its ids: a page past the end of the file faults
        try:
            db = ase.db.connect(str(path), type="aselmdb", readonly=True, readahead=False, use_lock_file=False)
        except Exception as exc:
            raise FastCSIError(f"{path}: not a readable ASE-LMDB file ({type(exc).__name__}: {exc})") from None
        _DATABASES[key] = db
    return _DATABASES[key]


def _check_whole_file(path):
    import lmdb

    try:
        env = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False)
    except lmdb.Error as exc:
        raise FastCSIError(f"{path}: not a readable LMDB file ({exc})") from None
    try:
        check_complete(env, path)
    finally:
        env.close()


def lmdb_layout(path) -> str:
    """``"aselmdb"`` for an ASE-LMDB file, ``"lmdb"`` for a fairchem S2EF one (both LMDB files)."""
    import os
    from pathlib import Path

    path = Path(path)
    if path.suffix == ".aselmdb" or (os.getpid(), str(path.resolve())) in _DATABASES:
        return "aselmdb"
    from fastcsi.data.lmdb_reader import _ENVIRONMENTS, open_lmdb

    env = open_lmdb(path)
    with env.begin() as txn:
        ase_rows = txn.get(b"nextid") is not None and txn.get(b"0") is None and txn.get(b"length") is None
    if ase_rows:  # hand the file over to ase: it opens its own environment
        _ENVIRONMENTS.pop((os.getpid(), str(path.resolve()))).close()
        return "aselmdb"
    return "lmdb"


def _class_of(doc: dict, numbers) -> str:
    for where in ("key_value_pairs", "data"):
        values = doc.get(where) or {}
        if not isinstance(values, dict):
            continue
        for key in ASELMDB_CLASS_KEYS:
            value = values.get(key)
            if value is not None and not isinstance(value, (dict, list)):
                return str(value)
    return formula_of(numbers)


def _numbers_of(doc: dict, where: str):
    numbers = doc.get("numbers")
    if isinstance(numbers, dict) and "__ndarray__" in numbers:
        return numbers["__ndarray__"][2]
    if isinstance(numbers, list):
        return numbers
    raise FastCSIError(f"{where}: row has no atomic numbers")


class AseLmdbDataset(ReleasesReadPages, HeaderIndexed, _AseLabels, Dataset):
    """One ``*.aselmdb`` file (a directory of them reads as one dataset, see ``detect``)."""

    format = "aselmdb"
    ranged_scan = True

    def __init__(self, path, energy_key=None, forces_key=None, energy_unit=None, force_unit=None, **options):
        super().__init__(path, energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                         **given_options(force_unit=force_unit), **options)
        self._setup_labels(energy_key, forces_key, energy_unit, force_unit)
        self._db = None
        self._ids = np.asarray(self._connect().ids, dtype=np.int64)

    def _connect(self):
        return self._opened("_db", lambda: open_aselmdb(self.path))

    def _handle_attributes(self):
        # closing is letting go: the connection is shared by every dataset on this file in the process
        return ("_db", "_releaser")

    def __len__(self):
        return len(self._ids)

    def _row(self, i):
        try:
            return self._connect().get(id=int(self._ids[i]))
        except FastCSIError:
            raise
        except Exception as exc:  # zlib/JSON errors of a damaged row, a missing key...
            raise FastCSIError(
                f"{self.path}: structure {i} (row id {self._ids[i]}): cannot read the row ({type(exc).__name__}: {exc})"
            ) from None

    def _read(self, i):
        row = self._row(i)
        self._count_read()
        try:
            atoms = row.toatoms()
        except Exception as exc:
            raise FastCSIError(f"{self.path}: structure {i} (row id {self._ids[i]}): {type(exc).__name__}: {exc}") from None
        key_values = dict(row.get("key_value_pairs", {}) or {})
        data = dict(row.get("data", {}) or {})
        structure = self._structure(atoms, i, key_values, {k: v for k, v in data.items()
                                                          if k not in ASELMDB_CLASS_KEYS})
        stress = row.get("stress")
        if stress is not None:
            stress = np.asarray(stress, dtype=np.float64).reshape(-1)
            if stress.size == 9:  # a full 3x3 tensor: to Voigt order
                stress = stress.reshape(3, 3)[[0, 1, 2, 1, 0, 0], [0, 1, 2, 2, 2, 1]]
            if stress.size == 6:
                structure.targets.update({f"stress_{c}": float(v) * self._factor
                                          for c, v in zip(STRESS_COMPONENTS, stress)})
        structure.class_key = _class_of({"key_value_pairs": key_values, "data": data}, structure.atomic_numbers)
        structure.id = str(int(self._ids[i]))
        return structure

    def _scan_headers(self, start: int = 0, stop: int | None = None):
        # Rows in key order (sequential pages); each decompressed and parsed as plain JSON, with
        # none of ASE's array conversion.
        stop = len(self) if stop is None else stop
        ids = self._ids[start:stop]
        keys, natoms = [None] * len(ids), np.zeros(len(ids), dtype=np.int64)
        with self._connect().env.begin(buffers=True) as txn:
            release = PageReleaser(self.path)
            for k, row_id in enumerate(ids):
                if k % RELEASE_EVERY == RELEASE_EVERY - 1:  # RSS bounded by the pages of a few hundred rows
                    release()
                where = f"{self.path}: row id {row_id}"
                raw = txn.get(str(int(row_id)).encode("ascii"))
                if raw is None:
                    raise FastCSIError(f"{where}: row missing from the ASE-LMDB")
                try:
                    doc = json.loads(zlib.decompress(raw))
                except (zlib.error, ValueError) as exc:
                    raise FastCSIError(f"{where}: cannot decode the row ({type(exc).__name__}: {exc})") from None
                numbers = _numbers_of(doc, where)
                natoms[k] = len(numbers)
                keys[k] = _class_of(doc, numbers)
            release()
        return keys, natoms
