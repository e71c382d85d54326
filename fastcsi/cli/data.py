"""``fastcsi data``: inspect, convert and sample datasets."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import click

_FORMAT = click.option("--format", "fmt", default=None, help="Override content sniffing (see README 'Data formats').")
_ENERGY = click.option("--energy-key", default=None, help="Energy label key (extxyz/db info key, HDF5 dataset...).")
_FORCES = click.option("--forces-key", default=None, help="Forces label key.")
_LEVEL = click.option("--level", default=None, help="Level of theory (ANI-1x, Transition-1x).")
_SPLIT = click.option("--split", default=None, help="Transition-1x split: data|train|val|test.")
_EUNIT = click.option("--energy-unit", default=None, help="Energy unit of ASE/npz files not in eV (e.g. kcal/mol).")
_SKIP = click.option("--skip-unreadable", is_flag=True,
                     help="HDF5: read a damaged file without the groups that cannot be read (warns, lists them).")


def _reader_options(command):
    """The options every command that opens a dataset takes (passed on to ``_open``)."""
    for option in reversed((_FORMAT, _ENERGY, _FORCES, _LEVEL, _SPLIT, _EUNIT, _SKIP)):
        command = option(command)
    return command


def _open(path, fmt, energy_key=None, forces_key=None, level=None, split=None, energy_unit=None,
          skip_unreadable=False):
    from fastcsi.data import open_dataset

    return open_dataset(path, format=fmt, energy_key=energy_key, forces_key=forces_key, level=level, split=split,
                        energy_unit=energy_unit, skip_unreadable=skip_unreadable)


def _progress(iterable, total, label):
    from tqdm import tqdm

    # On stderr so `--json` stdout stays one JSON object; quiet for small files.
    return tqdm(iterable, total=total, desc=label, file=sys.stderr, disable=total < 2000 or not sys.stderr.isatty(), leave=False)


def summarize(ds, progress: bool = True) -> dict:
    """The numbers ``fastcsi data info`` prints (counting conventions: shared/README.md)."""
    import numpy as np

    from fastcsi.data.base import chemical_symbols

    n = len(ds)
    element_counts = np.zeros(128, dtype=np.int64)
    n_atoms = np.zeros(n, dtype=np.int64)
    with_energy = with_forces = with_cell = periodic = with_tags = 0
    items = _progress(ds, n, ds.path.name) if progress else ds
    for i, s in enumerate(items):
        n_atoms[i] = s.n_atoms
        element_counts += np.bincount(s.atomic_numbers, minlength=128)[:128]
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
        "n_classes": int(len(set(ds.class_keys().tolist()))),
        "units_note": ds.units_note,
        "fingerprint": ds.fingerprint,
        "skipped_unreadable": list(ds.skipped),
    }


@click.group()
def data():
    """Inspect, convert and sample datasets (info, convert, sample)."""


@data.command()
@click.argument("path", type=click.Path(path_type=Path))
@_reader_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(path, fmt, energy_key, forces_key, level, split, energy_unit, skip_unreadable, as_json):
    """Count structures, atoms, elements and classes; say which labels are present."""
    with _open(path, fmt, energy_key, forces_key, level, split, energy_unit, skip_unreadable) as ds:
        summary = summarize(ds)
    if as_json:
        click.echo(json.dumps(summary))
        return
    yes = {True: "yes", False: "no"}
    click.echo(f"{summary['path']}  [{summary['format']}]")
    click.echo(f"  structures   {summary['n_structures']}")
    click.echo(
        f"  atoms        total {summary['n_atoms_total']}  per structure min {summary['atoms_min']} "
        f"mean {summary['atoms_mean']:.1f} max {summary['atoms_max']}"
    )
    click.echo("  elements     " + " ".join(f"{k}:{v}" for k, v in summary["elements"].items()))
    click.echo(
        f"  labels       energy {yes[summary['has_energy']]}  forces {yes[summary['has_forces']]}  "
        f"tags {yes[summary['has_tags']]}"
    )
    click.echo(f"  cell         {yes[summary['has_cell']]}  periodic {yes[summary['periodic']]}")
    click.echo(f"  classes      {summary['n_classes']}")
    click.echo(f"  units        {summary['units_note']}")
    if summary["skipped_unreadable"]:
        click.echo(f"  skipped      {len(summary['skipped_unreadable'])} unreadable: "
                   + ", ".join(summary["skipped_unreadable"]))


def write_structures(structures, out: Path, meta: dict) -> int:
    """Write structures to extxyz (``.xyz``/``.extxyz``) or an ASE db (``.db``), atomically."""
    from fastcsi.errors import FastCSIError
    from fastcsi.utils import atomic_path, atomic_write

    suffix = out.suffix.lower()
    count = 0
    if suffix in (".xyz", ".extxyz"):
        import ase.io

        with atomic_write(out) as fh:
            for s in structures:
                atoms = s.to_ase()
                atoms.info.update({f"fastcsi_{k}": v for k, v in meta.items() if isinstance(v, (str, int, float))})
                ase.io.write(fh, atoms, format="extxyz")
                count += 1
        return count
    if suffix == ".db":
        import ase.db
        from ase.db.core import reserved_keys

        with atomic_path(out) as tmp:
            tmp.unlink()
            with ase.db.connect(str(tmp), type="db") as db:
                for s in structures:
                    atoms = s.to_ase()
                    atoms.info.clear()  # targets and keys go to key-value pairs / data below
                    values = _db_key_values(s)
                    # Keys ASE db refuses as columns (reserved, not identifiers) travel in row.data.
                    odd = {k: values.pop(k) for k in list(values) if not k.isidentifier() or k in reserved_keys}
                    db.write(atoms, key_value_pairs=values, data={"structure_id": s.id, **odd})
                    count += 1
            db = ase.db.connect(str(tmp), type="db")
            db.metadata = meta
        return count
    raise FastCSIError(f"{out}: output extension {suffix or '(none)'} not supported (use .extxyz, .xyz or .db)")


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


def _meta(ds, extra: dict) -> dict:
    from fastcsi.utils import versions

    meta = {"source": str(ds.path), "source_format": ds.format, "source_fingerprint": ds.fingerprint,
            "units_note": ds.units_note, "skipped_unreadable": list(ds.skipped)}
    meta.update(extra)
    meta["versions"] = versions()
    meta["fastcsi_version"] = meta["versions"]["fastcsi"]
    return meta


@data.command()
@click.argument("inp", metavar="IN", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@_reader_options
def convert(inp, out, fmt, energy_key, forces_key, level, split, energy_unit, skip_unreadable):
    """Convert IN to extxyz or an ASE db (chosen by OUT's extension), in Å/eV/eV/Å."""
    with _open(inp, fmt, energy_key, forces_key, level, split, energy_unit, skip_unreadable) as ds:
        count = write_structures(_progress(ds, len(ds), "convert"), out, _meta(ds, {}))
    click.echo(f"wrote {count} structures to {out}")


@data.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-n", "n", type=int, default=None, help="Number of structures (default: all).")
@click.option("--strategy", type=click.Choice(["random", "balanced", "all"]), default="random", show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("-o", "--out", type=click.Path(path_type=Path), required=True,
              help="Indices file: .json (indices + settings) or .npy (settings in OUT.meta.json).")
@click.option("--write-structures", "structures_out", type=click.Path(path_type=Path), default=None,
              help="Also write the chosen structures (.extxyz or .db).")
@_reader_options
def sample(path, n, strategy, seed, out, structures_out, fmt, energy_key, forces_key, level, split,
           energy_unit, skip_unreadable):
    """Choose N structures (seeded; class-balanced or random) and save their indices."""
    import numpy as np

    from fastcsi.data import sample_indices
    from fastcsi.errors import FastCSIError
    from fastcsi.utils import atomic_path, atomic_write

    with _open(path, fmt, energy_key, forces_key, level, split, energy_unit, skip_unreadable) as ds:
        indices = sample_indices(ds, n, strategy=strategy, seed=seed)
        meta = _meta(ds, {"n_requested": n, "n_selected": int(len(indices)), "strategy": strategy, "seed": seed,
                          "order": "ascending"})
        suffix = out.suffix.lower()
        if suffix == ".json":
            with atomic_write(out) as fh:
                json.dump({"settings": meta, "indices": indices.tolist()}, fh)
        elif suffix == ".npy":
            with atomic_path(out) as tmp:
                np.save(tmp, indices)
            with atomic_write(out.with_name(out.name + ".meta.json")) as fh:
                json.dump({"settings": meta}, fh)
        else:
            raise FastCSIError(f"{out}: indices file must end in .json or .npy")
        if structures_out is not None:
            write_structures((ds[int(i)] for i in indices), structures_out, meta)
    click.echo(f"selected {len(indices)} of {len(ds)} structures ({strategy}, seed {seed}) -> {out}")
