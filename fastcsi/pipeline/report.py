"""What a selection run leaves behind: ``csi.json``, ``csi.csv``, ``csi.png``,
``csi_per_element.png`` and the terminal table. Every file is written atomically."""
from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

import numpy as np

from fastcsi.utils import atomic_write, pyplot, save_figure

CSV_COLUMNS = (
    "rank",
    "upstream",
    "csi",
    "csi_std",
    "mean_term",
    "trace_term",
    "n_seeds",
    "n_structures",
    "n_atoms",
    "downstream_n_structures",
    "downstream_n_atoms",
)


def element_symbol(z: int) -> str:
    from ase.data import chemical_symbols

    return chemical_symbols[z] if 0 < z < len(chemical_symbols) else f"Z{z}"


def write_json(result: dict, path) -> None:
    with atomic_write(path) as fh:
        json.dump(result, fh, indent=1, default=_json_default)
        fh.write("\n")


def _json_default(value):
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return str(value)


def write_csv(result: dict, path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    # Settings ride along as comment lines so the CSV alone says what produced it.
    buf.write(f"# downstream: {result['downstream']['path']}\n")
    buf.write(f"# settings: {json.dumps(result['settings'], sort_keys=True, default=str)}\n")
    buf.write(f"# versions: {json.dumps(result['versions'], sort_keys=True)}\n")
    writer.writerow(CSV_COLUMNS)
    down = result["downstream"]
    for row in result["ranking"]:
        writer.writerow(
            [
                row["rank"],
                row["upstream"],
                f"{row['csi']:.10g}",
                "" if row.get("csi_std") is None else f"{row['csi_std']:.6g}",  # empty: seeds shared one sample
                f"{row['mean_term']:.10g}",
                f"{row['trace_term']:.10g}",
                len(row["per_seed"]),
                row["n_structures"],
                row["n_atoms"],
                down["n_structures"],
                down["n_atoms"],
            ]
        )
    with atomic_write(path) as fh:
        fh.write(buf.getvalue())


def _short(label: str, width: int = 40) -> str:
    name = Path(label).name or label
    return name if len(name) <= width else "…" + name[-(width - 1) :]


def display_names(labels, width: int = 40) -> list:
    """Short names for paths: the file name, or as many trailing path parts as it takes to tell
    them apart (``oc20/data.0000.lmdb`` vs ``oc22/data.0000.lmdb``)."""
    parts = [Path(label).parts or (label,) for label in labels]
    for depth in range(1, max((len(p) for p in parts), default=1) + 1):
        names = ["/".join(p[-depth:]) for p in parts]
        if len(set(names)) == len(names):
            break
    return [n if len(n) <= width else "…" + n[-(width - 1) :] for n in names]


def plot_ranking(result: dict, path) -> None:
    """Horizontal bars, closest upstream on top; error bars = std over seeds."""
    plt = pyplot()

    rows = result["ranking"]
    labels = display_names([r["upstream"] for r in rows])
    values = [r["csi"] for r in rows]
    errors = [r.get("csi_std") or 0.0 for r in rows]  # None: spread not measured, no bar drawn
    fig, ax = plt.subplots(figsize=(7.5, 1.2 + 0.45 * max(len(rows), 1)))
    y = np.arange(len(rows))
    positive = [v for v in values if v > 0]
    # CSIs of unrelated domains are orders of magnitude apart: a log axis keeps the close ones visible.
    log = len(positive) == len(values) and len(values) > 1 and max(values) / min(positive) > 50
    ax.barh(y, values, xerr=errors if any(e > 0 for e in errors) else None, color="#4c72b0", capsize=4,
            log=log)
    ax.set_yticks(y, labels)
    ax.invert_yaxis()
    n_seeds = len(result["settings"].get("seeds", [])) or 1
    scale = ", log scale" if log else ""
    if any(r.get("csi_std") is not None for r in rows) and n_seeds > 1:
        spread = f"error bars: std over {n_seeds} seeds"
        if any(r.get("csi_std") is None for r in rows):
            spread += "; none where all seeds share the sample"
    else:
        spread = "no error bars: all seeds share one sample" if n_seeds > 1 else "one seed, no error bars"
    ax.set_xlabel(f"CSI (lower = closer{scale}; {spread})")
    ax.set_title(f"CSI to {_short(result['downstream']['path'], 60)}{_by_extractor(result)}", fontsize=10)
    for yi, v, e in zip(y, values, errors):
        ax.text(v + e, yi, f"  {v:.4g}", va="center", fontsize=8)
    if log:
        ax.set_xlim(min(positive) / 2, max(v + e for v, e in zip(values, errors)) * 8)
    else:
        ax.margins(x=0.15)
    save_figure(fig, path, dpi=120)


def plot_per_element(result: dict, path) -> None:
    """Heatmap of per-element CSI: upstreams x elements present in both datasets (blank: absent)."""
    plt = pyplot()

    rows = result["ranking"]
    elements = sorted({int(e["Z"]) for r in rows for e in r.get("per_element", {}).values()})
    fig_w = max(6.5, 3.5 + 0.6 * max(len(elements), 1))
    fig, ax = plt.subplots(figsize=(fig_w, 1.4 + 0.45 * max(len(rows), 1)))
    if not elements:
        ax.text(0.5, 0.5, "no element is shared between the downstream and any upstream", ha="center")
        ax.set_axis_off()
    else:
        grid = np.full((len(rows), len(elements)), np.nan)
        for i, r in enumerate(rows):
            for e in r.get("per_element", {}).values():
                grid[i, elements.index(int(e["Z"]))] = e["csi"]
        finite = grid[np.isfinite(grid)]
        norm = None
        if finite.size and finite.min() > 0 and finite.max() / finite.min() > 50:
            from matplotlib.colors import LogNorm

            norm = LogNorm(vmin=finite.min(), vmax=finite.max())
        image = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap="viridis_r", norm=norm)
        ax.set_xticks(range(len(elements)), [element_symbol(z) for z in elements])
        ax.set_yticks(range(len(rows)), display_names([r["upstream"] for r in rows]))
        mid = float(np.median(finite)) if finite.size else 0.0
        for i in range(grid.shape[0]):
            if not np.isfinite(grid[i]).any():
                ax.text((len(elements) - 1) / 2, i, "no element in common", ha="center", va="center",
                        fontsize=8, color="grey")
            for j in range(grid.shape[1]):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.3g}", ha="center", va="center", fontsize=7,
                            color="white" if grid[i, j] > mid else "black")
        fig.colorbar(image, ax=ax, label="CSI (lower = closer)")
        ax.set_title(f"Per-element CSI to {_short(result['downstream']['path'], 50)}{_by_extractor(result)}",
                     fontsize=10)
    save_figure(fig, path, dpi=120)


