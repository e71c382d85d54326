"""CSI-optimal pretraining mixtures from the statistics a selection run already computed.

``fastcsi select --optimize-mix`` lands here after the ranking. The components are the upstream
datasets (``level="dataset"``) or the classes inside them (``level="class"``: formula groups,
reactions, systems, with at most ``max_components`` clusters per dataset), each summarised by the
FeatureStats of the first seed's sample; the target is the first seed's downstream stats. The
weights minimise the analytic CSI of the mixture (:func:`fastcsi.stats.optimize_mixture`): shares
of feature samples (atoms for flat features), so no new pass through the backbone is needed.

With a budget of N structures the shares become structure quotas (share / samples per structure of
the component, apportioned to sum to N, capped by what the component holds) and seeded
class-balanced draws inside each component. Outputs: ``mix.json``, ``mix.png`` and, with a budget,
``pretrain_set.json`` (each dataset's path, fingerprint and chosen indices), which
``fastcsi pretrain --from-selection`` trains on.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from fastcsi.data.sampling import draw_selection
from fastcsi.errors import FastCSIError
from fastcsi.utils import atomic_write, pyplot, read_json, save_figure, versions

MIX_FORMAT = "fastcsi-mix/1"
# ``select --budget`` reads at most this many chosen structures per dataset to count those without
# force labels; beyond it, evenly spaced ones stand for the rest (the count is then an estimate)
FORCE_LABEL_CHECKS = 2000
SELECTION_FORMAT = "fastcsi-pretrain-set/1"
LEVELS = ("dataset", "class")


@dataclass(frozen=True)
class MixSettings:
    """What ``--optimize-mix`` optimises and draws."""

    level: str = "dataset"  # dataset | class
    diversity: float = 0.0  # entropy bonus TAU (nats), >= 0
    floor: float = 0.0  # minimum share of every component
    budget: int | None = None  # structures N of the pretraining set (pretrain_set.json); None = no draw
    max_components: int = 64  # at class level: at most this many clusters of classes per dataset
    # at class level: aim for this many feature samples per cluster (None: 10 x the feature dimension,
    # the adequacy rule of the ranking), so that no component's covariance is mostly noise
    component_samples: int | None = None
    seed: int = 0  # clustering and the draws
    temperature: float = 2.0  # of the temperature baseline

    def __post_init__(self):
        if self.level not in LEVELS:
            raise FastCSIError(f"--level {self.level!r}: choose dataset or class")
        if not np.isfinite(self.diversity) or self.diversity < 0:
            raise FastCSIError(f"--diversity {self.diversity}: the entropy bonus TAU must be >= 0")
        if not np.isfinite(self.floor) or not 0 <= self.floor < 1:
            raise FastCSIError(f"--floor {self.floor}: must be in [0, 1)")
        if self.budget is not None and (isinstance(self.budget, bool) or int(self.budget) < 1):
            raise FastCSIError(f"--budget {self.budget}: must be a positive number of structures")
        if self.max_components < 1:
            raise FastCSIError(f"--max-components {self.max_components}: must be >= 1")
        if self.component_samples is not None and self.component_samples < 2:
            raise FastCSIError(f"--component-samples {self.component_samples}: must be >= 2")
        if self.seed < 0:
            raise FastCSIError(f"mix seed {self.seed}: must be non-negative")
        if self.temperature <= 0:
            raise FastCSIError(f"temperature {self.temperature}: must be positive")

    def to_dict(self) -> dict:
        return asdict(self)


def precheck(mix: MixSettings, sources) -> None:
    """Refuse what cannot work before any feature is computed (so nothing is written)."""
    upstreams = sources[1:]
    needs_data = mix.level == "class" or mix.budget is not None
    for src in upstreams:
        if src.kind != "dataset" and needs_data:
            why = "class-level components" if mix.level == "class" else "--budget draws structures"
            raise FastCSIError(f"{src.label}: is a stats file; {why} from the dataset itself, so give its path")
    if mix.budget is not None:
        total = sum(len(src.obj) for src in upstreams)
        if mix.budget > total:
            raise FastCSIError(f"--budget {mix.budget} is larger than the data: the upstreams hold {total} structures")
    floors = mix.floor * (len(upstreams) if mix.level == "dataset" else 1)
    if floors > 1:
        raise FastCSIError(f"--floor {mix.floor} for {len(upstreams)} datasets: the floors add up to more than 1")


# ------------------------------------------------------------------------------------- components
def _samples_per_structure(stats) -> float:
    n_structures = int(stats.metadata.get("n_structures", stats.count))
    return stats.count / max(n_structures, 1)


def _dataset_size(src) -> int:
    if src.kind == "dataset":
        return len(src.obj)
    meta = src.obj.metadata
    return int(meta.get("dataset_size", meta.get("n_structures", src.obj.count)))


def _class_components(label: str, name: str, dataset_index: int, up, mix: MixSettings):
    """Components of one dataset at class level: its classes, merged into <= K clusters."""
    from fastcsi.stats import cluster_components, merge_components

    class_stats = getattr(up, "class_stats", None)
    if class_stats is None:  # pragma: no cover - the provider asks for them at class level
        raise FastCSIError(f"{label}: no per-class statistics were computed")
    names = class_stats.metadata["class_names"]
    sampled = {int(c): int(n) for c, n in class_stats.metadata["class_structures"].items()}
    labels = sorted(c for c, g in class_stats.groups.items() if g.count >= 2)
    skipped = [names[c] for c in sorted(class_stats.groups) if class_stats.groups[c].count < 2]
    if not labels:
        raise FastCSIError(f"{label}: no class has 2 or more feature samples; use more --samples")
    groups = [class_stats.groups[c] for c in labels]
    from fastcsi.pipeline.settings import ADEQUATE_SAMPLES_PER_DIM

    per_cluster = mix.component_samples or ADEQUATE_SAMPLES_PER_DIM * class_stats.dim
    n_clusters = int(np.clip(sum(g.count for g in groups) // per_cluster, 1, mix.max_components))
    assignment = cluster_components(np.stack([g.mean for g in groups]), [g.count for g in groups],
                                    n_clusters, seed=mix.seed)
    merged = merge_components(groups, assignment)
    out = []
    for j, stats in enumerate(merged):
        members = [labels[i] for i in np.flatnonzero(assignment == j)]
        classes = [names[c] for c in members]
        title = f"{name}:{classes[0]}" if len(classes) == 1 else f"{name}:cluster{j} ({len(classes)} classes)"
        structures = sum(sampled.get(c, 0) for c in members)
        sizes = class_stats.metadata.get("class_sizes")
        out.append({"name": title, "dataset": dataset_index, "classes": classes, "stats": stats,
                    "samples_per_structure": stats.count / max(structures, 1),
                    "capacity": None if sizes is None else sum(int(sizes[c]) for c in members)})
    return out, skipped


def _baseline_weights(sizes, samples_per_structure, temperature):
    """Balanced and temperature mixtures as the pretraining sampler defines them (shares of
    structures), turned into shares of feature samples for the analytic CSI."""
    from fastcsi.data import temperature_mix

    sizes = np.asarray(sizes, dtype=np.float64)
    spp = np.asarray(samples_per_structure, dtype=np.float64)
    structure_shares = {"balanced": np.where(sizes > 0, 1.0, 0.0) / max((sizes > 0).sum(), 1),
                        f"temperature:{temperature:g}": temperature_mix(sizes, temperature)}
    return {k: (v * spp) / (v * spp).sum() for k, v in structure_shares.items()}, structure_shares


def _capacity(components, datasets) -> np.ndarray:
    """Structures each component can supply: its dataset, or the dataset's structures of its classes."""
    keys = {}
    out = []
    for c in components:
        k = c["dataset"]
        if c.get("capacity") is not None:  # counted in the statistics pass
            out.append(c["capacity"])
            continue
        if k not in keys:
            names, counts = np.unique(np.asarray(datasets[k].class_keys()).astype(str), return_counts=True)
            keys[k] = dict(zip(names.tolist(), counts.tolist()))
        out.append(sum(keys[k].get(name, 0) for name in c["classes"]))
    return np.asarray(out, dtype=np.float64)


