"""Dataset -> sampled structures -> backbone features -> streaming :class:`FeatureStats`, cached.

Memory is bounded by one batch plus the O(d^2) accumulator (O(n_elements * d^2) with the
per-element breakdown), so ``--samples all`` streams any dataset size. A stats object is identified
by (dataset fingerprint, sampling strategy, n, seed, extractor fingerprint, layer, kind,
aggregation, dtype, per-element, per-class): the same key gives the same statistics, so a cached file
is reused and an interrupted run resumes from the stats it finished (each file written atomically).

With ``per_class`` the same pass also accumulates one FeatureStats per class key of the dataset
(formula group, reaction, system id: what ``class_keys()`` gives), by the group mechanism of
``FeatureStats`` with the class index as the label: O(C d^2) float64 for the C classes sampled,
attached to the returned stats as ``.class_stats`` and cached beside them (``*-classes.npz``).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastcsi.errors import FastCSIError
from fastcsi.pipeline.settings import SampleSpec, stats_key

STATS_FORMAT = "fastcsi-select-stats/1"


def aggregate(features: torch.Tensor, batch, agg: str):
    """Samples for the statistics: (x, groups). ``flat``: one sample per atom, grouped by atomic
    number; ``mean``/``sum``/``max``: one sample per structure (no element groups)."""
    if agg == "flat":
        return features, batch.atomic_numbers
    n_structures = batch.num_structures
    index = batch.batch.to(features.device)
    if agg == "max":
        out = features.new_full((n_structures, features.shape[1]), float("-inf"))
        out = out.scatter_reduce(0, index[:, None].expand_as(features), features, reduce="amax")
        return out, None
    out = features.new_zeros((n_structures, features.shape[1])).index_add_(0, index, features)
    if agg == "mean":
        out = out / batch.natoms.to(out.device, out.dtype)[:, None]
    return out, None


class _NoTrace:
    def step(self):
        pass


@dataclass
class StatsCache:
    """A directory of stats files named by their key. ``None`` directory = no caching."""

    directory: Path | None

    def path(self, key: str, label: str) -> Path | None:
        if self.directory is None:
            return None
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in label)[:60]
        return Path(self.directory) / f"{safe}-{key}.npz"

    def load(self, key: str, label: str):
        path = self.path(key, label)
        if path is None or not path.exists():
            return None
        from fastcsi.stats import FeatureStats

        try:
            stats = FeatureStats.load(path)
        except FastCSIError:
            # A cache entry that cannot be read is recomputed, never trusted.
            return None
        if stats.metadata.get("stats_key") != key:
            return None
        return stats

    def save(self, key: str, label: str, stats) -> Path | None:
        path = self.path(key, label)
        if path is None:
            return None
        stats.save(path)  # atomic inside FeatureStats.save
        return path


def key_fields(dataset_fingerprint: str, spec: SampleSpec, extractor, agg: str, per_element: bool,
               per_class: bool = False, exclude=()) -> dict:
    fields = {
        "format": STATS_FORMAT,
        "dataset": dataset_fingerprint,
        "sampling": spec.strategy,
        "n": spec.n,
        "seed": spec.seed,
        "extractor": extractor.fingerprint,
        "layer": extractor.layer,
        "kind": extractor.kind,
        "aggregation": agg,
        "dtype": str(extractor.dtype).replace("torch.", ""),
        "per_element": bool(per_element and agg == "flat"),
    }
    if per_class:  # only then, so that the keys of existing caches stay valid
        fields["per_class"] = True
    if len(exclude):  # likewise: structures left out of the sample (--drop-outlier-structures)
        fields["excluded"] = stats_key({"indices": sorted(int(i) for i in exclude)})
    return fields


def _class_labels(dataset):
    """(class names, class index per structure) of ``dataset``, from its class keys."""
    names, index = np.unique(np.asarray(dataset.class_keys()).astype(str), return_inverse=True)
    return names, index.astype(np.int64)


def dataset_stats(
    dataset,
    label: str,
    extractor,
    spec: SampleSpec,
    *,
    agg: str = "flat",
    per_element: bool = True,
    batch_size: int = 16,
    num_workers: int = 0,
    max_atoms: int | None = None,
    ctx=None,
    profiler=None,
    cache: StatsCache | None = None,
    progress: bool = True,
    tracer=None,
    per_class: bool = False,
    exclude=(),
):
    """The :class:`FeatureStats` of ``spec``'s sample of ``dataset`` (from ``cache`` when present).

    ``max_atoms``: batches hold at most this many atoms as well as ``batch_size`` structures (peak
    memory then follows the atom budget, not the structures drawn; a larger structure goes alone).
    ``exclude``: dataset indices left out of the sample (the structures holding outlier atoms, for
    ``--drop-outlier-structures``); they are part of the cache key.

    ``per_class``: also per-class statistics in the same pass (see the module docstring), as the
    result's ``class_stats``: a FeatureStats whose groups are keyed by class index, with
    ``metadata["class_names"]`` (index -> key), ``metadata["class_structures"]`` (sampled
    structures per class index) and ``metadata["class_sizes"]`` (structures per class in the dataset).

    Under torch.distributed every rank computes its strided share and the shares are merged exactly
    with ``FeatureStats.all_reduce``; rank 0 decides cache hits and alone writes the cache.
    Returns ``(stats, from_cache)``.
    """
    from fastcsi.pipeline.distributed import DistContext
    from fastcsi.profiling import Profiler

    ctx = ctx or DistContext()
    profiler = profiler or Profiler(enabled=False)
    fields = key_fields(dataset.fingerprint, spec, extractor, agg, per_element, per_class, exclude)
    key = stats_key(fields)
    cache = cache or StatsCache(None)
    cached = _from_cache(cache, key, label, per_class, ctx)
    # An entry written before the exploding-feature check existed is recomputed, so that every
    # statistic comes with the check of its features.
    if cached is not None and OUTLIERS_KEY in cached.metadata:
        return cached, True

    with profiler.stage("read"):
        indices = _sample(dataset, spec, ctx, exclude)
    classes = _class_labels(dataset) if per_class else None
    stats, class_stats, n_structures, n_atoms = _accumulate(
        dataset, indices, label, extractor, agg=agg, track_groups=bool(per_element and agg == "flat"),
        classes=classes, batch_size=batch_size, num_workers=num_workers, max_atoms=max_atoms, ctx=ctx, profiler=profiler,
        bar=_progress_bar(label, spec, len(indices) * ctx.world_size) if progress and ctx.is_main else None,
        tracer=tracer or _NoTrace())
    _describe(stats, fields, key, dataset, label, extractor, n_structures, n_atoms)
    if class_stats is not None:
        _describe_classes(class_stats, stats, key, classes, indices, ctx)
        stats.class_stats = class_stats
    if ctx.is_main:
        if class_stats is not None:  # the classes first: a main file without them is never a hit
            cache.save(f"{key}-classes", Path(label).name, class_stats)
        cache.save(key, Path(label).name, stats)
    return stats, False


def _from_cache(cache: StatsCache, key: str, label, per_class: bool, ctx):
    """The cached stats (with their per-class part when asked) on every rank, or None."""
    cached = cache.load(key, Path(label).name) if ctx.is_main else None
    if cached is not None and per_class:
        cached.class_stats = cache.load(f"{key}-classes", Path(label).name)
        if cached.class_stats is None:  # half a cache entry is recomputed, never trusted
            cached = None
    if not ctx.broadcast(cached is not None):
        return None
    return ctx.broadcast(cached) if ctx.enabled else cached


def _sample(dataset, spec: SampleSpec, ctx, exclude=()) -> np.ndarray:
    """This rank's share of the sample's indices, sorted (files are read sequentially; flat
    statistics do not depend on the order)."""
    from fastcsi.data import sample_indices

    if spec.strategy == "all":
        indices = np.arange(len(dataset), dtype=np.int64)
    else:
        indices = np.asarray(sample_indices(dataset, spec.n, strategy=spec.strategy, seed=spec.seed), np.int64)
    if len(exclude):
        indices = np.setdiff1d(indices, np.asarray(exclude, dtype=np.int64))
    return ctx.shard(np.sort(indices))


def _progress_bar(label, spec: SampleSpec, total: int):
    from tqdm import tqdm

    seed_text = "" if spec.seed is None else f" seed {spec.seed}"
    return tqdm(total=total, desc=f"{Path(label).name}{seed_text}", unit="struct", leave=False, dynamic_ncols=True)


def _accumulate(dataset, indices, label, extractor, *, agg, track_groups, classes, batch_size, num_workers, ctx,
                profiler, bar, tracer, max_atoms=None):
    """One streaming pass: features of ``indices`` through ``extractor`` into FeatureStats (and
    per-class stats when ``classes`` = (names, class of each structure)), merged over ranks.
    Returns ``(stats, class_stats or None, n_structures, n_atoms)``."""
    from fastcsi.data import iter_batches
    from fastcsi.stats import FeatureStats
    from fastcsi.stats.outliers import FeatureNormMonitor

    stats = FeatureStats(extractor.dim, metadata={}, track_groups=track_groups)
    norms = FeatureNormMonitor(extractor.dim)
    class_stats = FeatureStats(extractor.dim, metadata={}, track_groups=True) if classes is not None else None
    done = 0  # structures of ``indices`` already processed: batches follow their order
    n_structures = n_atoms = 0
    error = None
    try:
        batches = iter(iter_batches(dataset, indices, batch_size=batch_size, dtype=extractor.dtype,
                                    device=extractor.device, num_workers=num_workers, max_atoms=max_atoms))
        while True:
            with profiler.stage("read"):
                batch = next(batches, None)
            if batch is None:
                break
            extractor.check_elements(batch.atomic_numbers, where=str(label))
            try:
                features = extractor.features(batch, profiler)
            except FastCSIError as exc:  # the graph and model layers do not know which file the batch is from
                raise FastCSIError(f"{label}: {exc}") from None
            with profiler.stage("stats"):
                in_batch = indices[done : done + batch.num_structures]
                owners = np.repeat(in_batch, batch.natoms.cpu().numpy())  # each atom's dataset index
                _check_features(features, batch, in_batch, owners, label, norms)
                x, groups = aggregate(features, batch, agg)
                stats.update(x, groups=groups if track_groups else None)
                if class_stats is not None:
                    # flat: every atom carries its structure's class
                    of_sample = owners if x.shape[0] != batch.num_structures else in_batch
                    class_stats.update(x, groups=classes[1][of_sample])
            done += batch.num_structures
            tracer.step()
            n_structures += batch.num_structures
            n_atoms += batch.num_atoms
            profiler.count(structures=batch.num_structures, atoms=batch.num_atoms)
            if bar is not None:
                bar.update(batch.num_structures * ctx.world_size)
    except FastCSIError as exc:
        error = exc
    finally:
        if bar is not None:
            bar.close()
    ctx.raise_if_any_failed(error)

    if ctx.enabled:
        with profiler.stage("stats"):
            stats.all_reduce()
            if class_stats is not None:
                class_stats.all_reduce()
        n_structures, n_atoms = ctx.sum_ints(n_structures, n_atoms)
    if stats.count < 2:
        raise FastCSIError(
            f"{label}: {stats.count} feature sample(s) from {n_structures} structure(s); the CSI needs "
            "at least 2 (use more --samples or --agg flat)"
        )
    if ctx.enabled:
        with profiler.stage("stats"):
            norms.all_reduce()
    stats.metadata[OUTLIERS_KEY] = _outlier_summary(norms)
    return stats, class_stats, n_structures, n_atoms


# The per-dataset result of the exploding-feature check in a stats object's metadata (and so in the
# cache): the same stats always come with the check of the features that made them.
OUTLIERS_KEY = "feature_outliers"


def _check_features(features, batch, indices, owners, label, norms) -> None:
    """Feed the feature norms to the outlier check (``owners``: each atom's dataset index; the
    structure ids of the batch name the ones it keeps), which is also the one check for non-finite
    features: refused naming the dataset and the structure, before any statistic absorbs the batch."""
    from fastcsi.stats.outliers import NonFiniteFeatures

    try:
        norms.update(features, owners, names=dict(zip(indices.tolist(), batch.ids)))
    except NonFiniteFeatures as exc:
        k = int(batch.batch[exc.row])
        structure = batch.ids[k] if k < len(batch.ids) and batch.ids[k] else f"#{int(indices[k])}"
        raise FastCSIError(
            f"{label}: the extractor returned NaN or inf features for structure {structure} (index "
            f"{int(indices[k])}); its geometry is probably far outside what the backbone can handle"
        ) from None


def _outlier_summary(norms) -> dict:
    """The outlier report as plain JSON, each listed structure with its dataset index and id (the id
    its batch gave when its atoms were found; the index where the dataset has none)."""
    report = norms.report()
    summary = report.to_dict()
    for entry in summary["structures"]:
        index = int(entry.pop("structure"))
        entry.update(index=index, id=report.names.get(index) or str(index))
    return summary


def _describe(stats, fields: dict, key: str, dataset, label, extractor, n_structures: int, n_atoms: int):
    """What produced ``stats``: the cache-key fields, the dataset, the counts, the backbone."""
    stats.metadata.update(
        fields,
        stats_key=key,
        dataset_path=str(label),
        dataset_format=getattr(dataset, "format", "unknown"),
        dataset_size=len(dataset),
        n_structures=int(n_structures),
        n_atoms=int(n_atoms),
        backbone=extractor.description,
        extractor_name=extractor.name,
        pretrained=bool(extractor.pretrained),
        feature_dim=extractor.dim,
    )


def _describe_classes(class_stats, stats, key: str, classes, indices, ctx):
    class_names, class_of = classes
    sampled = np.bincount(class_of[indices], minlength=len(class_names))
    if ctx.enabled:
        sampled = np.asarray(ctx.sum_ints(*sampled.tolist()), dtype=np.int64)
    class_stats.metadata.update(
        {k: v for k, v in stats.metadata.items() if k not in ("n_structures", "n_atoms")},
        stats_key=f"{key}-classes",
        class_names=class_names.tolist(),
        class_structures={str(c): int(n) for c, n in enumerate(sampled) if n},
        class_sizes=np.bincount(class_of, minlength=len(class_names)).tolist(),  # whole dataset
    )


def open_source(path, format=None, **options):
    """A dataset to compute stats from, or a precomputed stats file (``.npz`` written by
    ``fastcsi stats compute`` / ``FeatureStats.save``). Returns ``("stats", FeatureStats)`` or
    ``("dataset", Dataset)``."""
    path = Path(path)
    if not path.exists():
        raise FastCSIError(f"{path}: no such file or directory")
    if is_stats_file(path):
        from fastcsi.stats import FeatureStats

        return "stats", FeatureStats.load(path)
    from fastcsi.data import open_dataset

    dataset = open_dataset(path, format=format, **options)
    if len(dataset) == 0:
        raise FastCSIError(f"{path}: dataset holds no structures")
    return "dataset", dataset


def is_stats_file(path) -> bool:
    """True for a FeatureStats ``.npz`` (an rMD17/sGDML ``.npz`` dataset is not one)."""
    from fastcsi.stats.feature_stats import FORMAT

    path = Path(path)
    if path.suffix != ".npz" or not path.is_file():
        return False
    try:
        with np.load(path, allow_pickle=False) as npz:
            return "format" in npz.files and str(npz["format"]) == FORMAT
    except Exception:
        return False

