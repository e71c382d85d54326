"""Rank candidate upstream datasets by their Chemical Similarity Index to a downstream dataset.

For each seed s, the downstream sample (random, seed s) and each upstream sample (class-balanced,
seed s) go through the frozen backbone; the per-atom features, flattened over atoms, feed streaming
mean/covariance statistics, and the CSI of the pair is the Fréchet distance between the two
Gaussians. The ranking sorts upstreams by the mean CSI over seeds (closest first); the spread over
seeds says how much of the ordering is sampling noise. Paths may also name precomputed stats
``.npz`` files (``fastcsi stats compute``), compared only when their extractor fingerprints match.
"""
from __future__ import annotations

import contextlib
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from fastcsi.errors import FastCSIError
from fastcsi.pipeline.compute import OUTLIERS_KEY, StatsCache, dataset_stats, open_source
from fastcsi.pipeline.distributed import init_distributed
from fastcsi.pipeline.report import element_symbol, mean_std, write_select_outputs
from fastcsi.pipeline.settings import ADEQUATE_SAMPLES_PER_DIM, SampleSpec, SelectSettings
from fastcsi.utils import versions

RESULT_FORMAT = "fastcsi-csi/1"
# In a stats object's metadata: the structures --drop-outlier-structures left out, and the check
# that found them.
DROPPED_KEY = "dropped_outlier_structures"
# Settings that must agree between two stats objects for their CSI to mean anything.
_MUST_MATCH = ("layer", "kind", "aggregation")


class _Source:
    """One path of the run: a dataset to sample, or a stats file used for every seed."""

    def __init__(self, label: str, kind: str, obj):
        self.label = label
        self.kind = kind
        self.obj = obj

    def close(self):
        if self.kind == "dataset":
            with contextlib.suppress(Exception):
                self.obj.close()


def _check_settings_match(down, up, down_label, up_label):
    from fastcsi.stats import check_comparable

    # CSI values of two extractors live in different feature spaces: never on one axis.
    a_name, b_name = down.metadata.get("extractor_name"), up.metadata.get("extractor_name")
    if a_name is not None and b_name is not None and a_name != b_name:
        raise FastCSIError(
            f"{up_label} was computed with extractor {b_name} but {down_label} with {a_name}; CSI values of "
            "different extractors are not comparable (compute both with the same --backbone)"
        )
    try:
        check_comparable(down, up)
    except FastCSIError as exc:
        raise FastCSIError(
            f"{up_label} cannot be compared with {down_label}: {exc} (compute both with the same "
            "--backbone, --layer and --kind)"
        ) from None
    for name in _MUST_MATCH:
        a, b = down.metadata.get(name), up.metadata.get(name)
        if a is not None and b is not None and a != b:
            raise FastCSIError(
                f"{up_label} was computed with {name}={b!r} but {down_label} with {name}={a!r}; "
                "recompute one of them with matching settings"
            )


