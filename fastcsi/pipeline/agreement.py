"""Do different feature extractors rank the upstreams the same way? (the paper's robustness question,
answered for the user's own data)

Input: one ranking per extractor, each a list of rows ``{"upstream", "csi"}`` over the same
upstreams. Output (``csi.json``'s ``"agreement"``): every extractor's ranking kept on its own (CSI
values of different extractors live on different scales and are never compared with each other),
the top-1 of each, Kendall's tau-b and Spearman's rho between every pair (computed from the CSI
values, so ties count as ties), and the upstreams whose rank is not the same under every extractor.

With fewer than ``MIN_UPSTREAMS_FOR_CORRELATION`` upstreams a rank correlation is not meaningful
(with two it can only be +1 or -1), so none is given and the result says why.
"""
from __future__ import annotations

import math

import numpy as np

from fastcsi.errors import FastCSIError

AGREEMENT_FORMAT = "fastcsi-agreement/1"
MIN_UPSTREAMS_FOR_CORRELATION = 3
TOO_FEW_UPSTREAMS = ("fewer than {n} upstreams: a rank correlation between two orderings of {k} item(s) is not "
                     "meaningful (it can only be +1 or -1), so none is given")


def competition_ranks(values) -> list:
    """1 for the smallest CSI (closest); tied values share the lowest rank of their group."""
    from scipy.stats import rankdata

    return [int(r) for r in rankdata(np.asarray(values, dtype=np.float64), method="min")]


def _correlation(a, b) -> dict:
    from scipy.stats import kendalltau, spearmanr

    tau = kendalltau(a, b)  # tau-b: accounts for ties in either ranking
    rho = spearmanr(a, b)
    values = {"kendall_tau": float(tau.statistic), "kendall_p": float(tau.pvalue),
              "spearman": float(rho.statistic), "spearman_p": float(rho.pvalue)}
    # A ranking where every upstream ties has no order to correlate: scipy returns NaN.
    return {k: (None if math.isnan(v) else v) for k, v in values.items()}


def agreement(rankings: dict) -> dict:
    """The agreement report of ``rankings`` (extractor name -> rows with "upstream" and "csi";
    at least two extractors over the same upstreams)."""
    names = list(rankings)
    if len(names) < 2:
        raise FastCSIError("agreement across extractors needs at least two --backbone rankings")
    upstreams = sorted(r["upstream"] for r in rankings[names[0]])
    if len(set(upstreams)) != len(upstreams):
        raise FastCSIError(f"ranking of {names[0]} lists an upstream twice")
    for name in names[1:]:
        theirs = sorted(r["upstream"] for r in rankings[name])
        if theirs != upstreams:
            raise FastCSIError(f"the rankings of {names[0]} and {name} rank different upstreams; "
                               "agreement needs the same upstreams under every extractor")
    csi = {name: {r["upstream"]: float(r["csi"]) for r in rankings[name]} for name in names}
    vectors = {name: [csi[name][u] for u in upstreams] for name in names}
    ranks = {name: dict(zip(upstreams, competition_ranks(vectors[name]))) for name in names}

    per_extractor = {}
    for name in names:
        order = sorted(upstreams, key=lambda u: (ranks[name][u], csi[name][u], u))
        per_extractor[name] = [{"upstream": u, "rank": ranks[name][u], "csi": csi[name][u]} for u in order]
    top1 = {name: [u for u in upstreams if ranks[name][u] == 1] for name in names}

    k = len(upstreams)
    meaningful = k >= MIN_UPSTREAMS_FOR_CORRELATION
    pairs = []
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            pair = {"a": a, "b": b}
            if meaningful:
                pair.update(_correlation(vectors[a], vectors[b]))
            else:
                pair.update(kendall_tau=None, kendall_p=None, spearman=None, spearman_p=None)
            pair["same_order"] = all(ranks[a][u] == ranks[b][u] for u in upstreams)
            pairs.append(pair)
    changes = [{"upstream": u, "ranks": {name: ranks[name][u] for name in names}}
               for u in upstreams if len({ranks[name][u] for name in names}) > 1]
    changes.sort(key=lambda c: (min(c["ranks"].values()), c["upstream"]))
    return {
        "format": AGREEMENT_FORMAT,
        "extractors": names,
        "n_upstreams": k,
        "rankings": per_extractor,
        "top1": top1,
        "top1_agrees": len({tuple(t) for t in top1.values()}) == 1,
        "correlation_meaningful": meaningful,
        "correlation_note": None if meaningful else TOO_FEW_UPSTREAMS.format(n=MIN_UPSTREAMS_FOR_CORRELATION, k=k),
        "pairs": pairs,
        "rank_changes": changes,
    }


