"""Exploding features through a select run: planted outliers and NaNs in the tiny backbone's features."""
import json

import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.pipeline import SelectSettings
from fastcsi.pipeline.select import run_select


class _Planted:
    """The tiny extractor with the features of every atom of one element scaled (or made NaN): a
    stand-in for a foundation model that explodes on geometries far from its training data."""

    def __init__(self, inner, element: int, factor: float):
        self._inner, self._element, self._factor = inner, element, factor
        self.fingerprint = f"{inner.fingerprint}-planted-{element}-{factor}"

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def features(self, batch, profiler=None):
        features = self._inner.features(batch, profiler)
        planted = (batch.atomic_numbers == self._element).to(features.device)[:, None]
        return torch.where(planted, features * self._factor, features)


@pytest.fixture(scope="module")
def tiny_extractor():
    from fastcsi.pipeline.backbone import load_extractor

    return load_extractor("gemnet-oc-random", layer="final", kind="node", device="cpu", dtype="float64")


def _run(tiny_data, extractor, tmp_path, drop=False, **options):
    settings = SelectSettings(samples=None, seeds=(0,), batch_size=5, dtype="float64", drop_outlier_structures=drop)
    return run_select(tiny_data["down"], [tiny_data["organic"], tiny_data["metal"]], settings, outdir=tmp_path,
                      extractor=extractor, progress=False, **options)


def _order(result):
    return [r["upstream"] for r in result["ranking"]]


def test_clean_features_report_no_outliers(tiny_data, tiny_extractor, tmp_path, one_torch_thread):
    result = _run(tiny_data, tiny_extractor, tmp_path)
    entries = result["feature_outliers"]
    assert [e["role"] for e in entries] == ["downstream", "upstream", "upstream"]
    assert all(e["checked"] and e["n_outlier_atoms"] == 0 and e["structures"] == [] for e in entries)
    assert not any("median" in w for w in result["warnings"])
    assert "feature_outliers" not in result["ranking"][0]["stats_settings"]  # reported once, not per row


def test_planted_outliers_are_listed_warned_about_and_dropping_them_restores_the_ranking(
        tiny_data, tiny_extractor, tmp_path, one_torch_thread):
    clean = _run(tiny_data, tiny_extractor, tmp_path / "clean")
    assert _order(clean)[0] == str(tiny_data["organic"])  # organic molecules are closest to water/methanol
    # N appears only in the three NH3 molecules of the organic upstream: 3 atoms out of 51
    planted = _Planted(tiny_extractor, element=7, factor=1e4)
    exploded = _run(tiny_data, planted, tmp_path / "exploded")
    entry = next(e for e in exploded["feature_outliers"] if e["dataset"] == str(tiny_data["organic"]))
    assert entry["n_outlier_atoms"] == 3 and entry["n_outlier_structures"] == 3 and entry["listing_complete"]
    assert [s["index"] for s in sorted(entry["structures"], key=lambda s: s["index"])] == [3, 4, 5]
    assert all(s["outlier_atoms"] == 1 and s["id"] for s in entry["structures"])
    from fastcsi.data import open_dataset

    organic_set = open_dataset(tiny_data["organic"])  # the ids are the ones the batches carried
    assert {s["index"]: s["id"] for s in entry["structures"]} == {
        i: organic_set[i].id or str(i) for i in (3, 4, 5)}
    assert entry["dominates_trace"] and entry["trace_share"] > 0.99
    assert entry["max_norm"] > 1e3 * entry["median_norm"]
    warning = next(w for w in exploded["warnings"] if w.startswith(str(tiny_data["organic"])) and "median" in w)
    assert "3 atom(s) in 3 structure(s)" in warning and "dominate its CSI trace term" in warning
    # the exploded atoms push organic behind the metals: the ranking flips
    assert _order(exploded)[0] == str(tiny_data["metal"])
    saved = json.loads((tmp_path / "exploded" / "csi.json").read_text())
    assert saved["feature_outliers"] == exploded["feature_outliers"]

    robust = _run(tiny_data, planted, tmp_path / "robust", drop=True)
    assert _order(robust) == _order(clean)  # without the NH3 structures the order of the clean run is back
    entry = next(e for e in robust["feature_outliers"] if e["dataset"] == str(tiny_data["organic"]))
    assert entry["dropped"] == {"n_structures": 3, "all_outlier_structures": True}
    organic = next(r for r in robust["ranking"] if r["upstream"] == str(tiny_data["organic"]))
    assert organic["n_structures"] == 9 and robust["settings"]["drop_outlier_structures"] is True
    assert any("were left out (--drop-outlier-structures)" in w for w in robust["warnings"])
    # a second run reuses both passes from the cache and reports the same
    again = _run(tiny_data, planted, tmp_path / "robust", drop=True)
    assert again["cache"]["computed"] == 0 and again["feature_outliers"] == robust["feature_outliers"]
    assert [r["csi"] for r in again["ranking"]] == [r["csi"] for r in robust["ranking"]]


