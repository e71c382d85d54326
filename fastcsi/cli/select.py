"""``fastcsi select``, ``fastcsi demo`` and ``fastcsi stats compute``: parsing and printing only;
the work is in :mod:`fastcsi.pipeline`."""
from __future__ import annotations

import os
import sys

import click

from fastcsi.cli.data import UNIT_OPTIONS, unit_reader_options
from fastcsi.errors import FastCSIError
from fastcsi.pipeline.settings import DEMO_SAMPLES, DEMO_SEEDS, PAPER_SAMPLES  # light: no torch, no numpy

DEFAULT_OUTDIR = "runs/select"


def _is_main_rank() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


def _limit_blas_threads(threads: int) -> None:
    """Give numpy/scipy's BLAS the same thread budget as torch. BLAS reads these variables when it
    loads, so this works only before numpy is imported (the CLI imports it lazily, after this)."""
    if "numpy" in sys.modules:
        return
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[name] = str(threads)


def _settings(kw, samples, seeds, threads, **sampling):
    """A SelectSettings from the shared model options (select, demo and stats compute)."""
    from fastcsi.pipeline import SelectSettings
    from fastcsi.pipeline.settings import parse_samples

    return SelectSettings(
        samples=parse_samples(samples),
        seeds=seeds,
        agg=kw["agg"],
        backbone=(kw["backbone"] or (None,))[0],  # several (select/demo): each run sets its own
        base=kw["base"],
        weights=kw["weights"],
        layer=kw["layer"],
        kind=kw["kind"],
        dtype=kw["dtype"],
        per_element=kw["per_element"],
        device=kw["device"],
        batch_size=kw["batch_size"],
        num_workers=kw["num_workers"],
        max_atoms_per_batch=kw.get("max_atoms_per_batch"),
        threads=threads,
        format=kw["data_format"],
        data_options={**({"skip_unreadable": True} if kw.get("skip_unreadable") else {}),
                      **unit_reader_options(kw.get("energy_unit"), kw.get("force_unit"))},
        **sampling,
    )