class StatsProvider:
    """Hands out the stats of (source, sampling strategy, seed), each computed at most once per run
    and reused across runs through the cache."""

    def __init__(self, settings, extractor_factory, ctx, profiler, cache, progress, tracer):
        self.settings = settings
        self._extractor_factory = extractor_factory
        self._extractor = None
        self.ctx = ctx
        self.profiler = profiler
        self.cache = cache
        self.progress = progress
        self.tracer = tracer
        self._memo = {}
        self.cache_hits = 0
        self.computed = 0
        # --optimize-mix --level class: per-class stats of these sources, in the same pass, for one seed
        self.class_sources: set = set()
        self.class_seed = None

    def _compute(self, source: _Source, spec, seed: int, exclude=()):
        stats, hit = dataset_stats(
            source.obj,
            source.label,
            self.extractor,
            spec,
            agg=self.settings.agg,
            per_element=self.settings.per_element,
            batch_size=self.settings.batch_size,
            num_workers=self.settings.num_workers,
            max_atoms=self.settings.max_atoms_per_batch,
            ctx=self.ctx,
            profiler=self.profiler,
            cache=self.cache,
            progress=self.progress,
            tracer=self.tracer,
            per_class=source.label in self.class_sources and seed == self.class_seed,
            exclude=exclude,
        )
        self.cache_hits += int(hit)
        self.computed += int(not hit)
        return stats

    def _without_outlier_structures(self, source: _Source, spec, seed: int, stats):
        """--drop-outlier-structures: the same sample again, without the structures that hold
        outlier atoms (a second pass over the sample, only for a dataset that has them). The check
        of the first pass rides along in the metadata as ``dropped_outlier_structures``."""
        found = stats.metadata.get(OUTLIERS_KEY) or {}
        dropped = [entry["index"] for entry in found.get("structures", [])]
        if not dropped:
            return stats
        clean = self._compute(source, spec, seed, exclude=dropped)
        clean.metadata[DROPPED_KEY] = {"n_structures": len(dropped), "indices": dropped,
                                       "all_outlier_structures": bool(found.get("listing_complete")),
                                       "check_before": found}
        return clean

    @property
    def extractor(self):
        if self._extractor is None:
            from fastcsi.pipeline.backbone import apply_thread_policy

            self._extractor = self._extractor_factory()
            apply_thread_policy(self._extractor, self.settings.threads)
        return self._extractor

    def get(self, source: _Source, strategy: str, seed: int):
        if source.kind == "stats":
            return source.obj
        spec = SampleSpec.make(strategy, self.settings.samples, seed, len(source.obj))
        memo_key = (source.label, spec)
        if memo_key not in self._memo:
            stats = self._compute(source, spec, seed)
            if getattr(self.settings, "drop_outlier_structures", False):
                stats = self._without_outlier_structures(source, spec, seed, stats)
            self._memo[memo_key] = stats
        return self._memo[memo_key]


def _counts(stats) -> tuple[int, int]:
    meta = stats.metadata
    return int(meta.get("n_structures", stats.count)), int(meta.get("n_atoms", stats.count))


def _element_counts(stats) -> dict:
    return {int(z): int(g.count) for z, g in stats.groups.items()}


