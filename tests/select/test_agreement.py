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


# ---------------------------------------------------------------- through select, with two tiny extractors

@pytest.fixture(scope="module")
def seed1_checkpoint(tmp_path_factory):
    """A second tiny GemNet-OC (other random weights than gemnet-oc-random's seed 0), as a file."""
    import torch

    from fastcsi.model import build_model, save_checkpoint

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = build_model("gemnet-oc-tiny")
    return save_checkpoint(model, tmp_path_factory.mktemp("backbones") / "tiny-seed1.pt")


@pytest.fixture(scope="module")
def four_upstreams(tiny_data, tmp_path_factory):
    """The two tiny upstreams plus a water-only and a methane/ammonia one (split from the organic set)."""
    from ase.io import read, write

    root = tmp_path_factory.mktemp("more_upstreams")
    organic = read(tiny_data["organic"], index=":")
    paths = [tiny_data["organic"], tiny_data["metal"]]
    for name, keep in (("water", {"H2O"}), ("ch4_nh3", {"CH4", "H3N"})):
        paths.append(root / f"{name}.extxyz")
        write(paths[-1], [a for a in organic if a.get_chemical_formula() in keep], format="extxyz")
    return [str(p) for p in paths]


def test_select_with_two_backbones_ranks_with_each_and_reports_their_agreement(
        tiny_data, four_upstreams, seed1_checkpoint, tmp_path, one_torch_thread):
    from fastcsi.pipeline import SelectSettings
    from fastcsi.pipeline.select import run_select_backbones

    backbones = ["gemnet-oc-random", f"gemnet-oc:{seed1_checkpoint}"]
    settings = SelectSettings(samples=None, seeds=(0,), batch_size=8)
    result = run_select_backbones(tiny_data["down"], four_upstreams, settings, backbones, outdir=tmp_path / "run",
                                  progress=False)
    report = result["agreement"]
    assert report["extractors"] == backbones and report["n_upstreams"] == 4 and report["correlation_meaningful"]
    runs = report["extractor_runs"]
    assert runs[0]["extractor"] != runs[1]["extractor"]  # two different feature spaces
    # each extractor's ranking is its own select run; the agreement is computed from their CSI values
    per_run = [json.loads((tmp_path / "run" / "extractors" / f"{k}-{name}" / "csi.json").read_text())
               for k, name in ((1, "gemnet-oc-random"), (2, "gemnet-oc-tiny-seed1.pt"))]
    assert [p["settings"]["extractor"] for p in per_run] == [r["extractor"] for r in runs]
    csi = [{r["upstream"]: r["csi"] for r in p["ranking"]} for p in per_run]
    order = sorted(four_upstreams)
    pair = report["pairs"][0]
    expected = kendalltau([csi[0][u] for u in order], [csi[1][u] for u in order]).statistic
    assert pair["kendall_tau"] == pytest.approx(expected, abs=1e-12)
    assert pair["spearman"] == pytest.approx(spearmanr([csi[0][u] for u in order],
                                                       [csi[1][u] for u in order]).statistic, abs=1e-12)
    assert report["top1"][backbones[0]] == [per_run[0]["ranking"][0]["upstream"]]
    assert report["top1"][backbones[1]] == [per_run[1]["ranking"][0]["upstream"]]
    moved = {c["upstream"] for c in report["rank_changes"]}
    ranks = [{r["upstream"]: r["rank"] for r in p["ranking"]} for p in per_run]
    assert moved == {u for u in order if ranks[0][u] != ranks[1][u]}
    assert {r["upstream"]: r["csi"] for r in report["rankings"][backbones[1]]} == csi[1]  # kept apart, per extractor
    saved = json.loads((tmp_path / "run" / "csi.json").read_text())
    assert saved["agreement"] == json.loads(json.dumps(report)) and saved["ranking"] == per_run[0]["ranking"]
    assert (tmp_path / "run" / "agreement.png").is_file()
    assert result["warnings"] and all(w.startswith("[") for w in result["warnings"])  # each names its extractor

    # one more run with the backbones swapped reuses every statistic from the shared cache
    again = run_select_backbones(tiny_data["down"], four_upstreams[:2], settings, backbones[::-1],
                                 outdir=tmp_path / "run", progress=False)
    assert again["cache"]["computed"] == 0 and again["cache"]["hits"] > 0
    again_runs = again["agreement"]["extractor_runs"]
    assert [r["backbone"] for r in again_runs] == backbones[::-1]
    assert all(r["cache"]["computed"] == 0 and r["cache"]["hits"] > 0 for r in again_runs)  # every extractor's
    # the combined figures are the sums over the runs, not the first run's
    assert again["cache"]["hits"] == sum(r["cache"]["hits"] for r in again_runs)
    assert again["wall_s"] == pytest.approx(sum(r["wall_s"] for r in again_runs))
    assert result["cache"]["computed"] == sum(r["cache"]["computed"] for r in runs) and all(
        r["cache"]["computed"] > 0 for r in runs)
    assert not again["agreement"]["correlation_meaningful"]
    assert again["agreement"]["pairs"][0]["kendall_tau"] is None
    assert "not meaningful" in again["agreement"]["correlation_note"]