def _by_extractor(result) -> str:
    """A title line naming the extractor: CSI values of different extractors never share an axis."""
    name = result.get("settings", {}).get("extractor_name")
    return f"\n(extractor {name})" if name else ""


def format_table(result: dict) -> str:
    """The ranking as a fixed-width text table for the terminal."""
    down = result["downstream"]
    header = ["rank", "upstream", "CSI", "± std", "mean term", "trace term", "structures", "atoms"]
    lines = []
    names = display_names([r["upstream"] for r in result["ranking"]], 48)
    for r, name in zip(result["ranking"], names):
        lines.append(
            [
                str(r["rank"]),
                name,
                f"{r['csi']:.5g}",
                f"{r['csi_std']:.2g}" if len(r["per_seed"]) > 1 and r.get("csi_std") is not None else "-",
                f"{r['mean_term']:.5g}",
                f"{r['trace_term']:.5g}",
                f"{r['n_structures']:,}",
                f"{r['n_atoms']:,}",
            ]
        )
    widths = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h) for i, h in enumerate(header)]

    def fmt(cells):
        return "  ".join(c.ljust(w) if i == 1 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    s = result["settings"]
    out = [
        f"CSI ranking (closest first) for downstream {down['path']} "
        f"({down['n_structures']:,} structures, {down['n_atoms']:,} atoms per seed)",
        f"extractor {s.get('extractor_name')}, backbone: {s.get('backbone')}; layer {s.get('layer')}, "
        f"{s.get('kind')} features, agg {s.get('agg')}, "
        f"dim {s.get('feature_dim')}, {s.get('dtype')}; samples {s.get('samples')} "
        f"(upstream {s.get('upstream_sampling')}, downstream {s.get('downstream_sampling')}); "
        f"seeds {','.join(str(x) for x in s.get('seeds', []))}",
        "",
        fmt(header),
        fmt(["-" * w for w in widths]),
    ]
    out += [fmt(l) for l in lines]
    shared = [name for r, name in zip(result["ranking"], names)
              if len(r["per_seed"]) > 1 and r.get("csi_std") is None]
    if shared:
        out.append(f"± -: all seeds share the sample of {', '.join(shared)} and of the downstream "
                   "(every structure used), so the spread over seeds is not measured")
    return "\n".join(out)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for one value)."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else 0.0


def write_select_outputs(result: dict, outdir: Path, profiler, run_settings) -> dict:
    """``csi.json``, ``csi.csv``, the plots and the profile of a select run, written into ``outdir``;
    returns the profile summary (also stored in ``result["profile"]``)."""
    outdir.mkdir(parents=True, exist_ok=True)
    summary = profiler.write(outdir, settings=run_settings, title="fastcsi select profile")
    stages = {k: v["total_s"] for k, v in summary["stages"].items()}
    backbone_s = stages.get("graph", 0.0) + stages.get("model", 0.0)
    atoms = summary["counters"].get("atoms", 0)
    profile = {
        "wall_s": summary["wall_s"],
        "stages_s": stages,
        "throughput": summary["throughput"],
        # the backbone's own rate (graph + forward), free of start-up, reading and plotting
        "backbone_atoms_per_s": atoms / backbone_s if backbone_s > 0 else 0.0,
        "memory": summary["memory"],
    }
    result["profile"] = profile
    outputs = ["csi.json", "csi.csv", "csi.png"]
    write_json(result, outdir / "csi.json")
    write_csv(result, outdir / "csi.csv")
    plot_ranking(result, outdir / "csi.png")
    if run_settings.get("per_element", True) and run_settings.get("agg") == "flat":
        plot_per_element(result, outdir / "csi_per_element.png")
        outputs.append("csi_per_element.png")
    profile["outputs"] = outputs + ["profile.md", "profile.json"]
    return profile
