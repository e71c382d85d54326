"""``fastcsi pretrain``, ``fastcsi finetune`` and ``fastcsi report``: parsing and printing only; the
work is in :mod:`fastcsi.train`."""
from __future__ import annotations

import json

import click

from fastcsi.cli.data import unit_options, unit_reader_options
from fastcsi.errors import FastCSIError

_TRAIN_OPTIONS = [
    click.option("--batch-size", type=int, default=None,
                 help="Structures per optimizer step (global, over all ranks). [default: pretrain 8; finetune: the "
                      "recipe's, 4 for rmd17]"),
    click.option("--lr", type=float, default=None,
                 help="Peak learning rate of AdamW. [default: pretrain 3e-4; finetune: the recipe's]"),
    click.option("--weight-decay", type=float, default=None),
    click.option("--ema", "ema_decay", type=float, default=None, help="EMA decay of the weights (0 = off)."),
    click.option("--energy-weight", type=float, default=None),
    click.option("--force-weight", type=float, default=None),
    click.option("--warmup", "warmup_fraction", type=float, default=None, help="Warm-up, as a fraction of all steps."),
    click.option("--seed", type=int, default=None),
    click.option("--checkpoint-every", type=int, default=None, help="Also checkpoint every K optimizer steps."),
    click.option("--stop-after", "stop_after_steps", type=int, default=None,
                 help="Stop (with a checkpoint) after this many steps; continue later with --resume."),
    click.option("--layer-lr", "layer_lr", default=None, metavar="auto|jmp|none|NAME=SCALE,...",
                 help="Layer-wise learning-rate scales. [default: pretrain none (one rate for every layer); "
                      "finetune auto: JMP's scales for a pretrained backbone, none from scratch]"),
    click.option("--threads", "max_threads", default="auto", show_default=True,
                 help="torch CPU threads: a positive integer, or auto (one for a small model on CPU, else "
                      "torch's default)."),
    click.option("--no-amp", is_flag=True, help="No bf16 autocast on GPU."),
    click.option("--model-option", "model_options", multiple=True, metavar="KEY=VALUE",
                 help="Override a model hyperparameter (JSON value), e.g. cutoff=6.0; repeatable."),
    click.option("--forces", type=click.Choice(["auto", "direct", "gradient"]), default="auto",
                 help="Direct force head or forces = -dE/dx."),
    click.option("--max-atoms-per-batch", type=int, default=None, metavar="N",
                 help="Memory only: run each step's structures in chunks of at most N atoms, gradients summed "
                      "(the same update). [default: the whole step at once]"),
    click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1 ..."),
    click.option("--resume", is_flag=True, help="Continue the interrupted run in the output directory."),
    click.option("--trace", is_flag=True, help="Write a chrome trace of a few steps (trace.json)."),
    click.option("--quiet", is_flag=True, help="No progress bars."),
]


def _train_options(fn):
    for option in reversed(_TRAIN_OPTIONS):
        fn = option(fn)
    return fn


def _model_overrides(options) -> dict:
    out = {}
    for item in options:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise FastCSIError(f"--model-option {item!r}: expected KEY=VALUE")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out


def _config(base, kw):
    from fastcsi.pipeline.settings import parse_threads

    kw = {**kw, "max_threads": parse_threads(kw.get("max_threads"))}  # the same rule as select's --threads
    fields = ("epochs", "batch_size", "lr", "weight_decay", "ema_decay", "energy_weight", "force_weight",
              "warmup_fraction", "seed", "checkpoint_every", "stop_after_steps", "max_threads", "layer_lr",
              "max_atoms_per_batch")
    changes = {k: kw.get(k) for k in fields if kw.get(k) is not None}
    if kw.get("no_amp"):
        changes["amp"] = False
    return base.replace(**changes)


@click.command()
@click.option("--data", "data", multiple=True, type=click.Path(),
              help="Upstream dataset; repeatable (optional with --from-selection or --mix csi:).")
@click.option("--mix", default="temperature:2", show_default=True,
              help="balanced | proportional | temperature:T | csi:OUT/mix.json (CSI-optimal weights, fresh draws)")
@click.option("--from-selection", "selection", type=click.Path(dir_okay=False), default=None,
              help="Train on exactly the structures of OUT/pretrain_set.json (select --optimize-mix --budget N).")
@click.option("--sampling", type=click.Choice(["balanced", "random"]), default="balanced", show_default=True,
              help="Within each dataset: class-balanced or uniform.")
@click.option("--samples", "-n", type=int, default=None,
              help="Training structures N (the budget's sample size); --from-selection sets it.")
@click.option("--epochs", "-e", type=int, default=2, show_default=True, help="Epochs E (budget C = N x E).")
@click.option("--val-samples", type=int, default=None, help="Held-out validation structures (default 10% of N).")
@click.option("--model", default="gemnet-oc-s", show_default=True, help="gemnet-oc-tiny | gemnet-oc-s | gemnet-oc-l")
@click.option("--skip-unreadable", is_flag=True,
              help="HDF5: train without the groups of a damaged file that cannot be read (warns; pretrain.json lists them).")