def _structure_shares(weights, samples_per_structure) -> np.ndarray:
    shares = np.asarray(weights) / np.asarray(samples_per_structure, dtype=np.float64)
    return shares / shares.sum()


# ------------------------------------------------------------------------------------- the run
def optimize_run(mix: MixSettings, sources, provider, settings) -> dict:
    """The ``mix.json`` payload (and, with a budget, the ``pretrain_set.json`` one under the key
    ``"_selection"``) from the stats ``provider`` already holds for ``sources``."""
    from fastcsi.pipeline.report import display_names
    from fastcsi.stats import mixture_csi, optimize_mixture

    t0 = time.perf_counter()
    seeds = list(settings.seeds)
    down_src, up_srcs = sources[0], sources[1:]
    target = provider.get(down_src, settings.downstream_sampling, seeds[0])
    ups = [provider.get(src, settings.upstream_sampling, seeds[0]) for src in up_srcs]
    labels = [src.label for src in up_srcs]
    short = display_names(labels)
    sizes = [_dataset_size(src) for src in up_srcs]
    spp = [_samples_per_structure(u) for u in ups]

    base_weights, base_structures = _baseline_weights(sizes, spp, mix.temperature)
    dataset_floor = mix.floor if mix.level == "dataset" else 0.0
    datasets_opt = optimize_mixture(ups, target, mix.diversity, dataset_floor, names=labels,
                                    baselines=base_weights)
    best = datasets_opt.best_single
    comparison = {
        "best_single": {"upstream": labels[best], "csi": datasets_opt.best_single_csi},
        **{name: value["csi"] for name, value in datasets_opt.baselines.items()},
    }
    skipped_classes = {}
    if mix.level == "dataset":
        components = [{"name": labels[k], "dataset": k, "classes": None, "stats": ups[k],
                       "samples_per_structure": spp[k], "capacity": sizes[k]} for k in range(len(ups))]
        result = datasets_opt
    else:
        components = []
        for k, (label, name, up) in enumerate(zip(labels, short, ups)):
            parts, skipped = _class_components(label, name, k, up, mix)
            components += parts
            if skipped:
                skipped_classes[label] = skipped
        if mix.floor * len(components) > 1:
            raise FastCSIError(f"--floor {mix.floor} for {len(components)} class components: the floors add up "
                               "to more than 1")
        result = optimize_mixture([c["stats"] for c in components], target, mix.diversity, mix.floor,
                                  names=[c["name"] for c in components], baselines={})
        comparison["dataset_optimum"] = datasets_opt.csi

    component_spp = [c["samples_per_structure"] for c in components]
    structure_shares = _structure_shares(result.weights, component_spp)
    capped = False
    capacity = None
    if mix.budget is not None:
        capacity = _capacity(components, [src.obj for src in up_srcs])
        for _ in range(5):  # fixed point: caps on atom shares depend on the set's atoms per structure
            if (structure_shares * mix.budget <= capacity + 0.5).all():
                break
            atoms_per_structure = 1.0 / (result.weights / np.asarray(component_spp)).sum()
            ceiling = capacity * np.asarray(component_spp) / (mix.budget * atoms_per_structure)
            ceiling = np.maximum(ceiling / min(ceiling.sum(), 1.0), mix.floor)
            result = optimize_mixture([c["stats"] for c in components], target, mix.diversity, mix.floor,
                                      names=[c["name"] for c in components], baselines={}, ceiling=ceiling)
            structure_shares = _structure_shares(result.weights, component_spp)
            capped = True
    comparison = {"optimum": result.csi, **comparison}
    per_dataset = np.zeros(len(ups))
    per_dataset_structures = np.zeros(len(ups))
    for c, w, q in zip(components, result.weights, structure_shares):
        per_dataset[c["dataset"]] += w
        per_dataset_structures[c["dataset"]] += q

    # The first seed chose the weights; the other seeds say how much of the gain is sampling noise.
    weightings = {"optimum (per dataset)": per_dataset, **base_weights}
    per_seed = []
    for seed in seeds:
        down_s = provider.get(down_src, settings.downstream_sampling, seed)
        ups_s = [provider.get(src, settings.upstream_sampling, seed) for src in up_srcs]
        row = {"seed": seed, **{n: mixture_csi(ups_s, down_s, w) for n, w in weightings.items()}}
        row["single"] = {label: mixture_csi([u], down_s, [1.0]) for label, u in zip(labels, ups_s)}
        per_seed.append(row)
    # the ranking above the mix reports each upstream's mean over the seeds: so does this summary
    single_means = {label: float(np.mean([row["single"][label] for row in per_seed])) for label in labels}
    best_mean = min(single_means, key=single_means.get)
    seed_means = {"seeds": seeds, "best_single": {"upstream": best_mean, "csi": single_means[best_mean]},
                  "single": single_means,
                  **{name: float(np.mean([row[name] for row in per_seed])) for name in weightings}}

    payload = {
        "format": MIX_FORMAT,
        "level": mix.level,
        "downstream": down_src.label,
        "target_seed": seeds[0],
        "weights": {label: float(w) for label, w in zip(labels, per_dataset)},
        "structure_shares": {label: float(q) for label, q in zip(labels, per_dataset_structures)},
        "components": [
            {"name": c["name"], "dataset": labels[c["dataset"]], "classes": c["classes"], "weight": float(w),
             "structure_share": float(q), "samples_per_structure": float(c["samples_per_structure"]),
             "n_samples": int(c["stats"].count), "csi_alone": float(single)}
            for c, w, q, single in zip(components, result.weights, structure_shares, result.single_csi)
        ],
        "csi": comparison,
        "baseline_weights": {name: {label: float(w) for label, w in zip(labels, ws)}
                             for name, ws in base_weights.items()},
        "baseline_structure_shares": {name: {label: float(q) for label, q in zip(labels, qs)}
                                      for name, qs in base_structures.items()},
        "optimizer": {"iterations": result.iterations, "converged": result.converged,
                      "objective": result.objective, "entropy": result.entropy,
                      "diversity": result.diversity, "floor": result.floor, "gap": result.gap,
                      "n_components": len(components), "capped_by_budget": capped},
        "skipped_classes": skipped_classes,
        "per_seed": per_seed,
        "seed_means": seed_means,
        "datasets": [{"path": label, "structures": size, "samples_per_structure": float(s),
                      "fingerprint": src.obj.fingerprint if src.kind == "dataset" else None}
                     for label, size, s, src in zip(labels, sizes, spp, up_srcs)],
        "settings": {**mix.to_dict(), "samples": settings.samples, "seeds": seeds,
                     "upstream_sampling": settings.upstream_sampling, "agg": settings.agg},
    }
    if mix.budget is not None:
        datasets = [src.obj for src in up_srcs]
        plan = [{"dataset": c["dataset"], "classes": c["classes"], "structure_share": float(q)}
                for c, q in zip(components, structure_shares)]
        chosen, quotas = draw_selection(datasets, plan, mix.budget, mix.seed)
        for entry, quota in zip(payload["components"], quotas):
            entry["structures"] = int(quota)
        capped_components = np.zeros(len(datasets), dtype=np.int64)
        for c, quota, cap in zip(components, quotas, capacity):
            capped_components[c["dataset"]] += bool(quota > 0 and quota >= cap)
        without_forces = [count_without_forces(d, idx) for d, idx in zip(datasets, chosen)]
        # what was drawn, beside the weights: a share can round to no structure, a component can run out
        payload["drawn"] = {
            label: {"chosen": len(idx), "share": len(idx) / mix.budget, "structures": len(d),
                    "components": sum(c["dataset"] == k for c in components),
                    "capped_components": int(capped_components[k]),
                    "without_forces": wf, "without_forces_exact": exact}
            for k, (label, d, idx, (wf, exact)) in enumerate(zip(labels, datasets, chosen, without_forces))}
        payload["budget"] = mix.budget
        payload["_selection"] = {
            "format": SELECTION_FORMAT,
            "budget": mix.budget,
            "level": mix.level,
            "seed": mix.seed,
            "mix": "mix.json",
            "downstream": down_src.label,
            "datasets": [{"path": str(Path(label).resolve()), "given_as": label, "format": d.format,
                          "fingerprint": d.fingerprint, "structures": len(d), "chosen": len(idx),
                          "without_forces": wf, "without_forces_exact": exact,
                          "indices": [int(i) for i in idx]}
                         for label, d, idx, (wf, exact) in zip(labels, datasets, chosen, without_forces)],
            "versions": versions(),
        }
    payload["mix_s"] = time.perf_counter() - t0
    payload["versions"] = versions()
    return payload


