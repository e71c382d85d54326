"""Readers for what ``ase.io`` reads, plus the text/JSON layouts around it.

- extxyz/xyz: one pass on open records each frame's byte offset and atom count (no parsing of
  atom lines); ``ds[i]`` seeks and parses that frame alone. O(file) once, then O(frame) per read.
- ASE db (SQLite or JSON): rows by id; class keys from the ``numbers`` and key-value columns only.
- ASE trajectory: ``ase.io.Trajectory`` random access.
- Other ``ase.io`` formats (cif, ...): frames counted once, read by index.
- QM9 original GDB9 xyz (``*^`` exponents, 15 properties on line 2) and MatBench
  ``matbench_*.json.gz`` (pandas split JSON with pymatgen ``Structure.as_dict()`` cells, parsed
  here without pymatgen).

Labels: energy from the calculator or from info keys ``energy, Energy, REF_energy, free_energy,
...``; forces from the calculator or array keys ``forces, REF_forces, ...``; ``energy_key`` /
``forces_key`` override. ASE formats carry eV/Å unless ``energy_unit=`` / ``force_unit=`` say otherwise (the MD22
extxyz sample stores kcal/mol under ``Energy`` without saying so).
Class: info ``class_key`` (written by ``fastcsi data convert``), else ``config_type``, else ``sid``/``system_id``, else the chemical formula.
"""
from __future__ import annotations

import gzip
import io
import json

import numpy as np

from fastcsi.data.base import Dataset, HeaderIndexed, chemical_symbols, formula_of, given_options
from fastcsi.data.structure import Structure
from fastcsi.data.units import energy_factor, force_factor, warn_if_implausible_energy
from fastcsi.errors import FastCSIError

ENERGY_KEYS = ("energy", "Energy", "REF_energy", "free_energy", "total_energy", "energy_total", "dft_energy")
FORCES_KEYS = ("forces", "REF_forces", "force", "Forces", "dft_forces")
CLASS_KEYS = ("class_key", "config_type", "sid", "system_id")  # class_key: written by fastcsi convert


def _class_from(info: dict, numbers) -> str:
    for key in CLASS_KEYS:
        if info.get(key) is not None:
            return str(info[key])
    return formula_of(numbers)


