"""Peak memory per method per case (issue 26): every checked call records the process's peak RSS
and what the call added, in bench.json rows and in bench.md's tables."""
from __future__ import annotations

import mmap

import numpy as np

from fastcsi._bench import harness
from fastcsi._bench.harness import Case, Method


def _case():
    def hungry(_):
        # 200 MiB of fresh pages, touched: straight from the OS (malloc could hand back pages the
        # process already holds from earlier tests, which would not raise its RSS)
        block = mmap.mmap(-1, 200 << 20)
        view = np.frombuffer(block, dtype=np.uint8)
        view[::4096] = 1
        touched = float(view[::4096].sum())
        del view
        block.close()
        return touched * 0

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
    assert "iB (+200 MiB)" in line