def test_select_with_backbones_refuses_duplicates_and_unknown_names(tiny_data, tmp_path):
    from fastcsi.pipeline.select import run_select_backbones

    with pytest.raises(FastCSIError, match="twice"):
        run_select_backbones(tiny_data["down"], [tiny_data["organic"]], None, ["gemnet-oc-random"] * 2,
                             outdir=tmp_path / "a")
    with pytest.raises(FastCSIError, match="unknown backbone"):
        run_select_backbones(tiny_data["down"], [tiny_data["organic"]], None, ["gemnet-oc-random", "nosuch"],
                             outdir=tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_select_with_two_backbones_prints_both_rankings_and_their_agreement(
        tiny_data, four_upstreams, seed1_checkpoint, tmp_path):
    from click.testing import CliRunner

    from fastcsi.cli import cli

    out = tmp_path / "cli"
    args = ["select", "--downstream", tiny_data["down"], "--samples", "all", "--seeds", "0", "-o", out, "--quiet",
            "--threads", "1", "--backbone", "gemnet-oc-random", "--backbone", f"gemnet-oc:{seed1_checkpoint}",
            "--optimize-mix"]
    for u in four_upstreams:
        args += ["--upstream", u]
    r = CliRunner().invoke(cli, [str(a) for a in args])
    assert r.exit_code == 0, r.output
    assert "rank (CSI) gemnet-oc-random" in r.stdout and f"rank (CSI) gemnet-oc:{seed1_checkpoint}" in r.stdout
    assert "Kendall tau" in r.stdout and "top-1 under gemnet-oc-random" in r.stdout
    assert "agreement.png" in r.stdout
    saved = json.loads((out / "csi.json").read_text())
    assert saved["agreement"]["extractors"] == ["gemnet-oc-random", f"gemnet-oc:{seed1_checkpoint}"]
    assert "[gemnet-oc-random]" in r.stderr  # warnings name their extractor
    # one timing / cache line per extractor, each named, then the totals over both runs
    runs = saved["agreement"]["extractor_runs"]
    for run in runs:
        assert (f"[{run['backbone']}] wall " in r.stdout
                and f"stats computed {run['cache']['computed']}, reused from cache {run['cache']['hits']}" in r.stdout)
    total = sum(run["cache"]["computed"] for run in runs)
    assert f"all 2 extractors: wall {saved['wall_s']:.1f} s; stats computed {total}," in r.stdout
    for run in runs:  # each extractor's optimal mixture, named
        assert f"[{run['backbone']}] CSI-optimal dataset-level mixture" in r.stdout and "mix" in run

    # --checkpoint is one GemNet-OC file: with several backbones it must be named as one of them
    r = CliRunner().invoke(cli, [str(a) for a in args + ["--checkpoint", seed1_checkpoint]])
    assert r.exit_code == 2 and "--backbone gemnet-oc:FILE" in r.stderr
    r = CliRunner().invoke(cli, ["stats", "compute", str(tiny_data["organic"]), "-o", str(tmp_path / "s.npz"),
                                 "--backbone", "gemnet-oc-random", "--backbone", "sevennet-0"])
    assert r.exit_code == 2 and "give one --backbone" in r.stderr
