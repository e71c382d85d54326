"""npz readers: rMD17 (``nuclear_charges``, ``coords``, ``energies``, ``forces``; kcal/mol) and the
sGDML layout of MD17/MD22 (``z``, ``R``, ``E``, ``F``; kcal/mol unless ``e_unit``/``r_unit`` say
otherwise).

Arrays stored uncompressed inside the npz are memory-mapped (``np.load(mmap_mode=...)`` does not
map npz members, so the member's byte offset is found from the zip header); compressed members
are decompressed on first use of that key.
"""
from __future__ import annotations

import struct
import zipfile

import numpy as np

from fastcsi.data.base import Dataset, formula_of, given_options
from fastcsi.data.structure import Structure
from fastcsi.data.units import KCAL_MOL_EV, energy_factor, force_factor, length_factor, warn_if_implausible_energy
from fastcsi.errors import FastCSIError


def npz_keys(path) -> list:
    try:
        with zipfile.ZipFile(path) as zf:
            return [n[:-4] if n.endswith(".npy") else n for n in zf.namelist()]
    except FileNotFoundError:
        raise FastCSIError(f"{path}: file not found") from None
    except (zipfile.BadZipFile, OSError) as exc:
        raise FastCSIError(f"{path}: not a readable npz file ({exc})") from None


def load_npz_member(path, key: str):
    """One array of an npz: memory-mapped when stored uncompressed, else read into memory."""
    try:
        with zipfile.ZipFile(path) as zf:
            info = zf.getinfo(key + ".npy")
            if info.compress_type == zipfile.ZIP_STORED:
                with open(path, "rb") as fh:
                    fh.seek(info.header_offset)
                    local = fh.read(30)
                    name_len, extra_len = struct.unpack("<HH", local[26:30])
                    fh.seek(info.header_offset + 30 + name_len + extra_len)
                    version = np.lib.format.read_magic(fh)
                    read_header = (
                        np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read_header(fh)
                    offset = fh.tell()
                if dtype.hasobject:
                    raise FastCSIError(f"{path}: array {key!r} holds Python objects; refusing to unpickle it")
                if int(np.prod(shape)) == 0:
                    return np.zeros(shape, dtype)
                return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                                 order="F" if fortran else "C")
            with zf.open(info) as member:
                return np.lib.format.read_array(member, allow_pickle=False)
    except KeyError:
        raise FastCSIError(f"{path}: npz has no array {key!r}") from None
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise FastCSIError(f"{path}: cannot read array {key!r} from the npz ({exc})") from None


