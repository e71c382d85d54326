"""Timings taken under load or from repeats that disagree are marked in bench.md / bench.json and
docs/performance.md (issue 25: 0.05x and 5.45x vs scipy from one loaded run, printed as if they held)."""
import json
import os
from pathlib import Path

import numpy as np

from fastcsi._bench.harness import Case, Method, build_report, markdown, run_case, write_report

TOOLS = Path(__file__).resolve().parents[2] / "tools"
CORES = os.cpu_count() or 1


def _row(method, role, times, size, load):
    seconds = float(np.median(times))
    return {"kernel": "frechet", "case": "d x d float64", "size": size, "size_unit": "d", "method": method,
            "role": role, "status": "ok", "error": 1e-14, "tolerance": 1e-10, "seconds": seconds,
            "times": list(times), "cpu_seconds": seconds, "repeats": len(times), "items": None, "items_unit": "",
            "flops": None, "bytes": None, "dtype": "float64", "note": "", "load_average": load}


def _report(rows):
    return build_report(rows, {"device": "cpu", "quick": True, "only": ["frechet"], "sizes": {}},
                        {"frechet": {"title": "Fréchet", "description": "", "notes": []}}, None, "cpu", 1.0)


def test_loaded_and_scattered_rows_are_marked_in_json_and_markdown(tmp_path):
    loaded = CORES + 4.7
    rows = [
        _row("ours", "ours", [0.010, 0.011, 0.010], 64, loaded),  # machine loaded beyond its cores
        _row("scipy", "baseline", [0.0005, 0.0006, 0.0005], 64, loaded),
        _row("ours", "ours", [0.010, 0.030, 0.0101], 128, 0.2),  # quiet machine, repeats 200% apart
        _row("scipy", "baseline", [0.055, 0.054, 0.056], 128, 0.2),
        _row("ours", "ours", [0.010, 0.0101, 0.0099], 256, 0.2),  # quiet and steady: no mark
        _row("scipy", "baseline", [0.05, 0.05, 0.051], 256, 0.2),
    ]
    report = _report(rows)
    by_size = {(r["size"], r["method"]): r for r in report["rows"]}
    assert any("load" in w and f"> {CORES} cores" in w for w in by_size[(64, "ours")]["timing_warnings"])
    assert any(w.startswith("spread 198% over 3 repeats") for w in by_size[(128, "ours")]["timing_warnings"])
    assert by_size[(128, "ours")]["unreliable_ratios"] == ["scipy"]
    assert by_size[(256, "ours")]["timing_warnings"] == [] and "unreliable_ratios" not in by_size[(256, "ours")]
    assert len(report["timing_warnings"]) == 3

    write_report(report, tmp_path)
    saved = json.loads((tmp_path / "bench.json").read_text())
    assert len(saved["timing_warnings"]) == 3
    text = (tmp_path / "bench.md").read_text()
    assert "3 timing(s) marked †" in text
    line_of = {size: next(l for l in text.splitlines() if l.startswith(f"| d x d float64 | {size} d | ours |"))
               for size in (64, 128, 256)}
    assert "0.05 †" in line_of[64] and "† load" in line_of[64]
    assert "5.45 †" in line_of[128] and "† spread" in line_of[128]
    assert "†" not in line_of[256] and "| 5 |" in line_of[256]


def test_a_quiet_steady_run_has_no_marks():
    report = _report([_row("ours", "ours", [0.01, 0.0101], 64, 0.1), _row("scipy", "baseline", [0.02, 0.02], 64, 0.1)])
    assert report["timing_warnings"] == [] and "†" not in markdown(report)


def test_run_case_records_the_load_of_the_timing():
    case = Case(kernel="toy", name="sum", size=10, size_unit="n", items=10, items_unit="n",
                inputs=lambda: np.arange(10.0), reference=lambda x: x.sum(), error=lambda a, b: abs(a - b),
                methods=[Method("ours", "ours", lambda x: x.sum())], repeats=2)
    row = run_case(case)[0]
    if hasattr(os, "getloadavg"):
        assert row["load_average"] is not None and row["load_average"] >= 0


def test_performance_doc_carries_the_caveat(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(TOOLS))
    import performance_doc

    rows = [_row("ours", "ours", [0.010, 0.011], 64, CORES + 3.0), _row("scipy", "baseline", [0.0005, 0.0005], 64, 0.1)]
    block = performance_doc.render(_report(rows))
    assert "1 timing(s) marked †" in block and "0.0476 †" in block


def test_plot_ticks_at_the_sizes_wraps_the_title_and_hollows_doubtful_points(tmp_path, monkeypatch):
    import fastcsi.utils

    figures = []
    monkeypatch.setattr(fastcsi.utils, "save_figure", lambda fig, path, dpi=110: figures.append(fig))
    from fastcsi._bench.harness import plot_kernel

    rows = _report([_row("ours", "ours", [0.01, 0.03, 0.0101], 32, 0.1), _row("ours", "ours", [0.02, 0.02], 64, 0.1),
                    _row("ours", "ours", [0.04, 0.04], 128, 0.1)])["rows"]
    title = "Fréchet distance of two Gaussians, ours vs scipy.linalg.sqrtm(S1 @ S2) (pytorch-fid / the paper)"
    assert plot_kernel(rows, "frechet", tmp_path / "bench_frechet.png", title)
    ax = figures[0].axes[0]
    figures[0].canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["32", "64", "128"]
    assert "\n" in ax.get_title() and all(len(line) <= 70 for line in ax.get_title().splitlines())
    hollow = [line for line in ax.get_lines() if line.get_markerfacecolor() == "white"]
    assert len(hollow) == 1 and list(hollow[0].get_xdata()) == [32.0]  # the scattered repeats only
    assert "hollow" in ax.get_xlabel()
    import matplotlib.pyplot as plt

    plt.close(figures[0])