def test_non_finite_features_name_the_dataset_and_the_structure(tiny_data, tiny_extractor, tmp_path,
                                                                 one_torch_thread):
    nan = _Planted(tiny_extractor, element=7, factor=float("nan"))
    with pytest.raises(FastCSIError) as caught:
        _run(tiny_data, nan, tmp_path / "nan", use_cache=False)
    message = str(caught.value)
    assert message.startswith(f"{tiny_data['organic']}: the extractor returned NaN or inf features for structure")
    assert "(index 3)" in message and "\n" not in message
    assert not (tmp_path / "nan").exists()  # a refused run leaves no output directory


def test_cli_drop_outlier_structures_is_a_recorded_setting(tiny_data, tmp_path):
    from click.testing import CliRunner

    from fastcsi.cli import cli

    out = tmp_path / "cli"
    r = CliRunner().invoke(cli, ["select", "--downstream", str(tiny_data["down"]), "--upstream",
                                 str(tiny_data["organic"]), "--samples", "all", "--seeds", "0", "-o", str(out),
                                 "--quiet", "--threads", "1", "--backbone", "gemnet-oc-random",
                                 "--drop-outlier-structures"])
    assert r.exit_code == 0, r.output
    saved = json.loads((out / "csi.json").read_text())
    assert saved["settings"]["drop_outlier_structures"] is True
    assert all(e["checked"] and "dropped" not in e for e in saved["feature_outliers"])  # nothing to drop here


def _cli_with_planted_extractor(monkeypatch, tiny_extractor, factor, args):
    """Run the CLI with every backbone replaced by the tiny one with planted N features."""
    from click.testing import CliRunner

    import fastcsi.pipeline.backbone as backbone
    from fastcsi.cli import cli

    monkeypatch.setattr(backbone, "load_extractor",
                        lambda *a, **k: _Planted(tiny_extractor, element=7, factor=factor))
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_cli_non_finite_features_are_one_line_and_exit_2(tiny_data, tiny_extractor, tmp_path, monkeypatch):
    r = _cli_with_planted_extractor(monkeypatch, tiny_extractor, float("inf"), [
        "select", "--downstream", tiny_data["down"], "--upstream", tiny_data["organic"], "--samples", "all",
        "--seeds", "0", "-o", tmp_path / "out", "--quiet", "--threads", "1", "--backbone", "gemnet-oc-random"])
    assert r.exit_code == 2, r.output
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"fastcsi: error: {tiny_data['organic']}: the extractor returned "
                                                   "NaN or inf features for structure")
    assert not (tmp_path / "out").exists()


def test_cli_stats_compute_warns_about_outliers_and_keeps_the_check(tiny_data, tiny_extractor, tmp_path,
                                                                    monkeypatch):
    from fastcsi.stats import FeatureStats

    out = tmp_path / "organic.npz"
    r = _cli_with_planted_extractor(monkeypatch, tiny_extractor, 1e4, [
        "stats", "compute", tiny_data["organic"], "-o", out, "--samples", "all", "--quiet", "--threads", "1",
        "--backbone", "gemnet-oc-random"])
    assert r.exit_code == 0, r.output
    assert "3 atom(s) in 3 structure(s) have feature norms over 100x the median" in r.stderr
    check = FeatureStats.load(out).metadata["feature_outliers"]
    assert check["n_outlier_atoms"] == 3 and check["dominates_trace"]


def test_warning_gives_a_lower_bound_on_the_structures_when_the_listing_is_incomplete():
    import numpy as np

    from fastcsi.pipeline.select import outlier_warning
    from fastcsi.stats.outliers import FeatureNormMonitor

    # large features first (median ~1e3), then a flood of tiny ones moves the median to ~1e-3: the atoms
    # seen early were no candidates then, so the structures holding them are not all known
    rng = np.random.default_rng(0)
    monitor = FeatureNormMonitor(4)
    monitor.update(rng.normal(size=(40, 4)) * 1e3, np.repeat(np.arange(4), 10))
    for k in range(8):
        monitor.update(rng.normal(size=(100, 4)) * 1e-3, np.repeat(np.arange(10), 10) + 100 * (k + 1))
    incomplete = monitor.report().to_dict()
    assert not incomplete["listing_complete"] and incomplete["n_outlier_atoms"] == 40
    text = outlier_warning("big.xyz", [incomplete])
    assert f"40 atom(s) in at least {incomplete['n_outlier_structures']} structure(s)" in text
    assert "partly listed" in text
    complete = dict(incomplete, listing_complete=True)
    assert f"40 atom(s) in {incomplete['n_outlier_structures']} structure(s)" in outlier_warning("big.xyz", [complete])

