"""fairchem LMDB reader (OC20/OC22 S2EF): values are pickled torch_geometric ``Data`` objects.

They are read without torch_geometric and without running arbitrary pickles: a restricted
unpickler admits only the classes such a file holds (stand-ins for ``Data``, its attribute
classes and storage; torch's tensor rebuild functions; ``OrderedDict``; numpy scalars/arrays)
and raises :class:`FastCSIError` naming the file and key for anything else. The serialized
tensor storages inside are decoded with ``torch.load(weights_only=True)``, itself restricted.

Both layouts are handled: PyG 2 (fields in ``_store._mapping``) and PyG 1.x (fields directly in
``__dict__``). A directory of ``*.lmdb`` shards reads as one dataset (see ``detect``).
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import numpy as np

from fastcsi.data.base import Dataset, HeaderIndexed
from fastcsi.data.structure import Structure
from fastcsi.errors import FastCSIError

LMDB_MAGIC = 0xBEEFC0DE  # at byte 16 of an LMDB data file (meta page), little endian


class _PygStandIn:
    """Holds the state of a pickled torch_geometric object; knows nothing else."""


class _Data(_PygStandIn):
    pass


class _DataEdgeAttr(_PygStandIn):
    pass


class _DataTensorAttr(_PygStandIn):
    pass


class _GlobalStorage(_PygStandIn):
    pass


class _LazyTensor:
    """A tensor whose storage bytes are decoded only when asked (class keys need no positions)."""

    __slots__ = ("storage", "args")

    def __init__(self, storage, args):
        self.storage, self.args = storage, args

    def materialize(self):
        from torch._utils import _rebuild_tensor_v2

        return _rebuild_tensor_v2(_decode_storage(self.storage.raw), *self.args)


class _LazyStorage:
    __slots__ = ("raw",)

    def __init__(self, raw):
        self.raw = raw


def _decode_storage(raw: bytes):
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # old PyG files use pickle protocol 0, which torch warns about
        return torch.load(io.BytesIO(raw), weights_only=True)


def _safe_rebuild_tensor_v2(storage, *args):
    if isinstance(storage, _LazyStorage):
        return _LazyTensor(storage, args)
    from torch._utils import _rebuild_tensor_v2

    return _rebuild_tensor_v2(storage, *args)


def _safe_load_from_bytes(raw):
    return _decode_storage(raw)


_STAND_INS = {
    ("torch_geometric.data.data", "Data"): _Data,
    ("torch_geometric.data.data", "DataEdgeAttr"): _DataEdgeAttr,
    ("torch_geometric.data.data", "DataTensorAttr"): _DataTensorAttr,
    ("torch_geometric.data.storage", "GlobalStorage"): _GlobalStorage,
}


class RestrictedUnpickler(pickle.Unpickler):
    """Admits only what a fairchem LMDB entry holds. ``lazy=True`` leaves tensors undecoded."""

    def __init__(self, data: bytes, where: str, lazy: bool = False):
        super().__init__(io.BytesIO(data))
        self.where = where
        self.lazy = lazy

    def find_class(self, module, name):
        if (module, name) in _STAND_INS:
            return _STAND_INS[(module, name)]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _safe_rebuild_tensor_v2
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _LazyStorage if self.lazy else _safe_load_from_bytes
        if (module, name) == ("collections", "OrderedDict"):
            import collections

            return collections.OrderedDict
        if module in ("numpy.core.multiarray", "numpy._core.multiarray") and name in ("scalar", "_reconstruct"):
            import importlib

            # numpy 2 moved numpy.core to numpy._core; pickles name either.
            multiarray = importlib.import_module("numpy._core.multiarray" if hasattr(np, "_core") else module)
            return getattr(multiarray, name)
        if (module, name) in (("numpy", "dtype"), ("numpy", "ndarray")):
            return getattr(np, name)
        raise FastCSIError(
            f"{self.where}: unexpected object {module}.{name} in the pickled entry; refusing to load it"
        )


def unpickle_entry(data: bytes, where: str, lazy: bool = False):
    try:
        return RestrictedUnpickler(data, where, lazy).load()
    except FastCSIError:
        raise
    except Exception as exc:  # truncated/garbage payloads raise many different types
        raise FastCSIError(f"{where}: cannot unpickle the entry ({type(exc).__name__}: {exc})") from None


def entry_fields(obj, where: str) -> dict:
    """The field dict of a PyG 2 (``_store._mapping``) or PyG 1.x (``__dict__``) Data stand-in."""
    if isinstance(obj, dict):
        return obj
    if not isinstance(obj, _Data):
        raise FastCSIError(f"{where}: entry is a {type(obj).__name__}, not a torch_geometric Data object")
    state = obj.__dict__
    store = state.get("_store")
    if store is not None:
        mapping = getattr(store, "__dict__", {}).get("_mapping")
        if not isinstance(mapping, dict):
            raise FastCSIError(f"{where}: PyG 2 Data without a field mapping in its store")
        return mapping
    return state


def _to_numpy(value):
    if isinstance(value, _LazyTensor):
        value = value.materialize()
    if hasattr(value, "numpy"):
        return value.detach().cpu().numpy()
    return np.asarray(value)


_ENVIRONMENTS = {}  # (pid, resolved path) -> lmdb.Environment


def open_lmdb(path):
    """A read-only environment, shared per process: py-lmdb refuses to open one file twice."""
    import lmdb

    key = (os.getpid(), str(Path(path).resolve()))
    if key not in _ENVIRONMENTS:
        try:
            _ENVIRONMENTS[key] = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False,
                                           meminit=False, max_readers=256)
        except lmdb.Error as exc:
            raise FastCSIError(f"{path}: not a readable LMDB file ({exc})") from None
        env = _ENVIRONMENTS[key]
        # pages past the end of a truncated file are not an error to lmdb: reading one faults (SIGBUS)
        needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
        size = Path(path).stat().st_size
        if size < needed:
            env.close()
            del _ENVIRONMENTS[key]
            raise FastCSIError(f"{path}: LMDB file is truncated ({size} bytes; its pages need {needed})")
    return _ENVIRONMENTS[key]


class LmdbDataset(HeaderIndexed, Dataset):
    """One fairchem S2EF LMDB file: keys ``b"0"``..``b"n-1"`` (plus ``b"length"``). Energy ``y``
    (eV, kept as stored), forces ``force`` (eV/Å), ``cell`` (1,3,3) Å with pbc on all axes,
    ``tags`` kept. Class = ``sid``."""

    format = "lmdb"

    def __init__(self, path, energy_key=None, forces_key=None, **options):
        super().__init__(path, energy_key=energy_key, forces_key=forces_key, **options)
        self.energy_key, self.forces_key = energy_key, forces_key
        self._env = None
        env = self._environment()
        with env.begin() as txn:
            raw_length = txn.get(b"length")
            if raw_length is not None:
                self._length = int(unpickle_entry(raw_length, f"{self.path}: key 'length'"))
            else:
                self._length = int(env.stat()["entries"])
            if self._length and txn.get(b"0") is None:
                raise FastCSIError(f"{self.path}: LMDB has no key '0'; not a fairchem S2EF layout")
        first = self._fields(0, lazy=True) if self._length else {}
        stored = "OC22 total DFT energies" if "oc22" in first else "energies"
        self.units_note = (
            f"none: {stored} kept as stored (eV, key {self._energy_name(first)!r}); forces eV/Å; positions Å"
        )

    def _environment(self):
        return self._opened("_env", lambda: open_lmdb(self.path))

    def _handle_attributes(self):
        # closing is letting go: the environment is shared by every dataset on this file in the process
        return ("_env",)

    def __len__(self):
        return self._length

    def _fields(self, i, lazy=False):
        where = f"{self.path}: entry {i}"
        with self._environment().begin() as txn:
            raw = txn.get(str(i).encode("ascii"))
        if raw is None:
            raise FastCSIError(f"{where}: key missing from the LMDB")
        return entry_fields(unpickle_entry(raw, where, lazy=lazy), where)

    def _energy_name(self, fields):
        if self.energy_key:
            return self.energy_key
        return next((k for k in ("y", "energy") if k in fields), "y")

    def _forces_name(self, fields):
        if self.forces_key:
            return self.forces_key
        return next((k for k in ("force", "forces") if k in fields), "force")

    def _read(self, i):
        where = f"{self.path}: entry {i}"
        f = self._fields(i)
        for key in ("pos", "atomic_numbers"):
            if key not in f or f[key] is None:
                raise FastCSIError(f"{where}: field {key!r} missing")
        numbers = np.rint(_to_numpy(f["atomic_numbers"])).astype(np.int64)
        pos = _to_numpy(f["pos"])
        cell = np.zeros((3, 3))
        pbc = np.zeros(3, dtype=bool)
        if f.get("cell") is not None:
            cell = _to_numpy(f["cell"]).reshape(3, 3)
            pbc = _to_numpy(f["pbc"]).reshape(-1) if f.get("pbc") is not None else np.ones(3, dtype=bool)
        energy = forces = None
        e_name, f_name = self._energy_name(f), self._forces_name(f)
        if f.get(e_name) is not None:
            energy = float(_to_numpy(f[e_name]).reshape(-1)[0])
        if f.get(f_name) is not None:
            forces = _to_numpy(f[f_name])
        tags = _to_numpy(f["tags"]) if f.get("tags") is not None else None
        return Structure(numbers, pos, cell=cell, pbc=pbc, energy=energy, forces=forces, tags=tags,
                         class_key=self._class_of(f, i), id=str(i))

    @staticmethod
    def _class_of(fields, i):
        sid = fields.get("sid")
        if sid is None:
            return str(i)
        value = _to_numpy(sid).reshape(-1)
        return str(value[0].item() if value.size == 1 else value.tolist())

    def _scan_headers(self):
        # One pass over the entries without decoding any tensor storage (positions stay bytes).
        keys, natoms = [], []
        for i in range(len(self)):
            f = self._fields(i, lazy=True)
            keys.append(self._class_of(f, i))
            if f.get("natoms") is not None:
                natoms.append(int(_to_numpy(f["natoms"]).reshape(-1)[0]))
            else:
                natoms.append(int(_to_numpy(f["atomic_numbers"]).shape[0]))
        return keys, natoms
