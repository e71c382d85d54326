"""fairchem LMDB reader (OC20/OC22 S2EF): values are pickled torch_geometric ``Data`` objects.

They are read without torch_geometric and without running arbitrary pickles: fastcsi's allow-list
unpickler (:mod:`fastcsi.safe_pickle`: torch's tensor rebuild functions, ``OrderedDict`` and plain
containers, numpy scalars/arrays) with stand-ins for ``Data``, its attribute classes and storage,
which raises :class:`FastCSIError` naming the file and key for anything else. The serialized
tensor storages inside are decoded with ``torch.load(weights_only=True)``, itself restricted.

Both layouts are handled: PyG 2 (fields in ``_store._mapping``) and PyG 1.x (fields directly in
``__dict__``). A directory of ``*.lmdb`` shards reads as one dataset (see ``detect``).
"""
from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np

from fastcsi.data.base import Dataset, HeaderIndexed
from fastcsi.data.structure import Structure
from fastcsi.errors import FastCSIError
from fastcsi.safe_pickle import AllowListUnpickler

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


class RestrictedUnpickler(AllowListUnpickler):
    """fastcsi's one allow-list unpickler (:mod:`fastcsi.safe_pickle`: torch's rebuilds, plain
    containers, numpy) plus what a fairchem LMDB entry holds: stand-ins for PyG's classes and
    storages decoded by ``torch.load(weights_only=True)``. Any other global is refused instead of
    recorded: an entry is data, and an object of any other class means the file is not what it
    claims. ``lazy=True`` leaves tensors undecoded."""

    def __init__(self, data: bytes, where: str, lazy: bool = False):
        super().__init__(io.BytesIO(data))
        self.where = where
        self.lazy = lazy

    def extra_global(self, module, name):
        if (module, name) in _STAND_INS:
            return _STAND_INS[(module, name)]
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _safe_rebuild_tensor_v2
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return _LazyStorage if self.lazy else _safe_load_from_bytes
        return None

    def unknown_global(self, module, name):
        raise FastCSIError(
            f"{self.where}: unexpected object {module}.{name} in the pickled entry; refusing to load it"
        )


class _TensorShape:
    """What the header pass keeps of a tensor: its shape (from the rebuild arguments), no bytes."""

    __slots__ = ("shape",)

    def __init__(self, storage, storage_offset, size, *rest):
        self.shape = tuple(size)


class HeaderUnpickler(RestrictedUnpickler):
    """The restricted unpickler for class keys and atom counts: tensors become their shapes and
    storages are never decoded (a pickle has no index to skip them, so their bytes are still read)."""

    def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
            return _TensorShape
        if (module, name) == ("torch.storage", "_load_from_bytes"):
            return len
        return super().find_class(module, name)


def _key_patterns(name: str):
    raw = name.encode("ascii")
    # SHORT_BINUNICODE (protocol 4+) and BINUNICODE (protocols 2-3, PyG 1.x files)
    return (b"\x8c" + bytes([len(raw)]) + raw, b"X" + len(raw).to_bytes(4, "little") + raw)


_NATOMS_KEYS, _SID_KEYS = _key_patterns("natoms"), _key_patterns("sid")


def _int_after_key(raw: bytes, patterns) -> int | None:
    """The plain int that a pickled dict key ``patterns`` maps to, read from the bytes; None when
    the key is absent or maps to anything but an int opcode (then the caller unpickles).

    Searched from the end, where fairchem's scalar fields follow the tensors. A false hit inside a
    tensor's bytes needs 8 to 11 given bytes followed by an int opcode (odds ~1e-19 per offset), so
    the search is not repeated to prove the key unique: that would double its cost."""
    for pattern in patterns:
        at = raw.rfind(pattern)
        if at < 0:
            continue
        at += len(pattern)
        op = raw[at:at + 1]
        if op == b"\x94":  # MEMOIZE
            at += 1
        elif op == b"q":  # BINPUT
            at += 2
        elif op == b"r":  # LONG_BINPUT
            at += 5
        op = raw[at:at + 1]
        if op == b"K":  # BININT1
            return raw[at + 1]
        if op == b"M":  # BININT2
            return int.from_bytes(raw[at + 1:at + 3], "little")
        if op == b"J":  # BININT
            return int.from_bytes(raw[at + 1:at + 5], "little", signed=True)
        if op == b"\x8a":  # LONG1
            width = raw[at + 1]
            return int.from_bytes(raw[at + 2:at + 2 + width], "little", signed=True)
        return None
    return None


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
        forget_inherited(_ENVIRONMENTS, key, lambda env: env.close())
        try:
            _ENVIRONMENTS[key] = lmdb.open(str(path), subdir=False, readonly=True, lock=False, readahead=False,
                                           meminit=False, max_readers=256)
        except lmdb.Error as exc:
            raise FastCSIError(f"{path}: not a readable LMDB file ({exc})") from None
        try:
            check_complete(_ENVIRONMENTS[key], path)
        except FastCSIError:
            _ENVIRONMENTS.pop(key).close()
            raise
    return _ENVIRONMENTS[key]


def forget_inherited(handles: dict, key, close):
    """Close the copies of ``key``'s file that a forked process inherited (py-lmdb refuses a second
    environment on a file that one it knows of still holds; closing unmaps the child's copy only)."""
    pid, path = key
    for other in [k for k in handles if k[1] == path and k[0] != pid]:
        close(handles.pop(other))


