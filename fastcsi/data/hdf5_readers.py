"""HDF5 readers: ANI-1x, ANI-1 (ani_gdb_s0X), ANI-2x, Transition-1x and SPICE.

Each reader walks the group tree once on open, keeping only group names, row counts and atom
counts (dataset shapes, no data), then reads one row of one dataset per structure.
"""
from __future__ import annotations

import warnings

import numpy as np

from fastcsi.data.base import Dataset, UnreadableSkipped, chemical_symbols, formula_of
from fastcsi.data.structure import Structure
from fastcsi.data.units import BOHR_ANGSTROM, HARTREE_EV, energy_factor, force_factor, length_factor
from fastcsi.errors import FastCSIError


# What h5py raises on a damaged file (bad object header, symbol table node, local heap, B-tree...):
# the error class depends on where in the HDF5 library the damage is met.
H5_ERRORS = (KeyError, RuntimeError, OSError, ValueError, TypeError, IndexError)


def first_line(exc) -> str:
    text = str(exc).strip().strip("'\"")
    return text.splitlines()[0] if text else type(exc).__name__


def open_h5(path):
    import h5py

    try:
        return h5py.File(path, "r")
    except FileNotFoundError:
        raise FastCSIError(f"{path}: file not found") from None
    except H5_ERRORS as exc:
        raise FastCSIError(f"{path}: not a readable HDF5 file ({first_line(exc)})") from None


def damaged(path, where, exc) -> FastCSIError:
    return FastCSIError(f"{path}: cannot read HDF5 group {where or '/'} ({first_line(exc)}); the file is damaged")


def list_members(path, group, where):
    """``(name, member)`` pairs of an HDF5 group, every failure as one :class:`FastCSIError` line."""
    try:
        names = list(group.keys())
    except H5_ERRORS as exc:
        raise damaged(path, where, exc) from None
    out = []
    for name in names:
        try:
            out.append((name, group[name]))
        except H5_ERRORS as exc:
            raise damaged(path, f"{where}/{name}", exc) from None
    return out