def count_without_forces(dataset, indices) -> tuple[int, bool]:
    """How many of the structures ``indices`` of ``dataset`` have no force labels (pretraining masks
    their force loss), and whether that is exact (up to FORCE_LABEL_CHECKS of them are read; more
    are estimated from evenly spaced ones)."""
    indices = np.asarray(indices)
    if not len(indices):
        return 0, True
    exact = len(indices) <= FORCE_LABEL_CHECKS
    probe = indices if exact else indices[np.linspace(0, len(indices) - 1, FORCE_LABEL_CHECKS).astype(np.int64)]
    missing = sum(dataset[int(i)].forces is None for i in probe)
    return int(round(missing * len(indices) / len(probe))), exact


# ------------------------------------------------------------------------------------- outputs
def write_mix_outputs(payload: dict, outdir) -> list:
    """Write mix.json, mix.png and (with a budget) pretrain_set.json atomically; their names."""
    from fastcsi.pipeline.report import write_json

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    selection = payload.pop("_selection", None)
    write_json(payload, outdir / "mix.json")
    plot_mix(payload, outdir / "mix.png")
    names = ["mix.json", "mix.png"]
    if selection is not None:
        with atomic_write(outdir / "pretrain_set.json") as fh:
            json.dump(selection, fh)  # one line per file: the index lists can be long
            fh.write("\n")
        names.append("pretrain_set.json")
    return names