RELEASE_EVERY = 256  # entries a header pass reads between two releases of its mapped pages


class PageReleaser:
    """Drops this process's mapped pages of one file (LMDB files are read through a shared mmap).

    After a pass over every entry they would otherwise stay in the process's RSS, which a cluster
    job's memory limit counts; with the file in the page cache, every fault also maps its cached
    neighbours (fault-around), so the pass's RSS grows much faster than the bytes it reads. The data
    stays in the page cache and a later read maps it again. The file's mappings are looked up once
    (/proc/self/maps), then each call is one madvise(MADV_DONTNEED) per mapping. Linux only;
    elsewhere a call does nothing."""

    def __init__(self, path):
        import ctypes
        import ctypes.util

        self.path, self.pid = path, os.getpid()
        target = " " + str(Path(path).resolve())
        self.spans = []
        try:
            with open("/proc/self/maps") as maps:
                for line in maps:
                    if line.rstrip().endswith(target):
                        start, end = (int(x, 16) for x in line.split()[0].split("-"))
                        self.spans.append((start, end - start))
            self.madvise = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).madvise
        except OSError:
            self.spans = []
            return
        self.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)

    def __call__(self):
        if self.pid != os.getpid():  # a forked child maps the file anew
            self.__init__(self.path)
        for start, length in self.spans:
            self.madvise(start, length, 4)  # MADV_DONTNEED: read-only file pages, refetched on access


class ReleasesReadPages:
    """Mixin for readers of an mmap'd file: every ``RELEASE_EVERY`` records read, the pages mapped
    so far are dropped, so that a long stream of reads (a large sample, ``--samples all``) keeps
    the process's RSS at its working set."""

    _releaser = None
    _reads = 0

    def _count_read(self):
        self._reads += 1
        if self._reads % RELEASE_EVERY == 0:
            if self._releaser is None:
                self._releaser = PageReleaser(self.path)
            self._releaser()


def release_pages(path):
    """Drop this process's mapped pages of ``path`` now (see :class:`PageReleaser`)."""
    PageReleaser(path)()


def check_complete(env, path):
    """Refuse a truncated file: pages past its end are no error to lmdb, reading one faults (SIGBUS)."""
    needed = (env.info()["last_pgno"] + 1) * env.stat()["psize"]
    size = Path(path).stat().st_size
    if size < needed:
        raise FastCSIError(f"{path}: LMDB file is truncated ({size} bytes; its pages need {needed})")


class LmdbDataset(ReleasesReadPages, HeaderIndexed, Dataset):
    """One fairchem S2EF LMDB file: keys ``b"0"``..``b"n-1"`` (plus ``b"length"``). Energy ``y``
    (eV, kept as stored), forces ``force`` (eV/Å), ``cell`` (1,3,3) Å with pbc on all axes,
    ``tags`` kept. Class = ``sid``."""

    format = "lmdb"
    ranged_scan = True

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
        return ("_env", "_releaser")

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
        self._count_read()
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

    def _scan_headers(self, start: int = 0, stop: int | None = None):
        # Entries start..stop in one read transaction. fairchem entries store ``sid`` and ``natoms``
        # as plain ints: read straight from the pickle's bytes. Any other entry is unpickled with
        # tensors kept as shapes (storages never decoded), and once more, lazily, when its sid or
        # natoms is itself a tensor. Pickles have no index: every byte of a value is still read.
        stop = len(self) if stop is None else stop
        keys, natoms = [None] * (stop - start), np.zeros(stop - start, dtype=np.int64)
        with self._environment().begin() as txn:
            release = PageReleaser(self.path)
            for k, i in enumerate(range(start, stop)):
                raw = txn.get(str(i).encode("ascii"))
                if raw is None:
                    raise FastCSIError(f"{self.path}: entry {i}: key missing from the LMDB")
                if k % RELEASE_EVERY == RELEASE_EVERY - 1:  # RSS bounded by the pages of a few hundred entries
                    release()
                sid, count = _int_after_key(raw, _SID_KEYS), _int_after_key(raw, _NATOMS_KEYS)
                if sid is None or count is None:
                    keys[k], natoms[k] = self._unpickled_header(raw, i)
                else:
                    keys[k], natoms[k] = str(sid), count
            release()
        return keys, natoms

    def _unpickled_header(self, raw: bytes, i: int):
        where = f"{self.path}: entry {i}"
        try:
            f = entry_fields(HeaderUnpickler(raw, where).load(), where)
        except FastCSIError:
            raise
        except Exception as exc:
            raise FastCSIError(f"{where}: cannot unpickle the entry ({type(exc).__name__}: {exc})") from None
        if isinstance(f.get("sid"), _TensorShape) or isinstance(f.get("natoms"), _TensorShape):
            f = self._fields(i, lazy=True)
        key = self._class_of(f, i)
        if f.get("natoms") is not None:
            return key, int(_to_numpy(f["natoms"]).reshape(-1)[0])
        numbers = f.get("atomic_numbers")
        if isinstance(numbers, _TensorShape) and numbers.shape:
            return key, numbers.shape[0]
        if numbers is not None and not isinstance(numbers, _TensorShape):
            return key, int(_to_numpy(numbers).shape[0])
        raise FastCSIError(f"{where}: field 'atomic_numbers' missing")