class _GroupedH5Dataset(Dataset):
    BLOCK = 1024  # rows read at once when streaming (bounded memory)

    """Structures stored as rows of per-group arrays. Subclasses fill ``_groups`` (HDF5 paths),
    ``_counts`` (rows per group), ``_natoms`` (atoms per group, or per row via override) and
    ``_group_class`` (class key per group) in ``_index``."""

    def __init__(self, path, skip_unreadable: bool = False, **options):
        if skip_unreadable:
            options["skip_unreadable"] = True  # part of the options, so of the fingerprint and cache keys
        super().__init__(path, **options)
        self.skip_unreadable = bool(skip_unreadable)
        self._h5 = None
        try:
            self._index(self._file())
        except FastCSIError:
            raise
        except H5_ERRORS as exc:
            raise damaged(self.path, "", exc) from None
        if self.skipped:
            shown = ", ".join(self.skipped[:5]) + (", ..." if len(self.skipped) > 5 else "")
            warnings.warn(f"{self.path}: skipped {len(self.skipped)} unreadable group(s) ({shown}); "
                          "they are listed under 'skipped_unreadable' in the outputs", UnreadableSkipped,
                          stacklevel=2)
        if not self._groups:
            raise FastCSIError(f"{self.path}: no structures found in the {self.format} layout")
        self._counts = np.asarray(self._counts, dtype=np.int64)
        self.forces_key = getattr(self, "forces_key", None)
        self._offsets = np.concatenate([[0], np.cumsum(self._counts)])

    def _structure_groups(self, parent, where, required):
        """``(name, group, shape of group[required])`` for each member of ``parent`` in the layout.

        A member that cannot be read, or holds no ``required`` dataset, is an error: a damaged
        file must not read as a shorter one. With ``skip_unreadable`` it is listed in
        ``self.skipped`` instead (and a warning names the count)."""
        import h5py

        out = []
        for name, member in list_members(self.path, parent, where):
            key = f"{where}/{name}".lstrip("/")
            try:
                if not isinstance(member, h5py.Group) or required not in member.keys():
                    problem = f"holds no {required!r} dataset"
                else:
                    out.append((name, member, tuple(member[required].shape)))
                    continue
            except H5_ERRORS as exc:
                problem = f"cannot be read ({first_line(exc)})"
            if not self.skip_unreadable:
                raise FastCSIError(f"{self.path}: HDF5 group {key!r} {problem}: the file is damaged or not in the "
                                   f"{self.format} layout (--skip-unreadable reads the rest and lists what it skipped)")
            self.skipped.append(key)
        return out

    def _group(self, g):
        try:
            return self._file()[self._groups[g]]
        except H5_ERRORS as exc:
            raise damaged(self.path, self._groups[g], exc) from None

    def _file(self):
        return self._opened("_h5", lambda: open_h5(self.path))

    def _handle_attributes(self):
        return ("_h5",)

    def _close_handles(self):
        if self._h5 is not None:
            try:
                self._h5.close()
            except Exception:  # a handle inherited through fork may already be unusable
                pass
            self._h5 = None

    def __len__(self):
        return int(self._offsets[-1])

    def _locate(self, i):
        g = int(np.searchsorted(self._offsets, i, side="right") - 1)
        return g, i - int(self._offsets[g])

    def _read(self, i):
        g, row = self._locate(i)
        return self._read_rows(g, row, row + 1)[0]

    def __iter__(self):
        # Streams blocks of rows per group: one HDF5 read per block instead of one per structure.
        i = 0
        for g, count in enumerate(self._counts):
            for start in range(0, int(count), self.BLOCK):
                stop = min(int(count), start + self.BLOCK)
                self._check_process()
                for s in self._read_rows(g, start, stop):
                    yield s.validate(where=f"{self.path}: structure {i}")
                    i += 1

    def _block(self, group, key, start, stop, g):
        """Rows ``start:stop`` of dataset ``key`` in group ``g`` (float64 for floats)."""
        try:
            return np.asarray(group[key][start:stop])
        except KeyError:
            raise FastCSIError(f"{self.path}: {self._groups[g]}: dataset {key!r} missing") from None
        except H5_ERRORS as exc:
            raise FastCSIError(f"{self.path}: {self._groups[g]}: cannot read {key!r} ({first_line(exc)}); "
                               "the file is damaged") from None

    def _has(self, group, key, g) -> bool:
        try:
            return key in group.keys()  # ``key in group`` answers False on some damage instead of raising
        except H5_ERRORS as exc:
            raise damaged(self.path, self._groups[g], exc) from None

    def _labels(self, group, g, start, stop, efactor, ffactor):
        energies = forces = None
        if self._has(group, self.energy_key, g):
            energies = self._block(group, self.energy_key, start, stop, g).astype(np.float64).reshape(stop - start, -1)[:, 0]
            energies = np.where(np.isfinite(energies), energies * efactor, np.nan)
        if self.forces_key is not None and self._has(group, self.forces_key, g):
            forces = self._block(group, self.forces_key, start, stop, g).astype(np.float64) * ffactor
        return energies, forces

    def _records(self, g, start, numbers, pos, energies, forces, class_key, cell=None):
        """Structures from block arrays; a NaN energy or force block means 'not computed'."""
        out = []
        for k in range(len(pos)):
            e = None if energies is None or not np.isfinite(energies[k]) else float(energies[k])
            f = None if forces is None or not np.isfinite(forces[k]).all() else forces[k]
            z = numbers[k] if numbers.ndim == 2 else numbers
            out.append(Structure(z, pos[k], energy=e, forces=f,
                                 class_key=class_key if isinstance(class_key, str) else class_key[k],
                                 id=f"{self._id_prefix(g)}/{start + k}"))
        return out

    def _id_prefix(self, g):
        return self._groups[g]

    def _shape(self, group, key, where):
        try:
            return tuple(group[key].shape)
        except H5_ERRORS as exc:
            raise FastCSIError(f"{self.path}: {where}: cannot read {key!r} ({first_line(exc)}); "
                               "the file is damaged or not in the layout") from None

    def class_keys(self):
        return np.repeat(np.asarray(self._group_class, dtype=str), self._counts)

    def n_atoms_per_structure(self):
        return np.repeat(np.asarray(self._natoms, dtype=np.int64), self._counts)