@click.option("-o", "--out", "rundir", default="runs/pretrain", show_default=True, type=click.Path())
@_train_options
@unit_options
def pretrain(data, mix, selection, sampling, samples, epochs, val_samples, model, rundir, skip_unreadable, **kw):
    """Pretrain GemNet-OC on energy and forces of N structures for E epochs."""
    from fastcsi.train.config import PRETRAIN_DEFAULTS
    from fastcsi.train.pretrain import PretrainSettings, run_pretrain

    settings = PretrainSettings(
        data=list(data), samples=samples, mix=mix, sampling=sampling, model=model,
        model_overrides=_model_overrides(kw["model_options"]), forces=kw["forces"], val_samples=val_samples,
        device=kw["device"], rundir=rundir, train=_config(PRETRAIN_DEFAULTS, {**kw, "epochs": epochs}),
        trace=kw["trace"], progress=not kw["quiet"], skip_unreadable=skip_unreadable, selection=selection,
        data_options=unit_reader_options(kw["energy_unit"], kw["force_unit"]),
    )
    out = run_pretrain(settings, resume=kw["resume"], log=click.echo)
    if out["rank"] != 0:
        return
    if out["interrupted"]:
        click.echo(f"stopped after step {out['steps']}; continue with the same command plus --resume")
    else:
        click.echo(f"done: {out['steps']} steps in {out['train_seconds']:.1f} s; run directory {out['rundir']}")


@click.command()
@click.option("--pretrained", required=True, help="Checkpoint file, pretrain run directory, or 'none'.")
@click.option("--data", default=None, type=click.Path(), help="Downstream dataset, split by --split.")
@click.option("--train", "train_data", default=None, type=click.Path(),
              help="Training file (instead of --data), with --val / --test files: the dataset's own split.")
@click.option("--val", "val_data", default=None, type=click.Path(), help="Validation file (else drawn by --split).")
@click.option("--test", "test_data", default=None, type=click.Path(), help="Test file (else drawn by --split).")
@click.option("--target", default="energy,forces", show_default=True, help="energy,forces or a scalar target name.")
@click.option("--split", default=None,
              help="train,val,test as counts (950,50,rest) or fractions (0.8,0.1,0.1); parts given as files are 0.")
@click.option("--recipe", default=None, help="rmd17 | md22 | spice | qm9 | qmof | matbench (default: from --target).")
@click.option("--epochs", "-e", type=int, default=None, help="Maximum epochs (early stopping may end sooner).")
@click.option("--patience", type=int, default=None, help="Early-stopping patience in epochs (0 = off).")
@click.option("--model", default="gemnet-oc-s", show_default=True, help="Architecture for --pretrained none.")
@click.option("--base", default=None, help="Config name for a foreign checkpoint without hyperparameters.")
@click.option("--weights", type=click.Choice(["raw", "ema"]), default="raw", show_default=True,
              help="Weight set of a JMP / fairchem checkpoint: raw (its state_dict) or ema (its EMA weights).")
@click.option("-o", "--out", "rundir", default="runs/finetune", show_default=True, type=click.Path())
@_train_options
@unit_options
def finetune(pretrained, data, train_data, val_data, test_data, target, split, recipe, epochs, patience, model, base,
             weights, rundir, **kw):
    """Fine-tune a pretrained backbone (fresh heads) on a downstream task; report test MAE."""
    from fastcsi.train.config import recipe_for
    from fastcsi.train.finetune import FinetuneSettings, parse_targets, run_finetune

    if (data is None) == (train_data is None):
        raise FastCSIError("finetune needs the training data as --data PATH (split by --split) or --train PATH "
                           "(with --val / --test files), not both" if data else
                           "finetune needs --data PATH (split by --split) or --train PATH with --val / --test files")

    chosen = recipe_for(recipe, list(parse_targets(target)))
    cfg = _config(chosen.train, {**kw, "epochs": epochs})
    if patience is not None:
        cfg = cfg.replace(early_stopping_patience=patience)
    settings = FinetuneSettings(
        pretrained=pretrained, data=data or train_data, val_data=val_data, test_data=test_data, target=target,
        split=split, recipe=chosen.name, model=model,
        model_overrides=_model_overrides(kw["model_options"]), base=base, weights=weights, forces=kw["forces"],
        device=kw["device"], rundir=rundir, train=cfg, trace=kw["trace"], progress=not kw["quiet"],
        data_options=unit_reader_options(kw["energy_unit"], kw["force_unit"]),
    )
    out = run_finetune(settings, resume=kw["resume"], log=click.echo)
    if out["rank"] != 0:
        return
    if out.get("interrupted"):
        click.echo(f"stopped after step {out['steps']}; continue with the same command plus --resume")
    else:
        click.echo(f"results: {rundir}/results.json, learning curve: {rundir}/learning_curve.png, "
                   f"model: {rundir}/final.pt (fastcsi predict / evaluate, fastcsi.calculator.FastCSICalculator)")


@click.command()
@click.argument("select_dir", type=click.Path())
@click.argument("finetune_dirs", nargs=-1, required=True, type=click.Path())
@click.option("--metric", default=None, help="Which test MAE to compare (default: each run's primary).")
@click.option("-o", "--out", "outdir", default=None, type=click.Path(), help="Where to write report.json and the plot.")
def report(select_dir, finetune_dirs, metric, outdir):
    """CSI of each upstream vs the test MAE after pretraining on it, with Spearman's rho."""
    from pathlib import Path

    from fastcsi.train.report import build_report, format_report, write_report

    result = build_report(select_dir, finetune_dirs, metric)
    click.echo(format_report(result))
    target = Path(outdir) if outdir else (Path(select_dir) if Path(select_dir).is_dir() else Path(select_dir).parent)
    files = write_report(result, target)
    click.echo(f"written: {files['json']}, {files['plot']}")
