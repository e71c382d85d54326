"""``fastcsi data``: inspect, convert and sample datasets."""
from __future__ import annotations

import json
from pathlib import Path

import click

_FORMAT = click.option("--format", "fmt", default=None, help="Override content sniffing (see README 'Data formats').")
_ENERGY = click.option("--energy-key", default=None, help="Energy label key (extxyz/db info key, HDF5 dataset...).")
_FORCES = click.option("--forces-key", default=None, help="Forces label key.")
_LEVEL = click.option("--level", default=None, help="Level of theory (ANI-1x, Transition-1x).")
_SPLIT = click.option("--split", default=None, help="Transition-1x split: data|train|val|test.")
_EUNIT = click.option("--energy-unit", default=None,
                      help="Energy unit of files that store none (extxyz, ASE db/traj, npz): eV, meV, Ha, kcal/mol, "
                           "kJ/mol. [default: eV; npz: kcal/mol]")
_FUNIT = click.option("--force-unit", default=None,
                      help="Force unit of such files, e.g. hartree/bohr or kcal/mol/Å. [default: the energy unit per Å]")
_SKIP = click.option("--skip-unreadable", is_flag=True,
                     help="HDF5: read a damaged file without the groups that cannot be read (warns, lists them).")


# --energy-unit / --force-unit, for every command that opens datasets
UNIT_OPTIONS = (_EUNIT, _FUNIT)


def unit_options(command):
    """--energy-unit / --force-unit for commands that read labels (pretrain, finetune, predict, evaluate);
    pass ``unit_reader_options(energy_unit, force_unit)`` on to ``open_dataset``."""
    return _EUNIT(_FUNIT(command))


def unit_reader_options(energy_unit, force_unit) -> dict:
    from fastcsi.data.base import given_options

    return given_options(energy_unit=energy_unit, force_unit=force_unit)


def _reader_options(command):
    """The options every command that opens a dataset takes (passed on to ``_open``)."""
    for option in reversed((_FORMAT, _ENERGY, _FORCES, _LEVEL, _SPLIT, _EUNIT, _FUNIT, _SKIP)):
        command = option(command)
    return command


def _open(path, fmt, energy_key=None, forces_key=None, level=None, split=None, energy_unit=None, force_unit=None,
          skip_unreadable=False):
    from fastcsi.data import open_dataset

    return open_dataset(path, format=fmt, energy_key=energy_key, forces_key=forces_key, level=level, split=split,
                        energy_unit=energy_unit, force_unit=force_unit, skip_unreadable=skip_unreadable)


@click.group()
def data():
    """Inspect, convert, sample and index datasets (info, convert, sample, index)."""


@data.command()
@click.argument("path", type=click.Path(path_type=Path))
@_reader_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object.")
def info(path, fmt, energy_key, forces_key, level, split, energy_unit, force_unit, skip_unreadable, as_json):
    """Count structures, atoms, elements and classes; say which labels are present."""
    from fastcsi.data import convert as convert_api

    with _open(path, fmt, energy_key, forces_key, level, split, energy_unit, force_unit, skip_unreadable) as ds:
        summary = convert_api.summarize(ds, progress=True)
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
    targets = summary["targets"]
    if targets:
        n = summary["n_structures"]
        click.echo("  targets      " + " ".join(name if count == n else f"{name}({count} of {n})"
                                             for name, count in targets.items())
                   + "  (scalar, in the file's units; finetune --target NAME)")
    else:
        click.echo("  targets      none")
    click.echo(f"  cell         {yes[summary['has_cell']]}  periodic {yes[summary['periodic']]}")
    click.echo(f"  classes      {summary['n_classes']}")
    click.echo(f"  units        {summary['units_note']}")
    if summary["skipped_unreadable"]:
        click.echo(f"  skipped      {len(summary['skipped_unreadable'])} unreadable: "
                   + ", ".join(summary["skipped_unreadable"]))


@data.command()
@click.argument("inp", metavar="IN", type=click.Path(path_type=Path))
@click.argument("out", type=click.Path(path_type=Path))
@_reader_options
def convert(inp, out, fmt, energy_key, forces_key, level, split, energy_unit, force_unit, skip_unreadable):
    """Convert IN to extxyz or an ASE db (chosen by OUT's extension), in Å/eV/eV/Å."""
    from fastcsi.data import convert as convert_api

    with _open(inp, fmt, energy_key, forces_key, level, split, energy_unit, force_unit, skip_unreadable) as ds:
        count = convert_api.write_structures(convert_api.progress_bar(ds, len(ds), "convert"), out,
                                             convert_api.provenance(ds, {}))
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
           energy_unit, force_unit, skip_unreadable):
    """Choose N structures (seeded; class-balanced or random) and save their indices."""
    from fastcsi.data import convert as convert_api, sample_indices

    with _open(path, fmt, energy_key, forces_key, level, split, energy_unit, force_unit, skip_unreadable) as ds:
        indices = sample_indices(ds, n, strategy=strategy, seed=seed)
        meta = convert_api.provenance(ds, {"n_requested": n, "n_selected": int(len(indices)), "strategy": strategy,
                                           "seed": seed, "order": "ascending"})
        convert_api.write_indices(indices, out, meta)
        if structures_out is not None:
            convert_api.write_structures((ds[int(i)] for i in indices), structures_out, meta)
    click.echo(f"selected {len(indices)} of {len(ds)} structures ({strategy}, seed {seed}) -> {out}")


@data.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("-j", "--jobs", type=int, default=1, show_default=True,
              help="Worker processes (over shards, and entry ranges of large files).")
@_reader_options
def index(path, jobs, fmt, energy_key, forces_key, level, split, energy_unit, force_unit, skip_unreadable):
    """Build the dataset index (class keys, atom counts) ahead of time, into the cache directory.

    Under torchrun the ranks split the files and exchange what they built."""
    import time

    from fastcsi.data.index import build_indices, cache_root
    from fastcsi.errors import FastCSIError

    if jobs < 1:
        raise FastCSIError(f"-j {jobs}: give at least 1 worker process")
    from fastcsi.distributed import init_distributed

    start = time.perf_counter()
    ctx = init_distributed("cpu")  # under torchrun the ranks split the files (one process: no-op)
    try:
        with _open(path, fmt, energy_key, forces_key, level, split, energy_unit, force_unit, skip_unreadable) as ds:
            report = build_indices(ds, workers=jobs, group=ctx if ctx.enabled else None)
    finally:
        ctx.close()
    wall = time.perf_counter() - start
    where = cache_root()
    if not ctx.is_main:
        return
    click.echo(f"{path}: {len(ds)} structures; {report['built']} of {report['files']} files indexed "
               f"({report['entries_built']} entries in {wall:.2f} s) -> "
               + (f"{where}/index" if where is not None else "nowhere (FASTCSI_CACHE_DIR=off)"))