def format_agreement(report: dict, display=None) -> str:
    """The agreement report as terminal lines. ``display``: upstream label -> short name."""
    display = display or {}

    def short(u):
        return display.get(u, u)

    names = report["extractors"]
    lines = _rank_table(report, short) + [
        "",
        f"Agreement across {len(names)} extractors ({report['n_upstreams']} upstreams; each ranks on its own "
        "CSI scale):"]
    for name in names:
        tops = report["top1"][name]
        lines.append(f"  top-1 under {name}: {', '.join(short(u) for u in tops)}{' (tied)' if len(tops) > 1 else ''}")
    if report["correlation_meaningful"]:
        for p in report["pairs"]:
            tau = "n/a" if p["kendall_tau"] is None else f"{p['kendall_tau']:+.3f}"
            rho = "n/a" if p["spearman"] is None else f"{p['spearman']:+.3f}"
            lines.append(f"  {p['a']} vs {p['b']}: Kendall tau {tau}, Spearman {rho}")
    else:
        lines.append(f"  no rank correlation: {report['correlation_note']}")
    if report["rank_changes"]:
        lines.append("  rank changes:")
        for change in report["rank_changes"]:
            ranks = ", ".join(f"{r} under {name}" for name, r in change["ranks"].items())
            lines.append(f"    {short(change['upstream'])}: {ranks}")
    else:
        lines.append("  every upstream keeps its rank under every extractor")
    return "\n".join(lines)


def _rank_table(report: dict, short) -> list:
    """Rank and CSI of every upstream under every extractor, in the first extractor's order. The
    CSI columns are not comparable with each other (different feature spaces)."""
    names = report["extractors"]
    cells = {name: {row["upstream"]: f"{row['rank']} ({row['csi']:.4g})" for row in report["rankings"][name]}
             for name in names}
    order = [row["upstream"] for row in report["rankings"][names[0]]]
    header = ["upstream"] + [f"rank (CSI) {name}" for name in names]
    rows = [[short(u)] + [cells[name][u] for name in names] for u in order]
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]

    def fmt(cells_):
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells_, widths)))

    return ["CSI ranking under each extractor (closest first; CSI values of different extractors are not "
            "comparable)", "", fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows]


def plot_agreement(report: dict, path, title: str = "", display=None) -> None:
    """Rank (not CSI: the scales differ) of every upstream under every extractor, one line per
    upstream; the upstreams are named on the left in the first extractor's order and on the right
    in the last one's (tick labels, so the layout makes room for long names)."""
    from fastcsi.utils import pyplot, save_figure

    plt = pyplot()
    display = display or {}
    names = report["extractors"]
    upstreams = [row["upstream"] for row in report["rankings"][names[0]]]
    k = len(upstreams)
    def label(u, width=40):
        text = display.get(u, u)
        return text if len(text) <= width else "…" + text[-(width - 1):]

    widest = max(len(f"{k}. {label(u)}") for u in upstreams)
    # room for the tick labels on both sides (~0.07 in per character at 8 pt)
    fig, ax = plt.subplots(figsize=(1.5 + 1.6 * len(names) + 2 * 0.07 * widest, 1.6 + 0.42 * max(k, 2)))
    x = np.arange(len(names))
    colours = plt.get_cmap("tab10" if k <= 10 else "tab20")
    ranks = {name: {row["upstream"]: row["rank"] for row in report["rankings"][name]} for name in names}
    for i, u in enumerate(upstreams):
        ax.plot(x, [ranks[name][u] for name in names], marker="o", color=colours(i % colours.N), linewidth=2)

    def side_labels(name):
        at_rank = {}
        for u in upstreams:
            at_rank.setdefault(ranks[name][u], []).append(label(u))
        return list(at_rank), [f"{r}. {', '.join(us)}" for r, us in at_rank.items()]

    positions, labels = side_labels(names[0])
    ax.set_yticks(positions, labels, fontsize=8)
    right = ax.twinx()
    positions, labels = side_labels(names[-1])
    right.set_yticks(positions, labels, fontsize=8)
    for axis in (ax, right):
        axis.set_ylim(k + 0.5, 0.5)  # rank 1 (closest) on top
        axis.spines["top"].set_visible(False)
    ax.set_xticks(x, [_short_extractor(name) for name in names], fontsize=8)
    ax.set_xlim(-0.3, len(names) - 1 + 0.3)
    ax.set_title(title or "Upstream rank under each extractor (1 = closest)", fontsize=10)
    if report["correlation_meaningful"] and len(names) == 2:
        p = report["pairs"][0]
        if p["kendall_tau"] is not None:
            ax.set_xlabel(f"Kendall tau {p['kendall_tau']:+.2f}, Spearman {p['spearman']:+.2f}", fontsize=8)
    save_figure(fig, path, dpi=120)


def _short_extractor(name: str) -> str:
    """``NAME:/some/dir/model.pt`` -> ``NAME:model.pt`` for an axis label."""
    base, sep, model = name.partition(":")
    return f"{base}{sep}{model.replace(chr(92), '/').rsplit('/', 1)[-1]}" if sep else name