def run_select(
    downstream,
    upstreams,
    settings: SelectSettings | None = None,
    *,
    checkpoint=None,
    outdir="runs/select",
    cache_dir=None,
    use_cache: bool = True,
    trace: bool = False,
    progress: bool = True,
    extractor=None,
    mix=None,
) -> dict:
    """Compute the CSI of every upstream to ``downstream`` and write the outputs into ``outdir``
    (nothing is written when ``outdir`` and ``cache_dir`` are None).

    ``mix`` (a :class:`fastcsi.pipeline.mix.MixSettings`): also the CSI-optimal mixture of the
    upstreams (``mix.json``, ``mix.png``, with a budget ``pretrain_set.json``); its summary is the
    result's ``"mix"``. Returns the result dict that ``csi.json`` holds (on every rank; only rank 0
    writes files).
    """
    from fastcsi.pipeline.backbone import load_extractor, resolve_device
    from fastcsi.profiling import Profiler, torch_trace
    from fastcsi.stats import csi as csi_fn

    settings = settings or SelectSettings()
    upstreams = list(upstreams)
    if not upstreams:
        raise FastCSIError("give at least one --upstream dataset to rank")
    labels = [str(downstream)] + [str(u) for u in upstreams]
    if len(set(labels[1:])) != len(labels[1:]):
        raise FastCSIError("the same --upstream path is given twice")

    t0 = time.perf_counter()
    threads_before = torch.get_num_threads()
    ctx = init_distributed(settings.device)
    new_outdir = outdir is not None and not Path(outdir).exists()
    try:
        device = resolve_device(settings.device, ctx.local_rank if ctx.enabled else None)
        profiler = Profiler(device=device)
        outdir = Path(outdir) if outdir is not None else None
        cache_at = Path(cache_dir) if cache_dir else (outdir / "cache" if outdir is not None else None)
        cache = StatsCache(cache_at if use_cache else None)

        sources = []
        try:
            with profiler.stage("read"):
                for label in labels:
                    kind, obj = open_source(label, format=settings.format, **settings.data_options)
                    sources.append(_Source(label, kind, obj))
            if mix is not None:
                from fastcsi.pipeline.mix import precheck

                precheck(mix, sources)

            def make_extractor():
                if extractor is not None:
                    return extractor
                return load_extractor(settings.backbone, checkpoint, settings.layer, settings.kind, device,
                                      settings.dtype, base=settings.base, weights=settings.weights)

            trace_cm = torch_trace(outdir / "trace" if outdir is not None else None,
                                   enabled=trace and ctx.is_main and outdir is not None)
            with trace_cm as tracer:
                provider = StatsProvider(settings, make_extractor, ctx, profiler, cache, progress, tracer)
                if mix is not None and mix.level == "class":
                    provider.class_sources = set(labels[1:])
                    provider.class_seed = settings.seeds[0]
                result = _rank(sources, settings, provider, profiler, csi_fn)
                mix_payload = None
                if mix is not None:
                    from fastcsi.pipeline.mix import optimize_run

                    with profiler.stage("mix"):
                        mix_payload = optimize_run(mix, sources, provider, settings)
        finally:
            for s in sources:
                s.close()

        profiler.stop()
        wall = time.perf_counter() - t0
        run_settings = settings.to_dict()
        if provider._extractor is not None:
            run_settings.update(provider.extractor.describe())
        else:  # every input was a stats file: describe the extractor they share
            meta = sources[0].obj.metadata
            run_settings.update({k: meta.get(k) for k in ("extractor_name", "pretrained", "backbone", "extractor",
                                                          "layer", "kind", "feature_dim")})
        run_settings.update(
            checkpoint=None if checkpoint is None else str(checkpoint),
            device=str(device),
            world_size=ctx.world_size,
            threads=torch.get_num_threads(),
            cache_dir=None if cache.directory is None else str(cache.directory),
        )
        if run_settings.get("pretrained") is False:
            from fastcsi.pipeline.backbone import UNTRAINED_WARNING

            result["warnings"].insert(0, UNTRAINED_WARNING)
        result.update(
            extractor=run_settings.get("extractor_name"),
            settings=run_settings,
            versions=versions(),
            wall_s=wall,
            cache={"hits": provider.cache_hits, "computed": provider.computed},
        )
        if mix_payload is not None:
            result["mix"] = {k: mix_payload[k] for k in ("level", "weights", "structure_shares", "csi", "mix_s",
                                                         "seed_means", "drawn", "budget") if k in mix_payload}
        if ctx.is_main and outdir is None:  # the Python API without an output directory: nothing written
            result["profile"] = {"wall_s": wall, "stages_s": {k: v["total_s"] for k, v in
                                                              profiler.summary(run_settings)["stages"].items()}}
        elif ctx.is_main:
            result["profile"] = write_select_outputs(result, outdir, profiler, run_settings)
            if mix_payload is not None:
                from fastcsi.pipeline.mix import write_mix_outputs

                mix_payload["settings"].update(select=run_settings)
                result["profile"]["outputs"] += write_mix_outputs(mix_payload, outdir)
        return result
    except FastCSIError:
        # a user mistake leaves no output directory behind (stats cached elsewhere by --cache-dir stay)
        if new_outdir and ctx.is_main:
            shutil.rmtree(outdir, ignore_errors=True)
        raise
    finally:
        torch.set_num_threads(threads_before)
        ctx.close()