def plot_mix(payload: dict, path, top: int = 25) -> None:
    """Left: the largest component shares; right: the analytic CSI of each way to mix."""
    plt = pyplot()

    used = [c for c in payload["components"] if c["weight"] >= 1e-4] or payload["components"]
    comps = sorted(used, key=lambda c: -c["weight"])[:top]
    csi_rows = [(k, v["csi"] if isinstance(v, dict) else v) for k, v in payload["csi"].items()]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 1.6 + 0.32 * max(len(comps), len(csi_rows))),
                                      gridspec_kw={"width_ratios": [3, 2]})
    y = np.arange(len(comps))
    left.barh(y, [c["weight"] for c in comps], color="#4c72b0")
    left.set_yticks(y, [Path(c["name"]).name[:48] for c in comps], fontsize=8)
    left.invert_yaxis()
    left.set_xlabel("share of feature samples (atoms)")
    more = len(payload["components"]) - len(comps)
    left.set_title(f"CSI-optimal {payload['level']}-level mixture" + (f" ({more} more below 0.01%)" if more > 0 else ""),
                   fontsize=10)
    y2 = np.arange(len(csi_rows))
    values = [v for _, v in csi_rows]
    colours = ["#dd8452" if k == "optimum" else "#8c8c8c" for k, _ in csi_rows]
    # mixtures with a far-off component are orders of magnitude away: a log axis keeps the rest visible
    log = min(values) > 0 and max(values) / min(values) > 50
    right.barh(y2, values, color=colours, log=log)
    right.set_yticks(y2, [k.replace("_", " ") for k, _ in csi_rows], fontsize=8)
    right.invert_yaxis()
    right.set_xlabel("analytic CSI (lower = closer" + (", log scale)" if log else ")"))
    for yi, v in zip(y2, values):
        right.text(v, yi, f" {v:.4g}", va="center", fontsize=8)
    if log:
        right.set_xlim(min(values) / 2, max(values) * 8)
    else:
        right.margins(x=0.25)
    save_figure(fig, path, dpi=110)


