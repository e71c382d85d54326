"""fastcsi report (issue 25): no Spearman rho from fewer than 4 points, the from-scratch run drawn as the
baseline instead of dropped, and a y-axis from zero that holds the baseline."""
import json

import pytest
from click.testing import CliRunner

from fastcsi.cli.app import cli
from fastcsi.train.report import build_report, write_report


def _runs(tmp_path, maes, scratch=857.0):
    ranking, runs = [], []
    for k, mae in enumerate(maes):
        upstream = tmp_path / f"up{k}.extxyz"
        ranking.append({"upstream": str(upstream), "csi": 0.5 + k})
        run = tmp_path / f"run{k}"
        run.mkdir()
        (run / "results.json").write_text(json.dumps({
            "pretrained": {"kind": "fastcsi-pretrain", "data": [str(upstream)]}, "primary": "forces",
            "test_mae": {"forces": mae}, "units": {"forces": "meV/Å"}}))
        runs.append(run)
    base = tmp_path / "scratch"
    base.mkdir()
    (base / "results.json").write_text(json.dumps({"pretrained": {"kind": "none"}, "primary": "forces",
                                                   "test_mae": {"forces": scratch}, "units": {"forces": "meV/Å"}}))
    select = tmp_path / "select"
    select.mkdir()
    (select / "csi.json").write_text(json.dumps({"ranking": ranking}))
    return select, runs, base


def test_two_points_give_no_rho_and_the_scratch_run_is_the_baseline(tmp_path, monkeypatch):
    select, runs, base = _runs(tmp_path, [856.9, 857.13])
    result = CliRunner().invoke(cli, ["report", str(select), *map(str, runs), str(base)])
    assert result.exit_code == 0, result.output
    assert "rho =" not in result.output and "not computed, 2 matched run(s)" in result.output
    assert "from scratch (no pretraining)" in result.output and "not matched" not in result.output
    saved = json.loads((select / "report.json").read_text())
    assert saved["spearman"]["rho"] is None and saved["spearman"]["n"] == 2
    assert saved["baseline"][0]["test_mae"] == 857.0

    limits = {}
    from matplotlib.axes import Axes

    original = Axes.set_ylim
    monkeypatch.setattr(Axes, "set_ylim", lambda ax, *a, **k: limits.update(ylim=a) or original(ax, *a, **k))
    write_report(build_report(select, [*runs, base]), tmp_path / "out")
    low, high = limits["ylim"]
    assert low == 0 and high > 857.13  # noise of 0.23 meV/Å out of 857 does not fill the axis


def test_four_points_give_rho(tmp_path):
    select, runs, base = _runs(tmp_path, [1.0, 2.0, 4.0, 3.0])
    report = build_report(select, runs)
    assert report["spearman"]["n"] == 4 and report["spearman"]["rho"] == pytest.approx(0.8)
    assert report["baseline"] == []