def run_select_backbones(
    downstream,
    upstreams,
    settings: SelectSettings | None = None,
    backbones=(),
    *,
    extractors: dict | None = None,
    outdir="runs/select",
    cache_dir=None,
    use_cache: bool = True,
    trace: bool = False,
    progress: bool = True,
    mix=None,
) -> dict:
    """``select --backbone A --backbone B ...``: the ranking under each extractor, and how far they agree.

    Each extractor gets a complete select run of its own in ``outdir/extractors/<k>-<name>/``
    (``csi.json``, plots, profile), all sharing one stats cache (``outdir/cache``, keyed by the
    extractor fingerprint, so a later run with one more backbone recomputes only that one).
    ``extractors`` (label -> extractor object) replaces ``backbones`` for callers that built them.
    Returns the first extractor's result with ``"agreement"`` added (see
    :mod:`fastcsi.pipeline.agreement`; every extractor's ranking is kept apart there), which is
    also ``outdir/csi.json``, beside ``outdir/agreement.png``. Its ``wall_s`` and ``cache`` counts
    are the sums over all the runs; ``agreement["extractor_runs"]`` holds each run's own (and its
    ``mix`` when one was asked).
    """
    import dataclasses
    import os

    from fastcsi.pipeline.agreement import agreement, plot_agreement
    from fastcsi.pipeline.report import display_names, write_json

    settings = settings or SelectSettings()
    labels = list(extractors) if extractors is not None else [str(b) for b in backbones]
    if len(labels) < 2:
        raise FastCSIError("comparing extractors needs at least two --backbone options")
    if len(set(labels)) != len(labels):
        raise FastCSIError(f"--backbone: the same backbone is given twice ({', '.join(labels)})")
    if extractors is None:  # refuse a misspelt name before any of the runs starts
        from fastcsi.extractors import parse_spec

        for label in labels:
            parse_spec(label)
    outdir = Path(outdir) if outdir is not None else None
    new_outdir = outdir is not None and not outdir.exists()
    if cache_dir is None and outdir is not None:
        cache_dir = outdir / "cache"
    results = {}
    try:
        for k, label in enumerate(labels, 1):
            run_dir = None if outdir is None else outdir / "extractors" / f"{k}-{_safe_name(label)}"
            one = dataclasses.replace(settings, backbone=None if extractors is not None else label)
            results[label] = run_select(
                downstream, upstreams, one, outdir=run_dir, cache_dir=cache_dir, use_cache=use_cache, trace=trace,
                progress=progress, extractor=None if extractors is None else extractors[label], mix=mix,
            )
    except FastCSIError:
        if new_outdir and int(os.environ.get("RANK", "0")) == 0:
            shutil.rmtree(outdir, ignore_errors=True)
        raise
    report = agreement({label: r["ranking"] for label, r in results.items()})
    report["extractor_runs"] = [
        {"backbone": label, "extractor_name": r["settings"].get("extractor_name"),
         "extractor": r["settings"].get("extractor"), "pretrained": r["settings"].get("pretrained"),
         "feature_dim": r["settings"].get("feature_dim"),
         "outdir": None if outdir is None else str(outdir / "extractors" / f"{k}-{_safe_name(label)}"),
         "wall_s": r["wall_s"], "cache": dict(r["cache"]),
         "backbone_atoms_per_s": r.get("profile", {}).get("backbone_atoms_per_s"),
         **({"mix": r["mix"]} if "mix" in r else {})}
        for k, (label, r) in enumerate(results.items(), 1)
    ]
    result = dict(results[labels[0]])
    result["warnings"] = [f"[{label}] {w}" for label, r in results.items() for w in r["warnings"]]
    # the whole comparison's time and cache use; each run's own figures are in extractor_runs
    result["wall_s"] = sum(r["wall_s"] for r in results.values())
    result["cache"] = {key: sum(r["cache"][key] for r in results.values()) for key in ("hits", "computed")}
    result["agreement"] = report
    if outdir is not None and int(os.environ.get("RANK", "0")) == 0:
        upstream_labels = [row["upstream"] for row in results[labels[0]]["ranking"]]
        display = dict(zip(upstream_labels, display_names(upstream_labels, 28)))
        plot_agreement(report, outdir / "agreement.png", display=display,
                       title=f"Upstream rank under each extractor\ndownstream {Path(str(downstream)).name}")
        result["profile"] = dict(result["profile"], outputs=["csi.json", "agreement.png"] + [
            f"extractors/{Path(run['outdir']).name}/" for run in report["extractor_runs"]])
        write_json(result, outdir / "csi.json")
    return result