class ANI1xDataset(_GroupedH5Dataset):
    """ANI-1x release layout: one group per formula holding ``atomic_numbers`` (N,),
    ``coordinates`` (M,N,3) Å and ``<level>.energy`` (M,) Ha / ``<level>.forces`` (M,N,3) Ha/Å."""

    format = "ani1x"

    def __init__(self, path, level: str = "wb97x_dz", energy_key=None, forces_key=None, **options):
        self.level = level
        self.energy_key = energy_key or f"{level}.energy"
        self.forces_key = forces_key or f"{level}.forces"
        super().__init__(path, level=level, energy_key=energy_key, forces_key=forces_key, **options)
        self.units_note = (
            f"energy {self.energy_key} Ha -> eV (x{HARTREE_EV}); forces {self.forces_key} Ha/Å -> eV/Å; "
            "coordinates already Å"
        )

    def _index(self, h5):
        self._groups, self._counts, self._natoms, self._group_class = [], [], [], []
        levels = set()
        for name, group, shape in self._structure_groups(h5, "", "coordinates"):
            levels.update(k[: -len(".energy")] for k in group.keys() if k.endswith(".energy"))
            self._groups.append(name)
            self._counts.append(shape[0])
            self._natoms.append(shape[1])
            self._group_class.append(name)
        if levels and not any(self._has(self._group(g), self.energy_key, g) for g in range(len(self._groups))):
            raise FastCSIError(
                f"{self.path}: energy key {self.energy_key!r} not found; levels present: {sorted(levels)}"
            )

    def _read_rows(self, g, start, stop):
        group = self._group(g)
        numbers = self._block(group, "atomic_numbers", None, None, g)
        pos = self._block(group, "coordinates", start, stop, g)
        energies, forces = self._labels(group, g, start, stop, HARTREE_EV, HARTREE_EV)
        return self._records(g, start, numbers, pos, energies, forces, self._groups[g])


class ANI2xDataset(_GroupedH5Dataset):
    """ANI-2x release layout: groups by atom count (``002``, ...) holding ``species`` (M,N)
    atomic numbers, ``coordinates`` Å, ``energies`` Ha, ``forces`` Ha/Å. Class = formula."""

    format = "ani2x"
    units_note = f"energies Ha -> eV (x{HARTREE_EV}); forces Ha/Å -> eV/Å; coordinates already Å"

    def __init__(self, path, energy_key=None, forces_key=None, **options):
        self.energy_key = energy_key or "energies"
        self.forces_key = forces_key or "forces"
        super().__init__(path, energy_key=energy_key, forces_key=forces_key, **options)
        self._class_cache = None

    def _index(self, h5):
        self._groups, self._counts, self._natoms, self._group_class = [], [], [], []
        for name, group, _ in self._structure_groups(h5, "", "species"):
            shape = self._shape(group, "coordinates", name)
            self._groups.append(name)
            self._counts.append(shape[0])
            self._natoms.append(shape[1])

    def class_keys(self):
        # Species arrays are small integers: reading them is cheap next to coordinates.
        if self._class_cache is None:
            keys = []
            for g in range(len(self._groups)):
                species = self._block(self._group(g), "species", None, None, g)
                keys.extend(formula_of(row[row > 0]) for row in species)
            self._class_cache = np.asarray(keys, dtype=str)
        return self._class_cache

    def _read_rows(self, g, start, stop):
        group = self._group(g)
        species = self._block(group, "species", start, stop, g)
        pos = self._block(group, "coordinates", start, stop, g)
        energies, forces = self._labels(group, g, start, stop, HARTREE_EV, HARTREE_EV)
        out = []
        for k, s in enumerate(self._records(g, start, species, pos, energies, forces,
                                            [formula_of(z[z > 0]) for z in species])):
            keep = species[k] > 0  # padded rows carry species 0 in some ANI-2x exports
            if not keep.all():
                s = Structure(s.atomic_numbers[keep], s.positions[keep], energy=s.energy,
                              forces=None if s.forces is None else s.forces[keep], class_key=s.class_key, id=s.id)
            out.append(s)
        return out