# ------------------------------------------------------------------------------------- readers
def read_mix(path) -> dict:
    """A ``mix.json`` written by ``fastcsi select --optimize-mix`` (FastCSIError if it is not one)."""
    return read_json(path, "mix file", MIX_FORMAT)


def read_selection(path) -> dict:
    """A ``pretrain_set.json`` written by ``fastcsi select --optimize-mix --budget N``."""
    return read_json(path, "pretraining-set file", SELECTION_FORMAT)


def format_mix(summary: dict) -> str:
    """The terminal lines for the ``"mix"`` summary of a select result: the optimal weights, what the
    budget drew of each upstream (and where an upstream ran out), and the CSI of the mixtures as the
    same statistic as the ranking above it (the mean over the seeds)."""
    from fastcsi.pipeline.report import display_names

    labels = list(summary["weights"])
    names = dict(zip(labels, display_names(labels)))
    drawn, budget = summary.get("drawn"), summary.get("budget")
    columns = "share of atoms / of structures" + (f" / drawn of the budget of {budget}" if drawn else "")
    lines = [f"CSI-optimal {summary['level']}-level mixture (weights optimised on the first seed; {columns}):"]
    width = len(str(budget)) if drawn else 0
    for label in sorted(labels, key=lambda label: -summary["weights"][label]):
        line = f"  {names[label]:<32} {summary['weights'][label]:7.1%}  {summary['structure_shares'][label]:7.1%}"
        if drawn:
            d = drawn[label]
            line += f"  {d['chosen']:>{width}} ({d['share']:5.1%})"
            if summary["level"] == "dataset" and d["chosen"] and d["chosen"] >= d["structures"]:
                line += f"  capped: all {d['chosen']} of {d['structures']} structures"
            elif d["capped_components"]:
                line += f"  capped: {d['capped_components']} of {d['components']} class groups used up"
        lines.append(line)
    csi = summary["csi"]
    means = summary.get("seed_means")
    if means:
        seeds = means["seeds"]
        where = f"mean over {len(seeds)} seeds, as the ranking" if len(seeds) > 1 else f"seed {seeds[0]}"
        optimum = means["optimum (per dataset)"]
        parts = [f"optimum {optimum:.4g}" if summary["level"] == "dataset" else f"optimum's dataset shares {optimum:.4g}"]
        best = means["best_single"]
        parts.append(f"best single ({display_names([best['upstream']])[0]}) {best['csi']:.4g}")
        parts += [f"{k} {v:.4g}" for k, v in means.items()
                  if k not in ("seeds", "best_single", "single", "optimum (per dataset)")]
        text = f"  CSI ({where}): " + ", ".join(parts)
        if summary["level"] == "class":
            text += f"; class-level optimum {csi['optimum']:.4g} on the first seed (where it was optimised)"
    else:  # a summary from before the seed means were recorded
        parts = [f"optimum {csi['optimum']:.4g}"]
        if "dataset_optimum" in csi:
            parts.append(f"dataset-level optimum {csi['dataset_optimum']:.4g}")
        best = csi["best_single"]
        parts.append(f"best single ({display_names([best['upstream']])[0]}) {best['csi']:.4g}")
        parts += [f"{k} {v:.4g}" for k, v in csi.items() if k not in ("optimum", "dataset_optimum", "best_single")]
        text = "  CSI (first seed): " + ", ".join(parts)
    lines.append(text + f"; optimising took {summary['mix_s']:.2f} s")
    if drawn:
        missing = {label: d for label, d in drawn.items() if d["without_forces"]}
        if missing:
            n = sum(d["without_forces"] for d in missing.values())
            about = "" if all(d["without_forces_exact"] for d in missing.values()) else "about "
            lines.append(f"  {about}{n} of the {budget} chosen structures have no force labels "
                         f"({', '.join(names[label] for label in missing)}): pretraining masks their force loss")
    return "\n".join(lines)