def _safe_name(label: str) -> str:
    """A backbone label as a folder name (a model file's path keeps only its file name)."""
    name, _, model = label.partition(":")
    text = name if not model else f"{name}-{Path(model).name}"
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in text)[:48]


def select(downstream, upstreams, settings: SelectSettings | None = None, *, outdir=None, checkpoint=None,
           cache_dir=None, progress: bool = False, mix=None, **options):
    """Rank ``upstreams`` by their CSI to ``downstream`` (paths of datasets or stats files).

    Returns a :class:`~fastcsi.pipeline.ranking.Ranking`, closest first. Files are written only
    when asked: ``outdir`` (``csi.json``, plots, profile, and a stats cache in ``outdir/cache``)
    and/or ``cache_dir`` (stats reused across runs). ``settings`` defaults to the paper's
    (:class:`SelectSettings`); other keyword arguments are :func:`run_select`'s."""
    from fastcsi.pipeline.ranking import Ranking

    result = run_select(downstream, upstreams, settings, checkpoint=checkpoint, outdir=outdir, cache_dir=cache_dir,
                        progress=progress, mix=mix, **options)
    return Ranking.from_dict(result, outdir=outdir)


def _precheck(sources, settings, provider):
    """Refuse incomparable inputs before any feature is computed: stats files must agree with each
    other and with the extractor that will process the datasets."""
    from fastcsi.stats import FeatureStats

    stats_sources = [s for s in sources if s.kind == "stats"]
    if not stats_sources:
        return
    reference, ref_label = stats_sources[0].obj, stats_sources[0].label
    if any(s.kind == "dataset" for s in sources):
        ext = provider.extractor
        reference = FeatureStats(ext.dim, metadata={
            "extractor": ext.fingerprint, "layer": ext.layer, "kind": ext.kind, "aggregation": settings.agg,
            "extractor_name": ext.name,
        })
        ref_label = f"the backbone of this run ({ext.description})"
    for src in stats_sources:
        if src.obj is not reference:
            _check_settings_match(reference, src.obj, ref_label, src.label)


def _rank(sources, settings, provider, profiler, csi_fn) -> dict:
    """The ranking (closest first), the downstream's counts and the adequacy checks: the content
    of ``csi.json`` before the run's settings and profile are added."""
    down_src, up_srcs = sources[0], sources[1:]
    _precheck(sources, settings, provider)
    seeds = list(settings.seeds)
    per_seed_down = {seed: provider.get(down_src, settings.downstream_sampling, seed) for seed in seeds}
    dims = {int(per_seed_down[s].mean.shape[0]) for s in seeds}
    rows = [_upstream_row(up_src, down_src, per_seed_down, settings, provider, profiler, csi_fn)
            for up_src in up_srcs]
    rows.sort(key=lambda r: r["csi"])
    for i, r in enumerate(rows, 1):
        r["rank"] = i
    downstream = _downstream_summary(down_src, per_seed_down, seeds)
    warnings = []
    adequacy = _adequacy(rows, downstream, settings, dims, warnings)
    outliers = _feature_outliers(down_src, up_srcs, per_seed_down, settings, provider, warnings)
    return {
        "format": RESULT_FORMAT,
        "downstream": downstream,
        "ranking": rows,
        "adequacy": adequacy,
        "feature_outliers": outliers,
        "warnings": warnings,
    }


def _feature_outliers(down_src, up_srcs, per_seed_down, settings, provider, warnings) -> list:
    """The exploding-feature check of every stats object of the run (one entry per dataset and
    distinct sample, with the seeds that share it), and one warning per dataset that has outliers."""
    entries = []
    for role, src in [("downstream", down_src)] + [("upstream", u) for u in up_srcs]:
        by_object = {}
        for seed in settings.seeds:
            stats = per_seed_down[seed] if role == "downstream" else provider.get(src, settings.upstream_sampling, seed)
            by_object.setdefault(id(stats), (stats, []))[1].append(seed)
        for stats, seeds in by_object.values():
            dropped = stats.metadata.get(DROPPED_KEY)
            # with --drop-outlier-structures the check that found the dropped structures is the one to report
            check = dropped["check_before"] if dropped else stats.metadata.get(OUTLIERS_KEY)
            entry = {"dataset": src.label, "role": role, "seeds": seeds}
            if check is None:  # a stats file written before the check existed, or by other means
                entry["checked"] = False
            else:
                entry.update(checked=True, **check)
                if dropped:
                    entry["dropped"] = {"n_structures": dropped["n_structures"],
                                        "all_outlier_structures": dropped["all_outlier_structures"]}
            entries.append(entry)
    for label in dict.fromkeys(e["dataset"] for e in entries):
        found = [e for e in entries if e["dataset"] == label and e.get("n_outlier_atoms")]
        if found:
            warnings.append(outlier_warning(label, found))
    return entries