class ANI1Dataset(_GroupedH5Dataset):
    """Original ANI-1 ``ani_gdb_s0X.h5`` layout: ``gdb11_s0X/gdb11_s0X-N/`` with ``species`` (|S1
    symbols), ``coordinates`` Å, ``energies`` Ha; no forces. The ``*HE`` (high-energy) arrays are
    not read, as in the reference loader. Class = molecule group. Composition comes from
    ``species`` (``smiles`` is wrong in some copies)."""

    format = "ani1"
    units_note = f"energies Ha -> eV (x{HARTREE_EV}); coordinates already Å; no forces stored"

    def __init__(self, path, energy_key=None, **options):
        self.energy_key = energy_key or "energies"
        super().__init__(path, energy_key=energy_key, **options)
        self._numbers = {}

    def _index(self, h5):
        self._groups, self._counts, self._natoms, self._group_class = [], [], [], []
        for top_name, top in list_members(self.path, h5, ""):
            if not hasattr(top, "keys"):
                continue
            for name, group, _ in self._structure_groups(top, top_name, "species"):
                path = f"{top_name}/{name}"
                shape = self._shape(group, "coordinates", path)
                self._groups.append(path)
                self._counts.append(shape[0])
                self._natoms.append(shape[1])
                self._group_class.append(name)

    def _species_numbers(self, g, group):
        if g not in self._numbers:
            symbols = chemical_symbols()
            raw = [s.decode() if isinstance(s, bytes) else str(s) for s in np.asarray(group["species"])]
            try:
                self._numbers[g] = np.array([symbols.index(s) for s in raw], dtype=np.int64)
            except ValueError:
                raise FastCSIError(f"{self.path}: {self._groups[g]}: unknown element symbol in species {raw}") from None
        return self._numbers[g]

    def _read_rows(self, g, start, stop):
        group = self._group(g)
        numbers = self._species_numbers(g, group)
        pos = self._block(group, "coordinates", start, stop, g)
        energies, _ = self._labels(group, g, start, stop, HARTREE_EV, 1.0)
        return self._records(g, start, numbers, pos, energies, None, self._group_class[g])


