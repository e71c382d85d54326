"""Agreement across extractors: the pure report on hand-made rankings."""
import json

import pytest
from scipy.stats import kendalltau, spearmanr

from fastcsi.errors import FastCSIError
from fastcsi.pipeline.agreement import agreement, competition_ranks, format_agreement, plot_agreement


def _ranking(values: dict) -> list:
    return [{"upstream": u, "csi": v} for u, v in values.items()]


def test_identical_orders_give_tau_one_and_no_rank_changes():
    # the same order on very different CSI scales: agreement is about ranks, not values
    report = agreement({"a": _ranking({"x": 1.0, "y": 2.0, "z": 3.0, "w": 4.0}),
                        "b": _ranking({"x": 10.0, "y": 300.0, "z": 301.0, "w": 9000.0})})
    pair = report["pairs"][0]
    assert pair["kendall_tau"] == pytest.approx(1.0) and pair["spearman"] == pytest.approx(1.0)
    assert pair["same_order"] and report["rank_changes"] == []
    assert report["top1"] == {"a": ["x"], "b": ["x"]} and report["top1_agrees"]
    assert "every upstream keeps its rank" in format_agreement(report)


def test_reversed_orders_give_tau_minus_one_and_every_rank_changes():
    report = agreement({"a": _ranking({"x": 1.0, "y": 2.0, "z": 3.0}),
                        "b": _ranking({"x": 3.0, "y": 2.0, "z": 1.0})})
    pair = report["pairs"][0]
    assert pair["kendall_tau"] == pytest.approx(-1.0) and pair["spearman"] == pytest.approx(-1.0)
    assert [c["upstream"] for c in report["rank_changes"]] == ["x", "z"]  # y stays second
    assert report["rank_changes"][0]["ranks"] == {"a": 1, "b": 3}
    assert report["top1"] == {"a": ["x"], "b": ["z"]} and not report["top1_agrees"]


def test_correlations_match_scipy_on_a_partial_disagreement_with_ties():
    a = {"u1": 0.5, "u2": 1.5, "u3": 1.5, "u4": 7.0, "u5": 3.0, "u6": 9.0}
    b = {"u1": 2.0, "u2": 1.0, "u3": 4.0, "u4": 4.0, "u5": 8.0, "u6": 6.0}
    c = {"u1": 0.1, "u2": 0.3, "u3": 0.2, "u4": 0.9, "u5": 0.5, "u6": 0.4}
    report = agreement({"A": _ranking(a), "B": _ranking(b), "C": _ranking(c)})
    order = sorted(a)
    assert [(p["a"], p["b"]) for p in report["pairs"]] == [("A", "B"), ("A", "C"), ("B", "C")]
    for p in report["pairs"]:
        x = [{"A": a, "B": b, "C": c}[p["a"]][u] for u in order]
        y = [{"A": a, "B": b, "C": c}[p["b"]][u] for u in order]
        assert p["kendall_tau"] == pytest.approx(kendalltau(x, y).statistic, abs=1e-12)
        assert p["spearman"] == pytest.approx(spearmanr(x, y).statistic, abs=1e-12)
        assert -1.0 < p["kendall_tau"] < 1.0
    # u2 and u3 tie under A: they share rank 2 and the next rank is 4
    ranks_a = {row["upstream"]: row["rank"] for row in report["rankings"]["A"]}
    assert ranks_a == {"u1": 1, "u2": 2, "u3": 2, "u4": 5, "u5": 4, "u6": 6}
    assert report["top1"]["B"] == ["u2"]
    assert {c["upstream"] for c in report["rank_changes"]} == set(order)  # every upstream moves somewhere
    assert json.loads(json.dumps(report)) == report  # plain JSON for csi.json


def test_tied_top_is_reported_as_a_tie():
    report = agreement({"a": _ranking({"x": 1.0, "y": 1.0, "z": 2.0}), "b": _ranking({"x": 1.0, "y": 2.0, "z": 3.0})})
    assert report["top1"]["a"] == ["x", "y"] and "(tied)" in format_agreement(report)
    assert competition_ranks([3.0, 1.0, 1.0, 2.0]) == [4, 1, 1, 3]


def test_fewer_than_three_upstreams_give_no_correlation_but_say_why():
    report = agreement({"a": _ranking({"x": 1.0, "y": 2.0}), "b": _ranking({"x": 5.0, "y": 1.0})})
    assert not report["correlation_meaningful"]
    assert report["pairs"][0]["kendall_tau"] is None and report["pairs"][0]["spearman"] is None
    text = format_agreement(report)
    assert "not meaningful" in text and "Kendall" not in text
    assert [c["upstream"] for c in report["rank_changes"]] == ["x", "y"]


def test_mismatched_rankings_are_refused():
    with pytest.raises(FastCSIError, match="at least two"):
        agreement({"a": _ranking({"x": 1.0, "y": 2.0, "z": 3.0})})
    with pytest.raises(FastCSIError, match="different upstreams"):
        agreement({"a": _ranking({"x": 1.0, "y": 2.0}), "b": _ranking({"x": 1.0, "z": 2.0})})


def test_plot_is_written(tmp_path):
    report = agreement({"a": _ranking({"x": 1.0, "y": 2.0, "z": 3.0}), "b": _ranking({"x": 3.0, "y": 2.0, "z": 1.0})})
    path = tmp_path / "agreement.png"
    plot_agreement(report, path, title="test")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
