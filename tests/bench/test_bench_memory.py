"""Peak memory per method per case (issue 26): every checked call records the process's peak RSS
and what the call added, in bench.json rows and in bench.md's tables."""
from __future__ import annotations

import numpy as np

from fastcsi._bench import harness
from fastcsi._bench.harness import Case, Method


def _case():
    def hungry(_):
        block = np.ones(200 << 17)  # 200 MiB, touched
        return float(block[::4096].sum() * 0)

    return Case("memory", "toy", 1, "items", 1, "items", inputs=lambda: None, reference=lambda _: 0.0,
                error=lambda out, want: abs(out - want),
                methods=[Method("hungry", "ours", hungry), Method("frugal", "baseline", lambda _: 0.0)], repeats=1)


def test_each_method_gets_its_own_peak_rss():
    rows = {r["method"]: r for r in harness.run_case(_case(), log=lambda *a, **k: None)}
    assert rows["hungry"]["peak_rss_delta_bytes"] >= 150 << 20
    # measured per call (the peak is reset before each), so the frugal method does not inherit it
    assert rows["frugal"]["peak_rss_delta_bytes"] < 50 << 20
    assert rows["hungry"]["peak_rss_bytes"] >= rows["hungry"]["peak_rss_delta_bytes"]
    assert rows["frugal"]["reference_peak_rss_delta_bytes"] is not None


def test_bench_md_shows_the_peak_rss_column():
    rows = harness.run_case(_case(), log=lambda *a, **k: None)
    report = harness.build_report(rows, {"device": "cpu", "only": ["memory"], "quick": True}, {"memory": {}}, None,
                                  "cpu", 0.1)
    text = harness.markdown(report)
    assert "peak RSS (+call)" in text
    line = next(line for line in text.splitlines() if "| hungry |" in line)
    assert "MiB (+" in line
