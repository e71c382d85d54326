"""``fastcsi predict``: every structure of a dataset with the model's predictions, streamed to an
extxyz file or an ASE db.

Predictions go under their own keys, ``fastcsi_<property>`` (``fastcsi_energy`` eV,
``fastcsi_forces`` eV/Å per atom, ``fastcsi_stress`` eV/Å^3 in ASE's Voigt order for fully
periodic structures, ``fastcsi_<target>`` native), so the labels the input carries (as the reader
gives them: energy eV and forces eV/Å under ASE's own names, scalar targets under theirs) are kept
beside them. extxyz: per-structure values in ``atoms.info``, forces in ``atoms.arrays``; ASE db:
scalars as key-value pairs, arrays in ``row.data``. Structures are read, predicted and written
``batch_size`` at a time (memory bounded by one batch); the output appears atomically when all are
written, with ``OUT.json`` beside it (model, data, settings, versions; an ASE db also holds it as
its metadata).
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from fastcsi.errors import FastCSIError
from fastcsi.data.convert import write_structures
from fastcsi.utils import atomic_write, versions

PREFIX = "fastcsi_"
FORMATS = {".extxyz": "extxyz", ".xyz": "extxyz", ".db": "db"}


def output_format(out) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in FORMATS:
        raise FastCSIError(f"{out}: output must end in .extxyz, .xyz or .db (got {suffix or 'no extension'})")
    return FORMATS[suffix]


def iter_predictions(model, dataset, properties=None, batch_size: int = 32, progress: bool = True,
                     desc: str = "predict", max_atoms: int | None = None):
    """Yield ``(index, structure, prediction)`` in dataset order, reading ``batch_size`` at a time
    (and at most ``max_atoms`` atoms a batch when given: memory then follows that budget)."""
    from tqdm import tqdm

    if batch_size < 1:
        raise FastCSIError(f"--batch-size must be at least 1, got {batch_size}")
    properties = model.check_properties(properties or model.properties)
    n = len(dataset)
    path = getattr(dataset, "path", "data")
    bar = None
    try:
        from fastcsi.data import plan_batches

        if max_atoms is not None and max_atoms < 1:
            raise FastCSIError(f"--max-atoms-per-batch must be at least 1, got {max_atoms}")
        natoms = dataset.n_atoms_per_structure() if max_atoms else None
        for indices in plan_batches(range(n), batch_size, natoms, max_atoms):
            structures = [dataset[i] for i in indices]
            results = model.predict(structures, properties, where=lambda k: f"{path}: structure {indices[k]}")
            if bar is None:  # after the first batch: a mistake found there prints its one line alone
                bar = tqdm(total=n, desc=desc, unit="structure", file=sys.stderr, disable=not progress,
                           dynamic_ncols=True)
            bar.update(len(structures))
            yield from zip(indices, structures, results)
    finally:
        if bar is not None:
            bar.close()


def prediction_values(prediction: dict):
    """``(scalars, arrays)`` of one structure's predictions under their ``fastcsi_*`` keys: arrays
    (forces, Voigt stress) are stored per atom in extxyz and in ``row.data`` in an ASE db."""
    from ase.stress import full_3x3_to_voigt_6_stress

    scalars, arrays = {}, {}
    for name, value in prediction.items():
        if value is None:  # stress of a structure that is not fully periodic
            continue
        if name == "forces":
            arrays[PREFIX + name] = value
        elif name == "stress":
            arrays[PREFIX + name] = full_3x3_to_voigt_6_stress(value)
        else:
            scalars[PREFIX + name] = float(value)
    return scalars, arrays


def predict_file(model, data, out, properties=None, batch_size: int = 32, progress: bool = True,
                 data_options: dict | None = None, max_atoms: int | None = None) -> dict:
    """Predict every structure of ``data`` (any readable format; ``data_options`` such as
    ``energy_unit`` go to its reader) into ``out`` (.extxyz/.xyz/.db); returns the record written
    to ``OUT.json``."""
    from fastcsi.data import open_dataset

    out = Path(out)
    output_format(out)
    if Path(data).exists() and out.exists() and out.resolve() == Path(data).resolve():
        raise FastCSIError(f"{out}: the output would overwrite the input; choose another -o")
    properties = model.check_properties(properties or model.properties)
    dataset = open_dataset(data, **(data_options or {}))
    stream = iter_predictions(model, dataset, properties, batch_size, progress, max_atoms=max_atoms)
    record = {"kind": "fastcsi-predict", "model": model.describe(),
              "data": {"path": str(Path(data).resolve()), "format": dataset.format, "structures": len(dataset),
                       "fingerprint": getattr(dataset, "fingerprint", None), "units_note": dataset.units_note,
                       "options": dict(data_options or {})},
              "keys": {p: PREFIX + p for p in properties},
              "units": {p: UNITS.get(p, "native") for p in properties},
              "settings": {"batch_size": batch_size, "max_atoms_per_batch": max_atoms, "properties": list(properties)},
              "versions": versions()}
    written_keys: set = set()  # stress only where a structure is fully periodic

    def annotated():
        for _, structure, prediction in stream:
            scalars, arrays = prediction_values(prediction)
            written_keys.update(scalars, arrays)
            yield structure, scalars, arrays

    count = write_structures(annotated(), out, record, meta_in_frames=False)
    record["written"] = count
    record["written_keys"] = [k for k in record["keys"].values() if k in written_keys]
    with atomic_write(Path(f"{out}.json")) as fh:
        json.dump(record, fh, indent=1, default=str)
    return record


UNITS = {"energy": "eV", "forces": "eV/Å", "stress": "eV/Å^3"}
