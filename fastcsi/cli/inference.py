"""``fastcsi predict`` and ``fastcsi evaluate``: parsing and printing only; the work is in
:mod:`fastcsi.inference`."""
from __future__ import annotations

import click

from fastcsi.cli.data import unit_options, unit_reader_options

_MODEL = click.option("--model", "model_path", required=True, type=click.Path(),
                      help="Fine-tuning (or pretraining) run directory, or its final.pt.")
_DATA = click.option("--data", required=True, type=click.Path(), help="Structures to predict (any readable format).")
_TARGET = click.option("--target", default=None,
                       help="energy,forces,stress or a graph-level target (default: predict everything the model "
                            "gives, evaluate what it was trained on).")
_BATCH = click.option("--batch-size", type=int, default=32, show_default=True, help="Structures per forward pass.")
_DEVICE = click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ...")
_DTYPE = click.option("--dtype", type=click.Choice(["float32", "float64"]), default="float32", show_default=True)
_THREADS = click.option("--threads", default="auto", show_default=True,
                        help="torch CPU threads: a positive integer, or auto (one for a small model on CPU, "
                             "else torch's default).")
_QUIET = click.option("--quiet", is_flag=True, help="No progress bar.")


def _run_options(fn):
    """The options predict and evaluate share (model and data come first, then -o)."""
    for option in reversed([_TARGET, _BATCH, _DEVICE, _DTYPE, _THREADS, _QUIET]):
        fn = option(fn)
    return fn


def _load(model_path, device, dtype, threads):
    from fastcsi.inference import load_model
    from fastcsi.pipeline.settings import parse_threads
    from fastcsi.threads import apply_threads

    threads = parse_threads(threads)  # the same rule as the other commands' --threads
    model = load_model(model_path, device=device, dtype=dtype)
    apply_threads(model.network, model.device, threads)
    return model


def _targets(spec):
    return None if spec is None else tuple(t.strip() for t in spec.split(",") if t.strip())


@click.command()
@_MODEL
@_DATA
@click.option("-o", "--out", required=True, type=click.Path(), help="OUT.extxyz (or .xyz) or OUT.db.")
@_run_options
@unit_options
@click.option("--max-atoms-per-batch", type=int, default=None, metavar="N",
              help="Also cap every batch at N atoms (a larger structure goes alone): memory follows N.")
def predict(model_path, data, out, target, batch_size, device, dtype, threads, quiet, energy_unit, force_unit,
            max_atoms_per_batch):
    """Write every structure of DATA with the model's predictions under fastcsi_* keys."""
    from fastcsi.inference import predict_file
    from fastcsi.inference.predict import output_format

    output_format(out)  # a bad extension fails before the model loads
    model = _load(model_path, device, dtype, threads)
    record = predict_file(model, data, out, properties=_targets(target), batch_size=batch_size, progress=not quiet,
                          data_options=unit_reader_options(energy_unit, force_unit), max_atoms=max_atoms_per_batch)
    keys = ", ".join(record["written_keys"]) or "no predictions"
    click.echo(f"wrote {record['written']} structures with {keys} to {out} (record: {out}.json)")


@click.command()
@_MODEL
@_DATA
@click.option("-o", "--out", "outdir", required=True, type=click.Path(), help="Directory for metrics.json and plots.")
@_run_options
@unit_options
def evaluate(model_path, data, outdir, target, batch_size, device, dtype, threads, quiet, energy_unit, force_unit):
    """MAE / RMSE per target, per-element force MAE and parity plots against DATA's labels."""
    from fastcsi.inference import evaluate as run_evaluate

    model = _load(model_path, device, dtype, threads)
    record = run_evaluate(model, data, outdir, targets=target, batch_size=batch_size, progress=not quiet,
                          data_options=unit_reader_options(energy_unit, force_unit))
    click.echo(f"{'target':<18} {'MAE':>12} {'RMSE':>12}  unit")
    for name, m in record["metrics"].items():
        click.echo(f"{name:<18} {m['mae']:>12.4g} {m['rmse']:>12.4g}  {m['unit']}")
    if record["forces_per_element"]:
        click.echo("force MAE per element: " + ", ".join(
            f"{el} {m['mae']:.4g}" for el, m in record["forces_per_element"].items()) + " meV/Å")
    click.echo(f"written: {outdir}/metrics.json, " + ", ".join(record["plots"].values()))
