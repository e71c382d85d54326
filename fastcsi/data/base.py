"""The :class:`Dataset` every reader implements, and :class:`ConcatDataset` for directories.

A reader indexes its file(s) cheaply on open (counts, offsets, group names; never positions) and
reads one record per ``ds[i]``. File handles open lazily and are dropped when pickled, so each
DataLoader worker or torch.distributed rank opens its own (and a fork reopens them).
"""
from __future__ import annotations

import abc

import hashlib
import json
import os
from collections import Counter
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

from fastcsi.data.structure import Structure
from fastcsi.errors import FastCSIError

_ELEMENTS = None


def chemical_symbols() -> list:
    global _ELEMENTS
    if _ELEMENTS is None:
        from ase.data import chemical_symbols as symbols

        _ELEMENTS = list(symbols)
    return _ELEMENTS


def formula_of(numbers) -> str:
    """Hill-order formula (C, H first, then alphabetical), e.g. ``C2H6O``."""
    symbols = chemical_symbols()
    counts = Counter(symbols[int(z)] if 0 < int(z) < len(symbols) else f"Z{int(z)}" for z in numbers)
    order = [s for s in ("C", "H") if s in counts and "C" in counts] + sorted(
        s for s in counts if not ("C" in counts and s in ("C", "H"))
    )
    return "".join(f"{s}{counts[s] if counts[s] > 1 else ''}" for s in order)


def given_options(**options) -> dict:
    """``options`` less those not given (None or empty). A dataset's options are part of its fingerprint,
    which must stay the same for files opened without an option that readers gained later (caches,
    pretrain_set.json)."""
    return {k: v for k, v in options.items() if v}


class UnreadableSkipped(UserWarning):
    """A reader asked to ``skip_unreadable`` left out parts of a damaged file (listed in ``skipped``)."""


class Dataset(abc.ABC):
    """A random-access, lazily read collection of :class:`Structure` records.

    Subclasses set ``format`` and ``units_note`` and implement ``__len__``, ``_read(i)`` and
    ``class_keys``; they may override ``n_atoms_per_structure`` with a cheaper version and
    ``_close_handles`` to release what they opened.
    """

    format = "unknown"
    units_note = ""
    # keys of groups / entries a reader left out because the user asked it to skip unreadable ones
    skipped: list

    def __new__(cls, *args, **kwargs):
        self = super().__new__(cls)
        self.skipped = []
        return self

    def __init__(self, path, **options):
        self.path = Path(path)
        self.options = dict(options)
        self._pid = os.getpid()

    # --- the contract -------------------------------------------------------------------------
    @abc.abstractmethod
    def __len__(self) -> int:
        """Number of structures, known without reading them."""

    @abc.abstractmethod
    def _read(self, index: int) -> Structure:
        """Structure ``index`` (already bounds-checked) in Å / eV / eV/Å."""

    @abc.abstractmethod
    def class_keys(self) -> np.ndarray:
        """One class key per structure, computed without reading positions."""

    def __getitem__(self, index) -> Structure:
        if not isinstance(index, (int, np.integer)):
            raise TypeError(f"dataset indices must be integers, not {type(index).__name__}")
        n = len(self)
        i = int(index)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"index {int(index)} out of range for {self.path} with {n} structures")
        self._check_process()
        structure = self._read(i)
        return structure.validate(where=f"{self.path}: structure {i}")

    def __iter__(self) -> Iterator[Structure]:
        for i in range(len(self)):
            yield self[i]

    def class_codes(self):
        """``(table, codes)``: the sorted distinct class keys and, per structure, its key's position
        in them (``table[codes] == class_keys()``); what class-balanced sampling draws from."""
        return np.unique(np.asarray(self.class_keys()).astype(str), return_inverse=True)

    def n_atoms_per_structure(self) -> np.ndarray:
        """Atoms per structure. The default reads every record; readers override it cheaply."""
        return np.array([self[i].n_atoms for i in range(len(self))], dtype=np.int64)

    @property
    def fingerprint(self) -> str:
        """Stable hash of the resolved file paths, sizes, mtimes, the format and the options."""
        files = []
        for f in self.files():
            st = f.stat()
            files.append([str(f.resolve()), st.st_size, st.st_mtime_ns])
        payload = json.dumps(
            {"files": files, "format": self.format, "options": self.options}, sort_keys=True, default=str
        )
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def files(self) -> list:
        """The files this dataset reads (for the fingerprint)."""
        return [self.path]

    # --- handles ------------------------------------------------------------------------------
    def _check_process(self):
        # A handle inherited through fork is shared with the parent: reopen in the child.
        if self._pid != os.getpid():
            self._close_handles()
            self._pid = os.getpid()

    def _opened(self, name: str, opener):
        """The handle in attribute ``name``, opened by ``opener()`` on first use in this process."""
        self._check_process()
        if getattr(self, name) is None:
            setattr(self, name, opener())
        return getattr(self, name)

    def _close_handles(self):
        # let go of the handles (readers whose handles need an explicit close override this)
        for name in self._handle_attributes():
            setattr(self, name, None)

    def close(self):
        self._close_handles()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __getstate__(self):
        state = dict(self.__dict__)
        for key in self._handle_attributes():
            state[key] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._pid = os.getpid()

    def _handle_attributes(self) -> Sequence[str]:
        """Attribute names holding open handles: dropped on pickling, reopened lazily."""
        return ()

    def __repr__(self):
        return f"<{type(self).__name__} format={self.format} path={str(self.path)!r} n={len(self)}>"