class _NpzDataset(Dataset):
    """Frames of one molecule: ``numbers`` (N,), ``positions`` (M,N,3), ``energies`` (M,) or (M,1),
    ``forces`` (M,N,3). Subclasses name the keys and units."""

    NUMBERS = POSITIONS = ENERGIES = FORCES = ""

    def __init__(self, path, energy_key=None, forces_key=None, energy_unit=None, length_unit=None, force_unit=None,
                 **options):
        super().__init__(path, energy_key=energy_key, forces_key=forces_key, energy_unit=energy_unit,
                         length_unit=length_unit, **given_options(force_unit=force_unit), **options)
        self._keys = set(npz_keys(self.path))
        self.energy_key = energy_key or self.ENERGIES
        self.forces_key = forces_key or self.FORCES
        for key in (self.NUMBERS, self.POSITIONS):
            if key not in self._keys:
                raise FastCSIError(f"{self.path}: npz has no {key!r} array (keys: {sorted(self._keys)})")
        self.numbers = np.asarray(load_npz_member(self.path, self.NUMBERS)).astype(np.int64).reshape(-1)
        self._arrays = {}
        shape = self._array(self.POSITIONS).shape
        if len(shape) != 3 or shape[2] != 3:
            raise FastCSIError(f"{self.path}: {self.POSITIONS!r} has shape {shape}, expected (frames, atoms, 3)")
        self._n_frames, n_atoms = shape[0], shape[1]
        if n_atoms != len(self.numbers):
            raise FastCSIError(
                f"{self.path}: {self.NUMBERS!r} lists {len(self.numbers)} atoms but {self.POSITIONS!r} "
                f"holds {n_atoms} per frame (malformed file)"
            )
        for key, expected in ((self.energy_key, (self._n_frames,)), (self.forces_key, shape)):
            if key in self._keys:
                got = self._array(key).shape
                if key == self.energy_key:
                    got = got[:1] if len(got) == 2 and got[1] == 1 else got
                if tuple(got) != tuple(expected):
                    raise FastCSIError(f"{self.path}: {key!r} has shape {self._array(key).shape}, expected {expected}")
        self._energy_factor, self._length_factor = self._units(energy_unit, length_unit)
        # forces in the energy unit per length unit unless force_unit says otherwise
        self._force_unit = force_unit
        self._force_factor = (force_factor(force_unit, str(self.path)) if force_unit
                              else self._energy_factor / self._length_factor)
        self._energy_checked = False
        self.class_key = self._class_key()

    def _array(self, key):
        if key not in self._arrays:
            self._arrays[key] = load_npz_member(self.path, key)
        return self._arrays[key]

    def _handle_attributes(self):
        return ("_arrays",)

    def __setstate__(self, state):
        super().__setstate__(state)
        self._arrays = {}

    def _close_handles(self):
        self._arrays = {}

    def _units(self, energy_unit, length_unit):
        where = str(self.path)
        e = energy_factor(energy_unit, where) if energy_unit else KCAL_MOL_EV
        r = length_factor(length_unit, where) if length_unit else 1.0
        return e, r

    def _class_key(self):
        return formula_of(self.numbers)

    def _forces_note(self, default: str) -> str:
        if self._force_unit:
            return f"forces {self._force_unit} -> eV/Å (x{self._force_factor}, force_unit option)"
        return default

    def __len__(self):
        return int(self._n_frames)

    def class_keys(self):
        return np.full(len(self), self.class_key, dtype=object).astype(str)

    def n_atoms_per_structure(self):
        return np.full(len(self), len(self.numbers), dtype=np.int64)

    def _read(self, i):
        pos = np.asarray(self._array(self.POSITIONS)[i], dtype=np.float64) * self._length_factor
        energy = forces = None
        if self.energy_key in self._keys:
            energy = float(np.asarray(self._array(self.energy_key)[i]).reshape(-1)[0]) * self._energy_factor
            if not self._energy_checked:  # once per file: its frames share one unit
                self._energy_checked = True
                warn_if_implausible_energy(self.path, self.numbers, energy, self._energy_factor,
                                           self.options.get("energy_unit") or "the assumed unit")
        if self.forces_key in self._keys:
            forces = np.asarray(self._array(self.forces_key)[i], dtype=np.float64) * self._force_factor
        return Structure(self.numbers, pos, energy=energy, forces=forces, class_key=self.class_key, id=str(i))


class RMD17Dataset(_NpzDataset):
    """Revised MD17 npz. Energies kcal/mol, forces kcal/mol/Å, coordinates Å."""

    format = "rmd17"
    NUMBERS, POSITIONS, ENERGIES, FORCES = "nuclear_charges", "coords", "energies", "forces"

    @property
    def units_note(self):
        return f"energies kcal/mol -> eV (x{self._energy_factor}); {self._forces_note('forces kcal/mol/Å -> eV/Å')}; coords Å"


class SGDMLDataset(_NpzDataset):
    """sGDML npz (MD17, MD22): ``z``, ``R`` Å, ``E`` kcal/mol, ``F`` kcal/mol/Å. The optional
    ``e_unit``/``r_unit`` metadata arrays are honoured. Class = the ``name`` metadata when present."""

    format = "sgdml"
    NUMBERS, POSITIONS, ENERGIES, FORCES = "z", "R", "E", "F"

    def _units(self, energy_unit, length_unit):
        stored = {}
        for key in ("e_unit", "r_unit"):
            if key in self._keys:
                stored[key] = str(np.asarray(load_npz_member(self.path, key)).reshape(-1)[0])
        where = str(self.path)
        e_unit = energy_unit or stored.get("e_unit", "kcal/mol")
        r_unit = length_unit or stored.get("r_unit", "Ang")
        self._unit_names = (e_unit, r_unit)
        return energy_factor(e_unit, where), length_factor(r_unit, where)

    def _class_key(self):
        if "name" in self._keys:
            try:
                raw = np.asarray(load_npz_member(self.path, "name")).reshape(-1)[0]
                return raw.decode() if isinstance(raw, bytes) else str(raw)
            except FastCSIError:
                pass
        return formula_of(self.numbers)

    @property
    def units_note(self):
        e, r = self._unit_names
        return (f"E {e} -> eV (x{self._energy_factor}); {self._forces_note(f'F {e}/{r} -> eV/Å')}; "
                f"R {r} -> Å (x{self._length_factor})")