def _scalar(value):
    """A finite float from a number or size-1 numeric array; None otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return None
    try:
        arr = np.asarray(value)
    except Exception:
        return None
    if arr.size != 1 or arr.dtype.kind not in "iuf":
        return None
    return float(arr.reshape(-1)[0])


class _AseLabels:
    """Mixin: pull energy/forces/targets out of an ``ase.Atoms`` the same way for every format."""

    def _setup_labels(self, energy_key, forces_key, energy_unit, force_unit=None):
        self.energy_key, self.forces_key = energy_key, forces_key
        self._energy_unit = energy_unit
        self._factor = energy_factor(energy_unit, str(self.path)) if energy_unit else 1.0
        # forces in the energy unit per Å unless force_unit says otherwise (e.g. hartree/bohr)
        self._force_factor = force_factor(force_unit, str(self.path)) if force_unit else self._factor
        self._energy_checked = False
        if energy_unit or force_unit:
            self.units_note = (
                f"energies {energy_unit or 'eV'} -> eV (x{self._factor}), forces {force_unit or (energy_unit or 'eV') + '/Å'} "
                f"-> eV/Å (x{self._force_factor}) (energy_unit / force_unit options)"
            )
        else:
            self.units_note = ("none: ASE formats are read as Å, eV, eV/Å (pass --energy-unit / --force-unit, "
                               "energy_unit= / force_unit=, for files in other units)")

    def _structure(self, atoms, i, extra_info=None, data=None):
        """``extra_info`` is searched for labels like ``atoms.info``; ``data`` (ASE db row data,
        units unknown) only when ``energy_key``/``forces_key`` name a key in it, else its scalars
        become targets."""
        info = dict(atoms.info)
        if extra_info:
            info.update(extra_info)
        data = dict(data or {})
        if self.energy_key in data:
            info.setdefault(self.energy_key, data.pop(self.energy_key))
        if self.forces_key in data:
            atoms.arrays.setdefault(self.forces_key, np.asarray(data.pop(self.forces_key)))
        results = dict(getattr(atoms.calc, "results", {}) or {}) if atoms.calc is not None else {}
        where = f"{self.path}: structure {i}"
        energy = forces = None
        used = set()
        for key in [self.energy_key] if self.energy_key else ENERGY_KEYS:
            value = results.get(key, info.get(key))
            if value is not None:
                energy = _scalar(value)
                used.add(key)
                break
        else:
            if self.energy_key:
                raise FastCSIError(f"{where}: energy key {self.energy_key!r} not found (info keys: {sorted(info)})")
        for key in [self.forces_key] if self.forces_key else FORCES_KEYS:
            value = results.get(key) if key in results else atoms.arrays.get(key)
            if value is not None:
                forces = np.asarray(value, dtype=np.float64)
                break
        else:
            if self.forces_key:
                raise FastCSIError(f"{where}: forces key {self.forces_key!r} not found (arrays: {sorted(atoms.arrays)})")
        if energy is not None:
            energy *= self._factor
            if not self._energy_checked:  # once per dataset: a file's energies share one unit
                self._energy_checked = True
                warn_if_implausible_energy(self.path, atoms.get_atomic_numbers(), energy, self._factor,
                                           self._energy_unit)
        if forces is not None:
            forces = forces * self._force_factor
        targets = {}
        for key, value in list(info.items()) + list(data.items()):
            if key in used or key in CLASS_KEYS or key in ENERGY_KEYS:
                continue
            number = _scalar(value)
            if number is not None:
                targets[key] = number
        numbers = atoms.get_atomic_numbers()
        return Structure(
            numbers, atoms.get_positions(), cell=np.asarray(atoms.get_cell()), pbc=atoms.get_pbc(),
            energy=energy, forces=forces, targets=targets, class_key=_class_from(info, numbers), id=str(i),
            tags=atoms.get_tags() if atoms.has("tags") else None,
        )


def _ase_error(path, exc, what="read"):
    return FastCSIError(f"{path}: cannot {what} the file with ase ({type(exc).__name__}: {exc})")


class ExtxyzDataset(_AseLabels, Dataset):
    format = "extxyz"

    def __init__(self, path, energy_key=None, forces_key=None, energy_unit=None, force_unit=None, **options):
        super().__init__(path, energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                         **given_options(force_unit=force_unit), **options)
        self._setup_labels(energy_key, forces_key, energy_unit, force_unit)
        self._offsets, self._natoms, self._comments = self._scan()
        self._class_cache = None

    def _scan(self):
        offsets, natoms, comments = [], [], []
        try:
            fh = open(self.path, "rb")
        except FileNotFoundError:
            raise FastCSIError(f"{self.path}: file not found") from None
        with fh:
            position = 0
            while True:
                line = fh.readline()
                if not line:
                    break
                if not line.strip():
                    position = fh.tell()
                    continue
                frame = len(offsets)
                try:
                    n = int(line.split()[0])
                except ValueError:
                    raise FastCSIError(
                        f"{self.path}: frame {frame}: expected an atom count at byte {position}, "
                        f"found {line[:40]!r}"
                    ) from None
                comment = fh.readline()
                for _ in range(n):
                    if not fh.readline():
                        raise FastCSIError(f"{self.path}: frame {frame}: file ends inside the frame (truncated)")
                if not comment:
                    raise FastCSIError(f"{self.path}: frame {frame}: file ends inside the frame (truncated)")
                offsets.append(position)
                natoms.append(n)
                comments.append(comment.decode("utf-8", "replace").strip())
                position = fh.tell()
        return np.asarray(offsets, dtype=np.int64), np.asarray(natoms, dtype=np.int64), comments

    def __len__(self):
        return len(self._offsets)

    def n_atoms_per_structure(self):
        return self._natoms.copy()

    def _frame_text(self, i) -> str:
        with open(self.path, "rb") as fh:
            fh.seek(int(self._offsets[i]))
            lines = [fh.readline() for _ in range(int(self._natoms[i]) + 2)]
        return b"".join(lines).decode("utf-8", "replace")

    def _read(self, i):
        import ase.io

        if self._natoms[i] == 0:
            raise FastCSIError(f"{self.path}: structure {i} has zero atoms")
        try:
            atoms = ase.io.read(io.StringIO(self._frame_text(i)), format="extxyz")
        except Exception as exc:
            raise FastCSIError(f"{self.path}: structure {i}: cannot parse the frame ({type(exc).__name__}: {exc})") from None
        return self._structure(atoms, i)

    def class_keys(self):
        if self._class_cache is None:
            from ase.io.extxyz import key_val_str_to_dict

            symbols = chemical_symbols()
            keys = []
            for i, comment in enumerate(self._comments):
                try:
                    info = key_val_str_to_dict(comment)
                except Exception:
                    info = {}
                hit = next((str(info[k]) for k in CLASS_KEYS if info.get(k) is not None), None)
                if hit is None:
                    # Formula from the species column only: no coordinates are converted.
                    column = _species_column(info.get("Properties"))
                    lines = self._frame_text(i).splitlines()[2:]
                    species = [ln.split()[column] for ln in lines if ln.strip()]
                    numbers = [symbols.index(s) if s in symbols else int(s) for s in species]
                    hit = formula_of(numbers)
                keys.append(hit)
            self._class_cache = np.asarray(keys, dtype=str)
        return self._class_cache


def _species_column(properties) -> int:
    if not properties:
        return 0
    parts = str(properties).split(":")
    column = 0
    for k in range(0, len(parts) - 2, 3):
        name, count = parts[k], int(parts[k + 2])
        if name == "species":
            return column
        column += count
    return 0


class AseDbDataset(_AseLabels, Dataset):
    """ASE database (SQLite ``.db`` or JSON). Labels also from key-value pairs and ``row.data``."""

    format = "ase-db"

    def __init__(self, path, energy_key=None, forces_key=None, energy_unit=None, force_unit=None, **options):
        super().__init__(path, energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                         **given_options(force_unit=force_unit), **options)
        self._setup_labels(energy_key, forces_key, energy_unit, force_unit)
        self._db = None
        self._class_cache = None
        try:
            light = list(self._connect().select(columns=["id", "numbers", "key_value_pairs"]))
        except TypeError:  # backends without column selection
            light = list(self._connect().select())
        except FastCSIError:
            raise
        except Exception as exc:
            raise _ase_error(self.path, exc, "open the ASE database in") from None
        self._ids = np.array([row.id for row in light], dtype=np.int64)
        self._natoms = np.array([len(row.numbers) for row in light], dtype=np.int64)
        self._class_cache = np.asarray(
            [_class_from(dict(row.get("key_value_pairs", {}) or {}), row.numbers) for row in light], dtype=str
        )

    def _connect(self):
        def connect():
            import ase.db

            if self.path.suffix == ".json":
                return ase.db.connect(str(self.path), type="json")
            return ase.db.connect(str(self.path), type="db", create_indices=False)

        return self._opened("_db", connect)

    def _handle_attributes(self):
        return ("_db",)

    def __len__(self):
        return len(self._ids)

    def n_atoms_per_structure(self):
        return self._natoms.copy()

    def class_keys(self):
        return self._class_cache

    def _read(self, i):
        try:
            row = self._connect().get(id=int(self._ids[i]))
            atoms = row.toatoms()
        except Exception as exc:
            raise FastCSIError(f"{self.path}: structure {i} (row id {self._ids[i]}): {type(exc).__name__}: {exc}") from None
        s = self._structure(atoms, i, dict(row.key_value_pairs), row.get("data"))
        s.id = str(int(self._ids[i]))
        return s


class TrajDataset(HeaderIndexed, _AseLabels, Dataset):
    """ASE trajectory (``.traj``). OC20 raw trajectories store no tags: tags stay None."""

    format = "traj"

    def __init__(self, path, energy_key=None, forces_key=None, energy_unit=None, force_unit=None, **options):
        super().__init__(path, energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                         **given_options(force_unit=force_unit), **options)
        self._setup_labels(energy_key, forces_key, energy_unit, force_unit)
        self._traj = None
        self._length = len(self._trajectory())

    def _trajectory(self):
        def open_trajectory():
            from ase.io.trajectory import Trajectory

            try:
                return Trajectory(str(self.path), "r")
            except FileNotFoundError:
                raise FastCSIError(f"{self.path}: file not found") from None
            except Exception as exc:
                raise _ase_error(self.path, exc, "open the trajectory") from None

        return self._opened("_traj", open_trajectory)

    def _handle_attributes(self):
        return ("_traj",)

    def _close_handles(self):
        if self._traj is not None:
            self._traj.close()
            self._traj = None

    def __len__(self):
        return self._length

    def _atoms(self, i):
        try:
            return self._trajectory()[i]
        except Exception as exc:
            raise FastCSIError(f"{self.path}: structure {i}: cannot read the frame ({type(exc).__name__}: {exc})") from None

    def _read(self, i):
        return self._structure(self._atoms(i), i)

    def _scan_headers(self):
        # ulm frames hold `numbers` only when they change; the backend reads them lazily.
        backend = self._trajectory().backend
        numbers = None
        keys, natoms = [], []
        for i in range(len(self)):
            frame = backend[i]
            if "numbers" in frame:
                numbers = np.asarray(frame.numbers)
            info = frame.get("info", {}) if hasattr(frame, "get") else {}
            keys.append(_class_from(dict(info or {}), numbers))
            natoms.append(len(numbers))
        return keys, natoms


class AseIoDataset(_AseLabels, Dataset):
    """Any other single file ``ase.io`` reads (cif, vasp, ...): frames counted once on open."""

    format = "ase"

    def __init__(self, path, ase_format=None, energy_key=None, forces_key=None, energy_unit=None, force_unit=None, **options):
        super().__init__(path, ase_format=ase_format, energy_key=energy_key, forces_key=forces_key,
                         energy_unit=energy_unit,
                         **given_options(force_unit=force_unit), **options)
        self._setup_labels(energy_key, forces_key, energy_unit, force_unit)
        self.ase_format = ase_format
        if ase_format == "cif":
            self.format = "cif"
        import ase.io

        try:
            if ase_format == "cif":  # one structure per data block; parsing cif with ase is slow
                with open(self.path, "rb") as fh:
                    self._length = sum(1 for line in fh if line.startswith(b"data_"))
            else:
                self._length = sum(1 for _ in ase.io.iread(str(self.path), format=ase_format))
        except FileNotFoundError:
            raise FastCSIError(f"{self.path}: file not found") from None
        except Exception as exc:
            raise _ase_error(self.path, exc) from None

    def __len__(self):
        return self._length

    def _read(self, i):
        import ase.io

        try:
            atoms = ase.io.read(str(self.path), index=i, format=self.ase_format)
        except Exception as exc:
            raise _ase_error(self.path, exc) from None
        s = self._structure(atoms, i)
        if self._length == 1:
            s.id = self.path.stem
        return s

    def class_keys(self):
        return np.asarray([self[i].class_key for i in range(len(self))], dtype=str)


# --- QM9 original GDB9 xyz --------------------------------------------------------------------
QM9_PROPERTIES = (
    ("A", "GHz"), ("B", "GHz"), ("C", "GHz"), ("mu", "D"), ("alpha", "a0^3"), ("homo", "Ha"),
    ("lumo", "Ha"), ("gap", "Ha"), ("r2", "a0^2"), ("zpve", "Ha"), ("U0", "Ha"), ("U", "Ha"),
    ("H", "Ha"), ("G", "Ha"), ("Cv", "cal/(mol K)"),
)


def _gdb_float(token: str) -> float:
    return float(token.replace("*^", "e"))


def looks_like_gdb9(head: str) -> bool:
    lines = head.splitlines()
    if len(lines) < 3:
        return False
    fields = lines[1].split()
    return lines[0].strip().isdigit() and len(fields) == 17 and fields[0] == "gdb"


class Qm9XyzDataset(Dataset):
    """One original QM9 ``dsgdb9nsd_*.xyz`` file (one molecule). The 15 properties of line 2 become
    ``targets`` in their QM9 units (see ``QM9_PROPERTIES``); no energy/forces labels."""

    format = "qm9-xyz"
    units_note = "none: coordinates Å; the 15 QM9 properties are targets in QM9 units (" + ", ".join(
        f"{n} {u}" for n, u in QM9_PROPERTIES) + ")"

    def __len__(self):
        return 1

    def _parse(self):
        where = f"{self.path}"
        try:
            lines = self.path.read_text().splitlines()
        except FileNotFoundError:
            raise FastCSIError(f"{where}: file not found") from None
        except UnicodeDecodeError:
            raise FastCSIError(f"{where}: not a text file") from None
        try:
            n = int(lines[0].split()[0])
            header = lines[1].split()
            if header[0] != "gdb" or len(header) != 17:
                raise ValueError("line 2 is not 'gdb <index>' followed by 15 properties")
            targets = {name: _gdb_float(tok) for (name, _), tok in zip(QM9_PROPERTIES, header[2:])}
            symbols = chemical_symbols()
            rows = [ln.split() for ln in lines[2 : 2 + n]]
            if len(rows) != n:
                raise ValueError(f"{n} atoms announced, {len(rows)} atom lines present")
            numbers = [symbols.index(r[0]) for r in rows]
            pos = [[_gdb_float(t) for t in r[1:4]] for r in rows]
        except (ValueError, IndexError) as exc:
            raise FastCSIError(f"{where}: not a valid QM9 GDB9 xyz file ({exc})") from None
        return numbers, pos, targets, header[1]

    def _read(self, i):
        numbers, pos, targets, gdb_index = self._parse()
        return Structure(numbers, pos, targets=targets, class_key=formula_of(numbers), id=f"gdb{gdb_index}")

    def class_keys(self):
        return np.asarray([formula_of(self._parse()[0])], dtype=str)

    def n_atoms_per_structure(self):
        return np.asarray([len(self._parse()[0])], dtype=np.int64)


# --- MatBench json.gz -------------------------------------------------------------------------
def _is_structure_dict(value) -> bool:
    return isinstance(value, dict) and "lattice" in value and "sites" in value


class MatbenchDataset(Dataset):
    """MatBench ``matbench_*.json.gz``: pandas split-orient JSON ``{index, columns, data}`` whose
    structure column holds pymatgen ``Structure.as_dict()``; other numeric columns become targets.
    The document is one JSON value, so it is parsed whole on open (MatBench files are small)."""

    format = "matbench"
    units_note = "none: pymatgen structures are in Å; target columns kept in the file's units"

    def __init__(self, path, **options):
        super().__init__(path, **options)
        try:
            opener = gzip.open if self.path.suffix == ".gz" else open
            with opener(self.path, "rt") as fh:
                doc = json.load(fh)
        except FileNotFoundError:
            raise FastCSIError(f"{self.path}: file not found") from None
        except (OSError, EOFError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise FastCSIError(f"{self.path}: not a readable MatBench json(.gz) file ({exc})") from None
        if not isinstance(doc, dict) or not {"columns", "data"} <= set(doc):
            raise FastCSIError(f"{self.path}: expected a pandas split JSON with 'columns' and 'data'")
        self.columns = list(doc["columns"])
        self._rows = doc["data"]
        self._index = doc.get("index", list(range(len(self._rows))))
        first = self._rows[0] if self._rows else []
        try:
            self._structure_col = next(k for k, v in enumerate(first) if _is_structure_dict(v))
        except StopIteration:
            raise FastCSIError(f"{self.path}: no column holds pymatgen structure dicts") from None

    def __len__(self):
        return len(self._rows)

    def _read(self, i):
        row = self._rows[i]
        where = f"{self.path}: structure {i}"
        struct = row[self._structure_col]
        try:
            cell = np.asarray(struct["lattice"]["matrix"], dtype=np.float64)
            symbols = chemical_symbols()
            numbers, pos = [], []
            for site in struct["sites"]:
                species = max(site["species"], key=lambda sp: sp.get("occu", 1))
                numbers.append(symbols.index(species["element"]))
                pos.append(site["xyz"] if "xyz" in site else np.asarray(site["abc"]) @ cell)
        except (KeyError, ValueError, TypeError) as exc:
            raise FastCSIError(f"{where}: malformed pymatgen structure dict ({exc})") from None
        targets = {}
        for k, value in enumerate(row):
            number = None if k == self._structure_col else _scalar(value)
            if number is not None:
                targets[self.columns[k]] = number
        return Structure(numbers, pos, cell=cell, pbc=True, targets=targets, class_key=formula_of(numbers),
                         id=str(self._index[i]))

    def class_keys(self):
        return np.asarray([self._read(i).class_key for i in range(len(self))], dtype=str)

    def n_atoms_per_structure(self):
        return np.asarray([len(r[self._structure_col]["sites"]) for r in self._rows], dtype=np.int64)