class HeaderIndexed:
    """For readers whose class keys and atom counts come from one pass over entry headers (no
    positions): they implement ``_scan_headers() -> (class keys, atoms per structure)`` (with
    ``ranged_scan = True`` when it also takes ``start, stop`` entry bounds). The pass is done once
    per file and kept in the persistent index (``fastcsi.data.index``), so that a later command on
    the same file reads the index instead."""

    _header_index = None
    ranged_scan = False

    def _headers(self):
        if self._header_index is None:
            from fastcsi.data.index import file_index

            self._header_index = file_index(self)
        return self._header_index

    def class_keys(self):
        return self._headers().class_keys()

    def class_codes(self):
        index = self._headers()
        return index.class_table, index.class_codes

    def n_atoms_per_structure(self):
        return self._headers().natoms.astype(np.int64)


class ConcatDataset(Dataset):
    """Several datasets read as one (a directory of files or of LMDB shards).

    Structure ids are prefixed with the child's file name so they stay unique and stable.
    """

    def __init__(self, path, children: Sequence[Dataset], format: str, **options):
        super().__init__(path, **options)
        if not children:
            raise FastCSIError(f"{path}: directory holds no readable dataset files")
        self.children = list(children)
        self.format = format
        self.units_note = "; ".join(sorted({c.units_note for c in self.children if c.units_note}))
        self._offsets = np.cumsum([0] + [len(c) for c in self.children])

    def __len__(self):
        return int(self._offsets[-1])

    def _locate(self, i: int):
        child = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return child, i - int(self._offsets[child])

    def _read(self, index):
        child, local = self._locate(index)
        s = self.children[child][local]
        s.id = f"{self.children[child].path.name}:{s.id}"
        return s

    def class_keys(self):
        parts = [c.class_keys() for c in self.children]
        return np.concatenate(parts).astype(str) if parts else np.zeros(0, dtype=str)

    def class_codes(self):
        parts = [c.class_codes() for c in self.children]
        table = np.unique(np.concatenate([t.astype(str) for t, _ in parts]))
        codes = [np.searchsorted(table, t.astype(str))[c].astype(np.int32) for t, c in parts]
        return table, np.concatenate(codes) if codes else np.zeros(0, dtype=np.int32)

    def n_atoms_per_structure(self):
        # fairchem's metadata.npz beside the shards gives them without a pass over the entries
        from fastcsi.data.index import metadata_natoms

        natoms = metadata_natoms(self.path, len(self)) if self.path.is_dir() else None
        if natoms is not None:
            return natoms
        return np.concatenate([c.n_atoms_per_structure() for c in self.children]).astype(np.int64)

    def files(self):
        return [f for c in self.children for f in c.files()]

    @property
    def skipped(self):
        return [f"{c.path.name}:{key}" for c in self.children for key in c.skipped]

    @skipped.setter
    def skipped(self, value):  # set empty by Dataset.__new__; the children hold the real lists
        pass

    def _close_handles(self):
        for c in self.children:
            c._close_handles()
