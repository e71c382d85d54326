"""Content sniffing and :func:`open_dataset`.

Files are told apart by their bytes, not their names: HDF5 by magic then by group layout, LMDB by
the meta-page magic (then fairchem S2EF or ASE-LMDB by its keys), npz by its array keys, SQLite by its header, ASE trajectories by the ulm
magic, text and JSON by their first lines. Directories read as one dataset when all the
structure files in them share one format. ``format=`` overrides sniffing.
"""
from __future__ import annotations

import gzip
import inspect
import json
import struct
from pathlib import Path

from fastcsi.data.ase_readers import (
    AseDbDataset, AseIoDataset, ExtxyzDataset, MatbenchDataset, Qm9XyzDataset, TrajDataset, looks_like_gdb9,
)
from fastcsi.data.aselmdb_reader import AseLmdbDataset, lmdb_layout
from fastcsi.data.base import ConcatDataset, Dataset
from fastcsi.data.hdf5_readers import (
    H5_ERRORS, ANI1Dataset, ANI1xDataset, ANI2xDataset, SpiceDataset, Transition1xDataset, first_line, open_h5,
)
from fastcsi.data.lmdb_reader import LMDB_MAGIC, LmdbDataset
from fastcsi.data.npz_readers import RMD17Dataset, SGDMLDataset, npz_keys
from fastcsi.errors import FastCSIError

READERS = {
    "ani1x": ANI1xDataset,
    "ani1": ANI1Dataset,
    "ani2x": ANI2xDataset,
    "t1x": Transition1xDataset,
    "spice": SpiceDataset,
    "rmd17": RMD17Dataset,
    "sgdml": SGDMLDataset,
    "lmdb": LmdbDataset,
    "aselmdb": AseLmdbDataset,
    "extxyz": ExtxyzDataset,
    "ase-db": AseDbDataset,
    "traj": TrajDataset,
    "cif": AseIoDataset,
    "ase": AseIoDataset,
    "qm9-xyz": Qm9XyzDataset,
    "matbench": MatbenchDataset,
}
ALIASES = {"xyz": "extxyz", "db": "ase-db", "ani-1x": "ani1x", "ani-2x": "ani2x", "transition1x": "t1x",
           "md17": "sgdml", "md22": "sgdml", "oc20": "lmdb", "oc22": "lmdb", "ase-lmdb": "aselmdb", "qm9": "qm9-xyz"}
# Files that are recognised but hold no structures (property tables, logs, documentation).
NOT_STRUCTURES = {
    "property-table": "a property table (no structures); join it to structures by id instead",
    "vasp-oszicar": "a VASP OSZICAR log (energies per ionic step, no structures)",
    "document": "a text document (no structures)",
}
FORMATS = sorted(READERS) + sorted(NOT_STRUCTURES)

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_SQLITE_MAGIC = b"SQLite format 3\x00"
_ULM_MAGIC = b"- of Ulm"
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGIC = b"PK\x03\x04"


def _hdf5_layout(path: Path) -> str:
    try:
        return _hdf5_layout_of(path)
    except H5_ERRORS as exc:
        raise FastCSIError(f"{path}: cannot read the HDF5 file's groups ({first_line(exc)}); the file is damaged") from None


def _hdf5_layout_of(path: Path) -> str:
    with open_h5(path) as h5:
        keys = list(h5.keys())
        if keys and set(keys) <= set(Transition1xDataset.SPLITS):
            return "t1x"
        for name in keys:
            group = h5[name]
            if not hasattr(group, "keys"):
                continue
            if "conformations" in group:
                return "spice"
            if "coordinates" in group and "atomic_numbers" in group:
                return "ani1x"
            if "coordinates" in group and "species" in group and group["species"].ndim == 2:
                return "ani2x"
            for child in group.values():
                if hasattr(child, "keys") and "species" in child and "coordinates" in child:
                    return "ani1"
            break
    raise FastCSIError(f"{path}: HDF5 layout not recognised (top-level groups: {keys[:8]})")


def _json_kind(doc, path) -> str:
    if isinstance(doc, dict):
        if "ids" in doc and "nextid" in doc:
            return "ase-db"
        if {"columns", "data"} <= set(doc):
            data = doc.get("data") or [[]]
            if any(isinstance(v, dict) and "lattice" in v and "sites" in v for v in data[0]):
                return "matbench"
    return "property-table"


def _sniff_text(path: Path, head: bytes) -> str:
    text = head.decode("utf-8", "replace")
    stripped = text.lstrip()
    lines = [ln for ln in text.splitlines()]
    if stripped.startswith("{") or stripped.startswith("["):
        try:
            with open(path) as fh:
                return _json_kind(json.load(fh), path)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise FastCSIError(f"{path}: looks like JSON but does not parse (truncated or corrupt?)") from None
    if looks_like_gdb9(text):
        return "qm9-xyz"
    if lines and lines[0].strip().isdigit():
        return "extxyz"
    if lines and lines[0].split()[:3] == ["N", "E", "dE"]:
        return "vasp-oszicar"
    if any(ln.startswith("data_") for ln in lines) and ("_cell_length_a" in text or "_atom_site_" in text):
        return "cif"
    if lines and "," in lines[0] and len(lines) > 1 and lines[0].count(",") == lines[1].count(","):
        return "property-table"
    if path.suffix.lower() in (".md", ".txt", ".rst"):
        return "document"
    return ""