def outlier_warning(label: str, found: list) -> str:
    """One line for a dataset with outlier atoms (the worst of its samples)."""
    worst = max(found, key=lambda e: (e["trace_share"], e["n_outlier_atoms"]))
    # an incomplete listing found only some of the structures: their number is a lower bound
    at_least = "" if worst.get("listing_complete") else "at least "
    text = (f"{label}: {worst['n_outlier_atoms']:,} atom(s) in {at_least}{worst['n_outlier_structures']:,} "
            f"structure(s) have feature norms over {worst['outlier_factor']:g}x the median "
            f"({worst['median_norm']:.3g}; max {worst['max_norm']:.3g})")
    if worst["dominates_trace"]:
        text += (f" and carry {worst['trace_share']:.0%} of the dataset's feature variance, so they dominate its "
                 "CSI trace term")
    complete = all(e.get("listing_complete") for e in found)
    if all(e.get("dropped") for e in found):
        left_out = "those structures were" if complete else "the listed structures (not all of them) were"
        return text + f"; {left_out} left out (--drop-outlier-structures)"
    listed = "listed under feature_outliers" if complete else "partly listed under feature_outliers"
    return text + f" ({listed}); --drop-outlier-structures ranks without them"


def _pair_values(seed, down, up, res) -> dict:
    """One seed's CSI of one (downstream, upstream) pair with the counts behind it."""
    n_s, n_a = _counts(up)
    d_s, d_a = _counts(down)
    return {
        "seed": seed,
        "csi": float(res.csi),
        "mean_term": float(res.mean_term),
        "trace_term": float(res.trace_term),
        "n_structures": n_s,
        "n_atoms": n_a,
        "n_samples": int(up.count),
        "downstream_n_structures": d_s,
        "downstream_n_atoms": d_a,
        "downstream_n_samples": int(down.count),
        "upstream_seed": up.metadata.get("seed"),
        "downstream_seed": down.metadata.get("seed"),
    }


def _per_element_summary(values: dict, spread_measured: bool) -> dict:
    """``{Z: {"csi": [...], "down": [...], "up": [...]}}`` over seeds -> mean/std per element
    (std None when the seeds shared one sample)."""
    out = {}
    for z in sorted(values):
        v = values[z]
        m, s = mean_std(v["csi"])
        out[element_symbol(z)] = {
            "Z": z,
            "csi": m,
            "csi_std": s if spread_measured else None,
            "n_atoms_upstream": int(round(np.mean(v["up"]))),
            "n_atoms_downstream": int(round(np.mean(v["down"]))),
        }
    return out


