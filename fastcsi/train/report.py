"""``fastcsi report``: does the CSI ranking predict downstream error?

Joins a ``select`` result (``csi.json``: ``ranking`` = [{"upstream", "csi", ...}]) with fine-tuning
runs (``results.json``), each of which records the data its backbone was pretrained on. A run
matches an upstream when the pretraining data is exactly that one dataset (same resolved path, or
the same file name when the paths differ, e.g. runs made on another machine). A run trained from
scratch (``--pretrained none``) is the baseline every pretraining must beat: printed and drawn as a
line, not dropped. Prints and plots CSI against test MAE and, from 4 matched runs on, the Spearman
rank correlation (scipy): of 2 or 3 points any order is likely by chance (with 3 points a perfect
rho = 1 has a 1 in 6 chance), so no rho is printed for them.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from fastcsi.errors import FastCSIError
from fastcsi.utils import atomic_write, pyplot, read_json, save_figure, versions

MIN_POINTS_FOR_RHO = 4


def _names(path: str) -> set:
    p = Path(path)
    return {str(p.resolve()) if p.is_absolute() or p.exists() else str(p), p.name, p.stem}


def build_report(select_dir, finetune_dirs, metric: str | None = None) -> dict:
    select_dir = Path(select_dir)
    csi_path = select_dir / "csi.json" if select_dir.is_dir() else select_dir
    csi = read_json(csi_path, "select result (csi.json)")
    ranking = csi.get("ranking")
    if not isinstance(ranking, list) or not ranking:
        raise FastCSIError(f"{csi_path}: has no 'ranking' list")
    rows = []
    unmatched = []
    baselines = []
    for run in finetune_dirs:
        run = Path(run)
        res = read_json(run / "results.json" if run.is_dir() else run, "fine-tuning result (results.json)")
        pre = res.get("pretrained", {})
        data = pre.get("data") or []
        if pre.get("kind") == "none":
            baselines.append((run, res))
            continue
        if len(data) != 1:
            unmatched.append(f"{run} (pretrained on {len(data)} datasets)" if data else f"{run} (no pretraining)")
            continue
        keys = _names(data[0])
        match = None
        for entry in ranking:
            up = str(entry.get("upstream", ""))
            if _names(up) & keys:
                match = entry
                break
        if match is None:
            unmatched.append(f"{run} (pretrained on {data[0]}, not in the ranking)")
            continue
        rows.append({"upstream": match["upstream"], "csi": float(match["csi"]), "run": str(run),
                     **_test_mae(run, res, metric)})
    if not rows:
        raise FastCSIError("no fine-tuning run matches an upstream of the ranking: " + "; ".join(unmatched))
    metrics = {r["metric"] for r in rows}
    if len(metrics) > 1:
        raise FastCSIError(f"runs report different metrics ({', '.join(sorted(metrics))}); pass --metric")
    chosen = rows[0]["metric"]
    baseline = [{"run": str(run), **_test_mae(run, res, metric or chosen)} for run, res in baselines]
    rows.sort(key=lambda r: r["csi"])
    n = len(rows)
    if n < MIN_POINTS_FOR_RHO:
        spearman = {"rho": None, "p_value": None, "n": n,
                    "reason": f"{n} matched run(s): a rank correlation needs at least {MIN_POINTS_FOR_RHO} "
                              f"(of {n} points, any order is likely by chance)"}
    else:
        from scipy.stats import spearmanr

        result = spearmanr([r["csi"] for r in rows], [r["test_mae"] for r in rows])
        rho = float(result.statistic if hasattr(result, "statistic") else result[0])
        p_value = float(result.pvalue)
        spearman = {"rho": rho if math.isfinite(rho) else None,
                    "p_value": p_value if math.isfinite(p_value) else None, "n": n}
        if spearman["rho"] is None:
            spearman["reason"] = "every run has the same CSI or the same test MAE"
    return {"kind": "fastcsi-report", "select": str(csi_path), "rows": rows, "spearman": spearman,
            "baseline": baseline, "unmatched": unmatched, "versions": versions()}


def _test_mae(run, res: dict, metric: str | None) -> dict:
    chosen = metric or res.get("primary") or next(iter(res["test_mae"]))
    if chosen not in res.get("test_mae", {}):
        raise FastCSIError(f"{run}: results.json has no test MAE for {chosen!r}")
    return {"metric": chosen, "test_mae": float(res["test_mae"][chosen]),
            "unit": res.get("units", {}).get(chosen, "")}


def format_report(report: dict) -> str:
    rows = report["rows"]
    unit = rows[0]["unit"]
    lines = [f"{'upstream':<40} {'CSI':>10} {'test MAE (' + rows[0]['metric'] + ', ' + unit + ')':>28}"]
    for r in rows:
        lines.append(f"{Path(r['upstream']).name:<40} {r['csi']:>10.4g} {r['test_mae']:>28.4g}")
    for b in report.get("baseline", []):
        lines.append(f"{'from scratch (no pretraining)':<40} {'-':>10} {b['test_mae']:>28.4g}   baseline: {b['run']}")
    sp = report["spearman"]
    if sp is None or sp.get("rho") is None:
        reason = sp["reason"] if sp else "needs at least 4 matched runs"
        lines.append(f"Spearman rank correlation: not computed, {reason}")
    else:
        p_text = f"p = {sp['p_value']:.3g}" if sp["p_value"] is not None else "no p-value"
        lines.append(f"Spearman rank correlation (CSI vs test MAE): rho = {sp['rho']:+.3f} ({p_text}, n = {sp['n']})")
    for u in report["unmatched"]:
        lines.append(f"not matched: {u}")
    return "\n".join(lines)


def write_report(report: dict, outdir) -> dict:
    plt = pyplot()

    outdir = Path(outdir)
    rows = report["rows"]
    with atomic_write(outdir / "report.json") as fh:
        json.dump(report, fh, indent=1, allow_nan=False)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    ax.scatter([r["csi"] for r in rows], [r["test_mae"] for r in rows], zorder=3, label="pretrained on one upstream")
    for r in rows:
        ax.annotate(Path(r["upstream"]).stem, (r["csi"], r["test_mae"]), fontsize=8,
                    xytext=(4, 4), textcoords="offset points")
    values = [r["test_mae"] for r in rows]
    for b in report.get("baseline", []):
        ax.axhline(b["test_mae"], color="grey", linestyle="--", label="from scratch (baseline)")
        values.append(b["test_mae"])
    # From zero: differences of a fraction of a percent must not fill the axis and look like a trend.
    ax.set_ylim(0, max(values) * 1.15 if max(values) > 0 else 1)
    ax.margins(x=0.15)  # room for the labels of the outermost points
    ax.set_xlabel("CSI (lower = closer to the downstream)")
    ax.set_ylabel(f"test MAE, {rows[0]['metric']} ({rows[0]['unit']})")
    sp = report["spearman"]
    if sp is not None and sp.get("rho") is not None:
        ax.set_title(f"Spearman rho = {sp['rho']:+.2f} (n = {sp['n']})", fontsize=10)
    else:
        ax.set_title(f"{len(rows)} matched run(s): too few for a rank correlation", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    save_figure(fig, outdir / "csi_vs_mae.png", dpi=100)
    return {"json": str(outdir / "report.json"), "plot": str(outdir / "csi_vs_mae.png")}