class Transition1xDataset(_GroupedH5Dataset):
    """Transition-1x: ``<split>/<formula>/<rxn>/`` with ``atomic_numbers``, ``positions`` Å,
    ``<level>.energy`` eV, ``<level>.forces`` eV/Å. Structures are the rows of each reaction's
    ``positions`` in the chosen split; the ``reactant``/``product``/``transition_state``
    subgroups are views of path endpoints and are not read. Class = reaction."""

    format = "t1x"
    units_note = "none: Transition-1x stores Å, eV and eV/Å"
    SPLITS = ("data", "train", "val", "test")

    def __init__(self, path, split: str = "data", level: str = "wB97x_6-31G(d)", energy_key=None,
                 forces_key=None, **options):
        if split not in self.SPLITS:
            raise FastCSIError(f"{path}: unknown Transition-1x split {split!r} (choose from {self.SPLITS})")
        self.split = split
        self.energy_key = energy_key or f"{level}.energy"
        self.forces_key = forces_key or f"{level}.forces"
        super().__init__(path, split=split, level=level, energy_key=energy_key, forces_key=forces_key, **options)

    def _index(self, h5):
        if self.split not in h5:
            raise FastCSIError(f"{self.path}: split {self.split!r} not in file (has {sorted(h5.keys())})")
        self._groups, self._counts, self._natoms, self._group_class = [], [], [], []
        for formula, fgroup in list_members(self.path, h5[self.split], self.split):
            if not hasattr(fgroup, "keys"):
                continue
            for rxn, group, shape in self._structure_groups(fgroup, f"{self.split}/{formula}", "positions"):
                self._groups.append(f"{self.split}/{formula}/{rxn}")
                self._counts.append(shape[0])
                self._natoms.append(shape[1])
                self._group_class.append(f"{formula}/{rxn}")

    def _read_rows(self, g, start, stop):
        group = self._group(g)
        numbers = self._block(group, "atomic_numbers", None, None, g)
        pos = self._block(group, "positions", start, stop, g)
        energies, forces = self._labels(group, g, start, stop, 1.0, 1.0)
        return self._records(g, start, numbers, pos, energies, forces, self._group_class[g])

    def _id_prefix(self, g):
        return self._group_class[g]


class SpiceDataset(_GroupedH5Dataset):
    """SPICE: one group per molecule with ``atomic_numbers``, ``conformations`` (units attr, bohr),
    ``dft_total_energy`` (hartree) and ``dft_total_gradient`` (hartree/bohr; forces = -gradient).
    The ``units`` attributes are honoured; when absent the SPICE defaults are assumed."""

    format = "spice"

    def __init__(self, path, energy_key=None, forces_key=None, **options):
        self.energy_key = energy_key or "dft_total_energy"
        self.forces_key = forces_key or "dft_total_gradient"
        super().__init__(path, energy_key=energy_key, forces_key=forces_key, **options)
        self._factors = {}
        self.units_note = (
            f"conformations bohr -> Å (x{BOHR_ANGSTROM}); {self.energy_key} hartree -> eV (x{HARTREE_EV}); "
            f"forces = -{self.forces_key} hartree/bohr -> eV/Å (units read from the HDF5 'units' attributes)"
            if "gradient" in self.forces_key
            else f"units read from the HDF5 'units' attributes; energy {self.energy_key}, forces {self.forces_key}"
        )

    def _index(self, h5):
        self._groups, self._counts, self._natoms, self._group_class = [], [], [], []
        for name, group, shape in self._structure_groups(h5, "", "conformations"):
            self._groups.append(name)
            self._counts.append(shape[0])
            self._natoms.append(shape[1])
            self._group_class.append(name)

    def _unit_factor(self, group, key, kind, default):
        cache_key = (group.name, key)
        if cache_key not in self._factors:
            unit = group[key].attrs.get("units", default)
            where = f"{self.path}: {group.name}/{key}"
            convert = {"length": length_factor, "energy": energy_factor, "force": force_factor}[kind]
            self._factors[cache_key] = convert(unit, where)
        return self._factors[cache_key]

    def _read_rows(self, g, start, stop):
        group = self._group(g)
        numbers = self._block(group, "atomic_numbers", None, None, g)
        pos = self._block(group, "conformations", start, stop, g).astype(np.float64)
        pos = pos * self._unit_factor(group, "conformations", "length", "bohr")
        efactor = self._unit_factor(group, self.energy_key, "energy", "hartree") if self._has(group, self.energy_key, g) else 1.0
        ffactor = 1.0
        if self._has(group, self.forces_key, g):
            sign = -1.0 if "gradient" in self.forces_key else 1.0
            ffactor = sign * self._unit_factor(group, self.forces_key, "force", "hartree/bohr")
        energies, forces = self._labels(group, g, start, stop, efactor, ffactor)
        return self._records(g, start, numbers, pos, energies, forces, self._groups[g])
