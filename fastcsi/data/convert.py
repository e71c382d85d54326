"""Dataset summaries, conversion and index files: what ``fastcsi data info|convert|sample`` write.

``summarize`` counts structures, atoms, elements, labels and classes in one streaming pass;
``write_structures`` writes structures to extxyz or an ASE db atomically, with the source's
provenance in every frame / the db metadata.
"""
from __future__ import annotations

import sys
from pathlib import Path

from fastcsi.errors import FastCSIError
from fastcsi.utils import atomic_path, atomic_write, versions


def progress_bar(iterable, total: int, label: str):
    """A tqdm bar on stderr for long passes (quiet for small inputs and when stderr is no terminal)."""
    from tqdm import tqdm

    # On stderr so `--json` stdout stays one JSON object; quiet for small files.
    return tqdm(iterable, total=total, desc=label, file=sys.stderr, disable=total < 2000 or not sys.stderr.isatty(), leave=False)


def summarize(ds, progress: bool = False) -> dict:
    """Counts of a dataset (``fastcsi data info``; counting conventions: shared/README.md): one
    streaming pass over the structures."""
    import numpy as np

    from fastcsi.data.base import chemical_symbols

    n = len(ds)
    element_counts = np.zeros(128, dtype=np.int64)
    n_atoms = np.zeros(n, dtype=np.int64)
    from fastcsi.data.units import implausible_energy_unit

    with_energy = with_forces = with_cell = periodic = with_tags = 0
    likely_unit = None  # what the first energy is likely in, when it cannot be eV
    target_counts = {}  # scalar target name -> structures carrying it, in the order first seen
    items = progress_bar(ds, n, ds.path.name) if progress else ds
    for i, s in enumerate(items):
        for name in s.targets:
            target_counts[name] = target_counts.get(name, 0) + 1
        n_atoms[i] = s.n_atoms
        element_counts += np.bincount(s.atomic_numbers, minlength=128)[:128]
        if s.energy is not None and not with_energy:
            likely_unit = implausible_energy_unit(s.atomic_numbers, s.energy)
        with_energy += s.energy is not None
        with_forces += s.forces is not None
        with_cell += bool(np.any(s.cell))
        periodic += s.periodic
        with_tags += s.tags is not None
    symbols = chemical_symbols()
    elements = {symbols[z]: int(c) for z, c in enumerate(element_counts) if c}
    return {
        "path": str(ds.path),
        "format": ds.format,
        "n_structures": n,
        "n_atoms_total": int(n_atoms.sum()),
        "atoms_min": int(n_atoms.min()) if n else 0,
        "atoms_mean": float(n_atoms.mean()) if n else 0.0,
        "atoms_max": int(n_atoms.max()) if n else 0,
        "elements": dict(sorted(elements.items())),
        "has_energy": bool(n) and with_energy == n,
        "has_forces": bool(n) and with_forces == n,
        "has_cell": bool(n) and with_cell > 0,
        "periodic": periodic > 0,
        "has_tags": bool(n) and with_tags == n,
        "targets": target_counts,
        "n_classes": int(len(set(ds.class_keys().tolist()))),
        "units_note": ds.units_note,
        "energy_unit_likely": likely_unit,  # None, or the unit energies read as eV are likely in
        "fingerprint": ds.fingerprint,
        "skipped_unreadable": list(ds.skipped),
    }


def write_structures(items, out: Path, meta: dict, meta_in_frames: bool = True) -> int:
    """Write structures to extxyz (``.xyz``/``.extxyz``) or an ASE db (``.db``), atomically; returns
    how many. Each item is a :class:`Structure`, or ``(structure, scalars, arrays)`` to add values
    of its own (predictions): scalars go to ``atoms.info`` / db key-value pairs, arrays of one row
    per atom to per-atom extxyz columns / ``row.data`` (other arrays to ``info`` / ``row.data``).
    ``meta`` goes into the db metadata and, with ``meta_in_frames``, into every extxyz frame."""
    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".xyz", ".extxyz", ".db"):
        raise FastCSIError(f"{out}: output extension {suffix or '(none)'} not supported (use .extxyz, .xyz or .db)")

    def unpack(item):
        return (item, {}, {}) if not isinstance(item, tuple) else item

    count = 0
    if suffix in (".xyz", ".extxyz"):
        import ase.io

        frame_meta = {f"fastcsi_{k}": v for k, v in meta.items() if isinstance(v, (str, int, float))}
        with atomic_write(out) as fh:
            for item in items:
                s, scalars, arrays = unpack(item)
                atoms = s.to_ase()
                if meta_in_frames:
                    atoms.info.update(frame_meta)
                atoms.info.update(scalars)
                for key, value in arrays.items():
                    if getattr(value, "shape", None) == (len(atoms), 3):
                        atoms.new_array(key, value)
                    else:
                        atoms.info[key] = value
                ase.io.write(fh, atoms, format="extxyz")
                count += 1
        return count
    import json

    import ase.db
    from ase.db.core import reserved_keys

    with atomic_path(out) as tmp:
        tmp.unlink()  # ASE db creates its own file
        with ase.db.connect(str(tmp), type="db") as db:
            for item in items:
                s, scalars, arrays = unpack(item)
                atoms = s.to_ase()
                atoms.info.clear()  # targets and keys go to key-value pairs / data below
                values = {**_db_key_values(s), **scalars}
                # Keys ASE db refuses as columns (reserved, not identifiers) travel in row.data.
                odd = {k: values.pop(k) for k in list(values) if not k.isidentifier() or k in reserved_keys}
                db.write(atoms, key_value_pairs=values, data={"structure_id": s.id, **odd, **arrays})
                count += 1
        db = ase.db.connect(str(tmp), type="db")
        db.metadata = json.loads(json.dumps(meta, default=str))
    return count


def _db_key_values(s) -> dict:
    # ASE db refuses strings that read as numbers ("1241"); an integer class key is stored as int.
    values = {k: float(v) for k, v in s.targets.items()}
    key = s.class_key
    if key:
        try:
            values["class_key"] = int(key)
        except ValueError:
            try:
                float(key)
            except ValueError:
                values["class_key"] = key
    return values


def write_indices(indices, out: Path, meta: dict) -> None:
    """An indices file: ``.json`` (indices + settings) or ``.npy`` (settings in ``OUT.meta.json``)."""
    import json

    import numpy as np

    out = Path(out)
    suffix = out.suffix.lower()
    if suffix not in (".json", ".npy"):
        raise FastCSIError(f"{out}: indices file must end in .json or .npy")
    if suffix == ".json":
        with atomic_write(out) as fh:
            json.dump({"settings": meta, "indices": np.asarray(indices).tolist()}, fh)
        return
    with atomic_path(out) as tmp:
        np.save(tmp, np.asarray(indices))
    with atomic_write(out.with_name(out.name + ".meta.json")) as fh:
        json.dump({"settings": meta}, fh)


def provenance(ds, extra: dict) -> dict:
    """What an output derived from ``ds`` records about its source, plus ``extra`` and versions."""
    meta = {"source": str(ds.path), "source_format": ds.format, "source_fingerprint": ds.fingerprint,
            "units_note": ds.units_note, "skipped_unreadable": list(ds.skipped)}
    meta.update(extra)
    meta["versions"] = versions()
    meta["fastcsi_version"] = meta["versions"]["fastcsi"]
    return meta