def _upstream_row(up_src, down_src, per_seed_down, settings, provider, profiler, csi_fn) -> dict:
    """One upstream's ranking row: the CSI per seed, its mean and std, terms, counts, per element."""
    per_seed = []
    per_element_values = {}
    samples_used = set()  # distinct (downstream, upstream) stats objects over the seeds
    for seed, down in per_seed_down.items():
        up = provider.get(up_src, settings.upstream_sampling, seed)
        samples_used.add((id(down), id(up)))
        _check_settings_match(down, up, down_src.label, up_src.label)
        want_groups = settings.per_element and bool(down.groups) and bool(up.groups)
        with profiler.stage("distance"):
            res = csi_fn(down, up, per_group=want_groups)
        per_seed.append(_pair_values(seed, down, up, res))
        if want_groups and res.per_group:
            down_counts, up_counts = _element_counts(down), _element_counts(up)
            for z, g in res.per_group.items():
                entry = per_element_values.setdefault(int(z), {"csi": [], "down": [], "up": []})
                entry["csi"].append(float(g.csi))
                entry["down"].append(down_counts.get(int(z), 0))
                entry["up"].append(up_counts.get(int(z), 0))
    csi_mean, csi_std = mean_std([p["csi"] for p in per_seed])
    first_up = provider.get(up_src, settings.upstream_sampling, next(iter(per_seed_down)))
    # When every seed drew the same structures on both sides (a dataset smaller than --samples, or
    # stats files), the seeds repeat one number: a std of 0 would claim a certainty nobody measured.
    spread_measured = len(samples_used) > 1
    return {
        "upstream": up_src.label,
        "source": up_src.kind,
        "csi": csi_mean,
        "csi_std": csi_std if spread_measured else None,
        "csi_rel_std": (csi_std / csi_mean if csi_mean > 0 else 0.0) if spread_measured else None,
        "spread_measured": spread_measured,
        "all_structures_used": _whole_dataset(first_up),
        "mean_term": mean_std([p["mean_term"] for p in per_seed])[0],
        "trace_term": mean_std([p["trace_term"] for p in per_seed])[0],
        "n_structures": int(round(np.mean([p["n_structures"] for p in per_seed]))),
        "n_atoms": int(round(np.mean([p["n_atoms"] for p in per_seed]))),
        "per_seed": per_seed,
        "per_element": _per_element_summary(per_element_values, spread_measured),
        "stats_settings": _stats_settings(first_up),
    }


def _whole_dataset(stats) -> bool:
    """Stats computed here from every structure of their dataset (``--samples`` at least its size,
    or ``all``): no seed can draw a different sample, and more ``--samples`` adds nothing."""
    return stats.metadata.get("sampling") == "all" and "dataset_size" in stats.metadata


def _stats_settings(stats) -> dict:
    """A stats object's metadata for csi.json, less the outlier check (csi.json's feature_outliers)."""
    return {k: v for k, v in sorted(stats.metadata.items()) if k not in (OUTLIERS_KEY, DROPPED_KEY)}


def _downstream_summary(down_src, per_seed_down, seeds) -> dict:
    d_counts = [_counts(per_seed_down[s]) for s in seeds]
    return {
        "path": down_src.label,
        "source": down_src.kind,
        "all_structures_used": _whole_dataset(per_seed_down[seeds[0]]),
        "n_structures": int(round(np.mean([c[0] for c in d_counts]))),
        "n_atoms": int(round(np.mean([c[1] for c in d_counts]))),
        "per_seed": [
            {"seed": s, "n_structures": c[0], "n_atoms": c[1], "n_samples": int(per_seed_down[s].count)}
            for s, c in zip(seeds, d_counts)
        ],
        "stats_settings": _stats_settings(per_seed_down[seeds[0]]),
    }