def _model_options(func):
    """Options that define the features (shared by select, demo and stats compute)."""
    options = [
        click.option("--backbone", multiple=True, metavar="NAME[:MODEL]",
                     help="Feature extractor: sevennet-0 (default, pretrained, offline), gemnet-oc:FILE, "
                     "gemnet-oc-random[:CONFIG] (untrained), chgnet[:0.3.0], fairchem:FILE[:TASK] (eSEN / UMA). "
                     "See README. select and "
                     "demo: repeat it to rank with each and compare the rankings."),
        click.option("--checkpoint", type=click.Path(dir_okay=False), default=None,
                     help="GemNet-OC checkpoint (JMP, fairchem or fastcsi): the same as --backbone gemnet-oc:FILE."),
        click.option("--base", default=None, metavar="CONFIG",
                     help="GemNet-OC config (gemnet-oc-s, gemnet-oc-l) for a checkpoint whose hyperparameters are "
                     "neither recorded nor readable from its tensors (the error says when)."),
        click.option("--weights", type=click.Choice(["raw", "ema"]), default="raw", show_default=True,
                     help="Weight set of a JMP / fairchem checkpoint: raw (its state_dict, as the paper's "
                     "extraction) or ema (its EMA weights, as JMP's fine-tuning)."),
        click.option("--agg", default="flat", show_default=True,
                     help="flat: every atom is a sample (the paper); mean|sum|max: one sample per structure."),
        click.option("--layer", default="final", show_default=True, help="Backbone block whose features are used."),
        click.option("--kind", default="node", show_default=True, help="node or edge features (per atom)."),
        click.option("--dtype", default="float32", show_default=True, help="Compute dtype of the backbone."),
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N."),
        click.option("--batch-size", type=int, default=16, show_default=True),
        click.option("--num-workers", type=int, default=0, show_default=True, help="Data-loading worker processes."),
        click.option("--max-atoms-per-batch", type=int, default=None, metavar="N",
                     help="Also cap every batch at N atoms (a larger structure goes alone): peak memory follows "
                     "N, not the structures drawn. [default: no cap]"),
        click.option("--threads", default="auto", show_default=True,
                     help="CPU threads (torch intra-op; BLAS too when given). auto: 1 for a small backbone "
                     "(faster) and for the demo, else torch's default."),
        click.option("--format", "data_format", default=None, help="Force the input format (default: detected)."),
        click.option("--skip-unreadable", is_flag=True,
                     help="HDF5: read damaged files without the groups that cannot be read (warns, lists them)."),
        # labels play no part in the features; the units still belong to how the files are read (recorded,
        # fingerprinted), so that pretrain --from-selection with the same options finds the same datasets
        *UNIT_OPTIONS,
        click.option("--per-element/--no-per-element", default=True, show_default=True,
                     help="Also accumulate per-element statistics for a per-element CSI breakdown."),
        click.option("--quiet", is_flag=True, help="No progress bars."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def _select_options(func):
    options = [
        click.option("--downstream", type=click.Path(), default=None,
                     help="Downstream dataset (or stats .npz). Default: the bundled demo downstream."),
        click.option("--upstream", "upstreams", type=click.Path(), multiple=True,
                     help="Candidate upstream dataset or stats .npz (repeat). Default: the bundled demo upstreams."),
        click.option("--samples", default=None,
                     help=f"Structures per dataset, or 'all' to stream everything. [default: {PAPER_SAMPLES}; "
                     f"demo: {DEMO_SAMPLES}]"),
        click.option("--upstream-sampling", default="balanced", show_default=True,
                     help="random, balanced (equal quota per class) or all."),
        click.option("--downstream-sampling", default="random", show_default=True, help="random, balanced or all."),
        click.option("--seeds", default=None, help="Comma-separated sampling seeds. [default: 0,1,2; demo: "
                     f"{','.join(str(seed) for seed in DEMO_SEEDS)}]"),
        click.option("-o", "--outdir", type=click.Path(file_okay=False), default=None,
                     help=f"Output directory. [default: {DEFAULT_OUTDIR}; demo: runs/demo]"),
        click.option("--cache-dir", type=click.Path(file_okay=False), default=None,
                     help="Where stats are cached and reused. [default: OUTDIR/cache]"),
        click.option("--no-cache", is_flag=True, help="Neither read nor write cached stats."),
        click.option("--trace", is_flag=True, help="Write a torch.profiler chrome trace into OUTDIR/trace."),
        click.option("--drop-outlier-structures", is_flag=True,
                     help="Rank without the structures whose atoms have feature norms over 100x the median "
                     "(listed in csi.json feature_outliers); a second pass over those datasets."),
        click.option("--optimize-mix", is_flag=True,
                     help="Also the CSI-optimal mixture of the upstreams: OUTDIR/mix.json and mix.png."),
        click.option("--level", "mix_level", type=click.Choice(["dataset", "class"]), default="dataset",
                     show_default=True, help="Mixture components: whole upstreams, or the classes inside them."),
        click.option("--diversity", type=float, default=0.0, show_default=True, metavar="TAU",
                     help="Entropy bonus on the weights (TAU >= 0; 0 = plain CSI minimum)."),
        click.option("--floor", "mix_floor", type=float, default=0.0, show_default=True,
                     help="Minimum share of every component."),
        click.option("--budget", type=int, default=None, metavar="N",
                     help="Draw an N-structure pretraining set from the optimal mixture: OUTDIR/pretrain_set.json."),
        click.option("--max-components", type=int, default=64, show_default=True,
                     help="--level class: at most this many clusters of classes per upstream."),
        click.option("--component-samples", type=int, default=None,
                     help="--level class: aim for this many feature samples per cluster. [default: 10 x feature dim]"),
        click.option("--mix-seed", type=int, default=0, show_default=True,
                     help="Seed of the class clustering and of the --budget draws."),
    ]
    for option in reversed(options):
        func = option(func)
    return _model_options(func)


def _mix_settings(kw):
    """MixSettings from the --optimize-mix options, or None (refusing mix options without it)."""
    if not kw["optimize_mix"]:
        given = [flag for flag, key, default in (("--level", "mix_level", "dataset"), ("--diversity", "diversity", 0.0),
                                                 ("--floor", "mix_floor", 0.0), ("--budget", "budget", None),
                                                 ("--max-components", "max_components", 64),
                                                 ("--component-samples", "component_samples", None),
                                                 ("--mix-seed", "mix_seed", 0)) if kw[key] != default]
        if given:
            raise FastCSIError(f"{', '.join(given)}: these options need --optimize-mix")
        return None
    from fastcsi.pipeline.mix import MixSettings

    return MixSettings(level=kw["mix_level"], diversity=kw["diversity"], floor=kw["mix_floor"], budget=kw["budget"],
                       max_components=kw["max_components"], component_samples=kw["component_samples"],
                       seed=kw["mix_seed"])


def _run(downstream, upstreams, samples, seeds, outdir, demo_mode, **kw):
    from fastcsi.pipeline.settings import DEMO_SAMPLES, DEMO_SEEDS, PAPER_SAMPLES, parse_seeds
    from fastcsi.pipeline.settings import parse_threads

    threads = parse_threads(kw["threads"])
    mix = _mix_settings(kw)
    if downstream is None and not upstreams:
        demo_mode = True
    if demo_mode and threads is None:
        # The demo's tiny backbone and 32-dim statistics are far too small to gain from threads.
        threads = 1
    if threads is not None:
        _limit_blas_threads(threads)
    # numpy, torch and the rest load only now, after the BLAS thread budget is set.
    from fastcsi.pipeline.mix import format_mix
    from fastcsi.pipeline.report import format_table
    from fastcsi.pipeline.select import run_select

    if demo_mode:
        from fastcsi.data.demo import demo_downstream, demo_upstreams

        downstream = downstream or str(demo_downstream())
        upstreams = upstreams or [str(p) for p in demo_upstreams()]
        samples = DEMO_SAMPLES if samples is None else samples
        seeds = ",".join(str(s) for s in DEMO_SEEDS) if seeds is None else seeds
        outdir = outdir or "runs/demo"
    elif downstream is None:
        raise FastCSIError("--downstream is required when --upstream is given")
    elif not upstreams:
        raise FastCSIError("give at least one --upstream dataset to rank against the downstream")
    settings = _settings(
        kw,
        samples=PAPER_SAMPLES if samples is None else samples,
        seeds=parse_seeds("0,1,2" if seeds is None else seeds),
        threads=threads,
        upstream_sampling=kw["upstream_sampling"],
        downstream_sampling=kw["downstream_sampling"],
        drop_outlier_structures=kw["drop_outlier_structures"],
    )
    outdir = outdir or DEFAULT_OUTDIR
    run_options = dict(outdir=outdir, cache_dir=kw["cache_dir"], use_cache=not kw["no_cache"], trace=kw["trace"],
                       progress=not kw["quiet"], mix=mix)
    if len(kw["backbone"]) > 1:
        if kw["checkpoint"]:
            raise FastCSIError("--checkpoint with several --backbone options: name the file as --backbone gemnet-oc:FILE")
        from fastcsi.pipeline.select import run_select_backbones

        result = run_select_backbones(downstream, list(upstreams), settings, kw["backbone"], **run_options)
    else:
        result = run_select(downstream, list(upstreams), settings, checkpoint=kw["checkpoint"], **run_options)
    if not _is_main_rank():
        return
    for warning in result["warnings"]:
        click.echo(f"fastcsi: warning: {warning}", err=True)
    if "agreement" in result:
        from fastcsi.pipeline.agreement import format_agreement
        from fastcsi.pipeline.report import display_names

        labels = [row["upstream"] for row in result["ranking"]]
        click.echo(format_agreement(result["agreement"], dict(zip(labels, display_names(labels, 40)))))
    else:
        click.echo(format_table(result))
    prof = result["profile"]
    if "agreement" in result:  # one line and one mixture per extractor, each named, then the totals
        runs = result["agreement"]["extractor_runs"]
        click.echo("")
        for run in runs:
            click.echo(
                f"[{run['backbone']}] wall {run['wall_s']:.1f} s, {run['backbone_atoms_per_s'] or 0:,.0f} atoms/s "
                f"through the backbone (graph + forward); stats computed {run['cache']['computed']}, reused from "
                f"cache {run['cache']['hits']}"
            )
        click.echo(f"all {len(runs)} extractors: wall {result['wall_s']:.1f} s; stats computed "
                   f"{result['cache']['computed']}, reused from cache {result['cache']['hits']}")
        for run in runs:
            if "mix" in run:
                click.echo(f"\n[{run['backbone']}] " + format_mix(run["mix"]))
    else:
        click.echo(
            f"\nwall {prof['wall_s']:.1f} s, {prof['backbone_atoms_per_s']:,.0f} atoms/s through the backbone "
            f"(graph + forward); stats computed {result['cache']['computed']}, reused from cache "
            f"{result['cache']['hits']}"
        )
        if "mix" in result:
            click.echo("\n" + format_mix(result["mix"]))
    click.echo(f"outputs in {outdir}: {', '.join(prof['outputs'])}")


@click.command("select")
@_select_options
def select(downstream, upstreams, samples, seeds, outdir, **kw):
    """Rank upstream datasets by CSI to a downstream dataset (closest first).

    With no arguments it runs on the bundled demo datasets (like `fastcsi demo`). Scale out with
    `torchrun --nproc_per_node=K -m fastcsi select ...`.
    """
    _run(downstream, upstreams, samples, seeds, outdir, demo_mode=False, **kw)


@click.command("demo")
@_select_options
def demo(downstream, upstreams, samples, seeds, outdir, **kw):
    """The CSI ranking on the bundled demo datasets, offline, on the pretrained default backbone.

    It is `fastcsi select` with the demo's defaults (bundled datasets, samples, seeds, runs/demo,
    one thread): every option below applies as in select; --downstream / --upstream replace the
    bundled datasets.
    """
    _run(downstream, upstreams, samples, seeds, outdir, demo_mode=True, **kw)


@click.command("compute")
@click.argument("dataset", type=click.Path())
@click.option("-o", "--output", type=click.Path(dir_okay=False), required=True, help="Stats file (.npz).")
@click.option("--sampling", default="balanced", show_default=True, help="random, balanced or all.")
@click.option("--samples", default="10000", show_default=True, help="Structures, or 'all'.")
@click.option("--seed", type=int, default=0, show_default=True)
@_model_options
def compute(dataset, output, sampling, samples, seed, **kw):
    """Compute one dataset's feature statistics (for `fastcsi select` inputs computed elsewhere)."""
    from fastcsi.pipeline.settings import parse_threads

    if len(kw["backbone"]) > 1:
        raise FastCSIError("stats compute: give one --backbone (a stats file belongs to one extractor)")
    threads = parse_threads(kw["threads"])
    if threads is not None:
        _limit_blas_threads(threads)
    from fastcsi.pipeline.select import compute_stats_file

    stats = compute_stats_file(
        dataset,
        output,
        _settings(kw, samples=samples, seeds=(seed,), threads=threads),
        sampling=sampling,
        seed=seed,
        checkpoint=kw["checkpoint"],
        progress=not kw["quiet"],
    )
    if _is_main_rank():
        meta = stats.metadata
        outliers = meta.get("feature_outliers") or {}
        if outliers.get("n_outlier_atoms"):
            from fastcsi.pipeline.select import outlier_warning

            click.echo(f"fastcsi: warning: {outlier_warning(str(dataset), [outliers])}", err=True)
        click.echo(
            f"{output}: {meta.get('n_structures', 0):,} structures, {meta.get('n_atoms', 0):,} atoms, "
            f"{stats.count:,} samples of dimension {meta.get('feature_dim')} "
            f"(sampling {meta.get('sampling')}, seed {meta.get('seed')}, extractor {meta.get('extractor_name')} {meta.get('extractor')})"
        )