def _sniff_file(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            head = fh.read(4096)
    except IsADirectoryError:
        return _sniff_directory(path)
    except OSError as exc:
        raise FastCSIError(f"{path}: cannot read the file ({exc})") from None
    if not head:
        raise FastCSIError(f"{path}: file is empty")
    if head.startswith(_HDF5_MAGIC):
        return _hdf5_layout(path)
    if len(head) >= 20 and struct.unpack_from("<I", head, 16)[0] == LMDB_MAGIC:
        return lmdb_layout(path)
    if head.startswith(_SQLITE_MAGIC):
        return "ase-db"
    if head.startswith(_ULM_MAGIC):
        return "traj"
    if head.startswith(_ZIP_MAGIC):
        keys = set(npz_keys(path))
        if {"nuclear_charges", "coords"} <= keys:
            return "rmd17"
        if {"z", "R"} <= keys:
            return "sgdml"
        raise FastCSIError(f"{path}: npz keys {sorted(keys)} match no known layout (rMD17 or sGDML)")
    if head.startswith(_GZIP_MAGIC):
        try:
            with gzip.open(path, "rt") as fh:
                return _json_kind(json.load(fh), path)
        except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FastCSIError(f"{path}: gzip file is not readable JSON ({exc})") from None
    if b"\x00" not in head:
        kind = _sniff_text(path, head)
        if kind:
            return kind
    try:
        from ase.io.formats import filetype

        kind = filetype(str(path), guess=False)
    except Exception:
        kind = None
    if kind in ("cif",):
        return "cif"
    if kind:
        return "ase"
    raise FastCSIError(f"{path}: unknown or unsupported file format (pass --format, or format= in the API, one of {', '.join(FORMATS)})")


def _directory_members(path: Path):
    return sorted(p for p in path.iterdir() if not p.name.startswith(".") and p.is_file()
                  and not p.name.endswith("-lock"))


def _directory_kinds(path: Path) -> dict:
    """format -> member files, for the structure files of a directory (others are skipped)."""
    kinds = {}
    for member in _directory_members(path):
        try:
            kind = _sniff_file(member)
        except FastCSIError:
            continue
        if kind not in NOT_STRUCTURES:
            kinds.setdefault(kind, []).append(member)
    return kinds


def _sniff_directory(path: Path, kinds: dict | None = None) -> str:
    kinds = _directory_kinds(path) if kinds is None else kinds
    if len(kinds) == 1:
        return next(iter(kinds))
    if not kinds:
        raise FastCSIError(f"{path}: directory holds no recognised structure files")
    raise FastCSIError(f"{path}: directory mixes formats {sorted(kinds)}; open one file or pass --format (format= in the API)")


def detect_format(path) -> str:
    """The format name of ``path`` (a file or a directory), from its content."""
    path = Path(path)
    if not path.exists():
        raise FastCSIError(f"{path}: file not found")
    if path.is_dir():
        return _sniff_directory(path)
    return _sniff_file(path)


def _reader_options(cls, fmt: str, path, options: dict) -> dict:
    accepted = set()
    for klass in cls.__mro__:
        if "__init__" in vars(klass):
            accepted |= set(inspect.signature(klass.__init__).parameters) - {"self", "path", "options"}
    unknown = sorted(set(options) - accepted)
    if unknown:
        raise FastCSIError(f"{path}: option(s) {unknown} do not apply to format {fmt!r} (accepted: {sorted(accepted)})")
    return options


def _open_file(path: Path, fmt: str, options: dict) -> Dataset:
    if fmt in NOT_STRUCTURES:
        raise FastCSIError(f"{path}: this is {NOT_STRUCTURES[fmt]}")
    cls = READERS[fmt]
    opts = dict(options)
    if cls is AseIoDataset and fmt == "cif":
        opts.setdefault("ase_format", "cif")
    return cls(path, **_reader_options(cls, fmt, path, opts))


def _check_format(path, fmt, requested):
    if fmt not in READERS and fmt not in NOT_STRUCTURES:
        raise FastCSIError(f"{path}: unknown format {requested!r} (choose from {', '.join(FORMATS)})")


def open_dataset(path, format: str | None = None, **options) -> Dataset:
    """Open ``path`` (file or directory) as a :class:`Dataset`.

    ``format`` overrides content sniffing (see ``FORMATS``). Options: ``energy_key``,
    ``forces_key``, ``energy_unit`` (ASE/npz formats), ``level`` (ANI-1x / Transition-1x level of
    theory), ``split`` (Transition-1x: data|train|val|test), ``skip_unreadable`` (HDF5 formats:
    leave out groups of a damaged file that cannot be read, listing them in ``ds.skipped``, instead
    of refusing the file). Options left at None are ignored.
    """
    path = Path(path)
    options = {k: v for k, v in options.items() if v is not None and v is not False}
    try:
        return _open_dataset(path, format, options)
    except OSError as exc:  # permissions, a vanished mount...: the user's environment, not a bug
        where = exc.filename or path
        raise FastCSIError(f"{where}: cannot read ({exc.strerror or type(exc).__name__})") from None


def _open_dataset(path: Path, format, options: dict) -> Dataset:
    if not path.exists():
        raise FastCSIError(f"{path}: file not found")
    if not path.is_dir():
        fmt = ALIASES.get(format, format) if format else detect_format(path)
        _check_format(path, fmt, format)
        return _open_file(path, fmt, options)
    kinds = _directory_kinds(path)
    fmt = ALIASES.get(format, format) if format else _sniff_directory(path, kinds)
    _check_format(path, fmt, format)
    members = kinds.get(fmt, [])
    if not members:
        raise FastCSIError(f"{path}: directory holds no {fmt!r} files")
    return ConcatDataset(path, [_open_file(m, fmt, options) for m in members], fmt, **options)