def _adequacy(rows, downstream, settings, dims, warnings) -> dict:
    """Is the sample big enough? Samples per feature dimension, and how stable the ranking is."""
    dim = max(dims) if dims else 0
    need = ADEQUATE_SAMPLES_PER_DIM * dim
    unit = "atoms" if settings.agg == "flat" else "structures"
    low = []
    seeds = list(settings.seeds)
    sides = [(downstream["path"], [p["n_samples"] for p in downstream["per_seed"]], downstream["n_structures"],
              downstream.get("all_structures_used", False))]
    sides += [(r["upstream"], [p["n_samples"] for p in r["per_seed"]], r["n_structures"],
               r.get("all_structures_used", False)) for r in rows]
    for label, counts, n_structures, whole in sides:
        if whole and len(seeds) > 1:
            warnings.append(f"{label}: all {n_structures:,} structures used; seeds share the sample")
        if min(counts) < need:
            low.append(label)
            # Raising --samples cannot help a dataset that is already used whole.
            remedy = ("the dataset holds no more structures" if whole else "use more --samples")
            warnings.append(
                f"{label}: {min(counts):,} feature samples ({unit}) for feature dimension {dim}, fewer "
                f"than {ADEQUATE_SAMPLES_PER_DIM}x: the covariance is poorly determined and the CSI is "
                f"biased upwards; {remedy}"
            )
    order_per_seed = []
    if len(seeds) > 1 and rows:
        for i in range(len(seeds)):
            order_per_seed.append([r["upstream"] for r in sorted(rows, key=lambda r: r["per_seed"][i]["csi"])])
    stable = all(o == order_per_seed[0] for o in order_per_seed) if order_per_seed else None
    if stable is False:
        warnings.append("the ranking differs between seeds: the closest upstreams are within sampling noise")
    overlaps = []
    for a, b in zip(rows, rows[1:]):
        if len(seeds) > 1 and b["csi"] - a["csi"] < (a["csi_std"] or 0.0) + (b["csi_std"] or 0.0):
            overlaps.append([a["upstream"], b["upstream"]])
    return {
        "feature_dim": dim,
        "samples_per_dim_required": ADEQUATE_SAMPLES_PER_DIM,
        "min_samples_required": need,
        "below_required": low,
        "n_seeds": len(seeds),
        "ranking_stable_across_seeds": stable,
        "max_rel_std": max((r["csi_rel_std"] for r in rows if r["csi_rel_std"] is not None), default=None),
        "neighbours_within_1std": overlaps,
    }


def compute_stats_file(
    dataset_path,
    output,
    settings: SelectSettings | None = None,
    *,
    sampling: str = "balanced",
    seed: int = 0,
    checkpoint=None,
    progress: bool = True,
    extractor=None,
):
    """Compute one dataset's stats on its own and save them to ``output`` (``.npz``) for use as a
    ``select`` input elsewhere. ``settings`` gives everything but the sampling strategy and seed
    (its ``seeds`` are ignored). Returns the FeatureStats (on every rank; rank 0 writes)."""
    from fastcsi.pipeline.backbone import apply_thread_policy, load_extractor, resolve_device
    from fastcsi.pipeline.settings import SAMPLING_STRATEGIES
    from fastcsi.profiling import Profiler

    settings = settings or SelectSettings()
    if sampling not in SAMPLING_STRATEGIES:
        raise FastCSIError(f"--sampling {sampling!r}: choose one of {', '.join(SAMPLING_STRATEGIES)}")
    if seed < 0:
        raise FastCSIError(f"--seed {seed}: must be non-negative")
    output = Path(output)
    if output.suffix != ".npz":
        raise FastCSIError(f"{output}: the stats output must be a .npz file")
    threads_before = torch.get_num_threads()
    ctx = init_distributed(settings.device)
    try:
        dev = resolve_device(settings.device, ctx.local_rank if ctx.enabled else None)
        kind_, dataset = open_source(dataset_path, format=settings.format, **settings.data_options)
        if kind_ != "dataset":
            raise FastCSIError(f"{dataset_path}: is already a stats file, not a dataset")
        try:
            ext = extractor or load_extractor(settings.backbone, checkpoint, settings.layer, settings.kind, dev,
                                              settings.dtype, base=settings.base, weights=settings.weights)
            apply_thread_policy(ext, settings.threads)
            spec = SampleSpec.make(sampling, settings.samples, seed, len(dataset))
            stats, _ = dataset_stats(
                dataset,
                str(dataset_path),
                ext,
                spec,
                agg=settings.agg,
                per_element=settings.per_element,
                batch_size=settings.batch_size,
                num_workers=settings.num_workers,
                max_atoms=settings.max_atoms_per_batch,
                ctx=ctx,
                profiler=Profiler(device=dev),
                cache=StatsCache(None),
                progress=progress,
            )
        finally:
            dataset.close()
        stats.metadata.update(ext.describe(), checkpoint=None if checkpoint is None else str(checkpoint))
        if ctx.is_main:
            stats.save(output)
        return stats
    finally:
        torch.set_num_threads(threads_before)
        ctx.close()
