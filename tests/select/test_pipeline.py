"""End-to-end CSI selection on tiny datasets with the real tiny backbone, against an independent
oracle (features of every structure -> FeatureStats -> csi), plus caching and resume."""
import json

import numpy as np
import pytest
import torch

from fastcsi.data import collate, open_dataset
from fastcsi.errors import FastCSIError
from fastcsi.model import extract_features
from fastcsi.pipeline import SelectSettings
from fastcsi.pipeline.select import compute_stats_file, run_select
from fastcsi.stats import FeatureStats, csi


def _oracle_stats(path, model):
    """Stats of every structure in one batch (no sampling, no cache, other batching than the run)."""
    ds = open_dataset(path)
    batch = collate([ds[i] for i in range(len(ds))], dtype=torch.float64)
    return FeatureStats(32, track_groups=True).update(extract_features(model, batch), groups=batch.atomic_numbers)


def test_select_all_samples_matches_oracle(tiny_data, extractor, tmp_path):
    settings = SelectSettings(samples=None, seeds=(0,), batch_size=7, dtype="float64")
    threads_before = torch.get_num_threads()
    result = run_select(
        tiny_data["down"], [tiny_data["metal"], tiny_data["organic"]], settings,
        outdir=tmp_path / "out", extractor=extractor, progress=False,
    )
    down = _oracle_stats(tiny_data["down"], extractor.model)
    ranking = result["ranking"]
    assert [r["upstream"] for r in ranking] == [str(tiny_data["organic"]), str(tiny_data["metal"])]
    for row in ranking:
        up = _oracle_stats(row["upstream"], extractor.model)
        expected = csi(down, up, per_group=True)
        assert row["csi"] == pytest.approx(expected.csi, rel=1e-9)
        assert row["mean_term"] == pytest.approx(expected.mean_term, rel=1e-9, abs=1e-12)
        assert row["trace_term"] == pytest.approx(expected.trace_term, rel=1e-9)
        assert row["n_atoms"] == up.count and row["n_structures"] == len(open_dataset(row["upstream"]))
        for z, g in expected.per_group.items():
            symbol = {1: "H", 6: "C", 7: "N", 8: "O"}[z]
            # Per-element clouds have fewer atoms than dimensions (rank-deficient covariances):
            # the square root of a roundoff-level eigenvalue (1e-16) is 1e-8, so only ~1e-7 agrees.
            assert row["per_element"][symbol]["csi"] == pytest.approx(g.csi, rel=1e-6)
    assert ranking[0]["per_element"] and not ranking[1]["per_element"]  # metals share no element with water
    assert result["downstream"]["n_atoms"] == down.count

    out = tmp_path / "out"
    saved = json.loads((out / "csi.json").read_text())
    assert saved["ranking"][0]["csi"] == ranking[0]["csi"]
    assert saved["settings"]["samples"] == "all" and saved["settings"]["extractor"] == extractor.fingerprint
    assert saved["versions"]["fastcsi"]
    # auto threads: one for the tiny backbone during the run, the caller's setting restored after
    assert saved["settings"]["threads"] == 1 and torch.get_num_threads() == threads_before
    for name in ("csi.csv", "csi.png", "csi_per_element.png", "profile.md", "profile.json"):
        assert (out / name).is_file(), name
    stages = json.loads((out / "profile.json").read_text())["stages"]
    assert {"read", "graph", "model", "stats", "distance"} <= set(stages)
    assert all(s["total_s"] >= 0 for s in stages.values())


def test_seeds_give_spread_and_counts(tiny_data, extractor, tmp_path):
    settings = SelectSettings(samples=4, seeds=(0, 1, 2), batch_size=4, dtype="float64")
    result = run_select(
        tiny_data["down"], [tiny_data["organic"]], settings,
        outdir=tmp_path, extractor=extractor, progress=False, use_cache=False,
    )
    organic = next(r for r in result["ranking"] if r["upstream"] == str(tiny_data["organic"]))
    values = [p["csi"] for p in organic["per_seed"]]
    assert len(values) == 3 and len(set(values)) > 1  # different samples, different CSI
    assert organic["csi"] == pytest.approx(np.mean(values), rel=1e-12)
    assert organic["csi_std"] == pytest.approx(np.std(values, ddof=1), rel=1e-9)
    ds = open_dataset(tiny_data["organic"])
    n_atoms = ds.n_atoms_per_structure()
    from fastcsi.data import sample_indices

    for p in organic["per_seed"]:
        idx = sample_indices(ds, 4, strategy="balanced", seed=p["seed"])
        assert p["n_structures"] == 4 and p["n_atoms"] == int(n_atoms[idx].sum())
    # 4 structures of 3-5 atoms are far below 10 x 32 samples: the adequacy check says so.
    assert any("fewer than 10x" in w for w in result["warnings"])
    assert result["adequacy"]["n_seeds"] == 3


def test_exhausted_datasets_claim_no_spread(tiny_data, extractor, tmp_path):
    # 50 samples of datasets of 8 and 12 structures: every seed sees the same structures.
    from fastcsi.pipeline.report import format_table

    settings = SelectSettings(samples=50, seeds=(0, 1), batch_size=8, dtype="float64")
    result = run_select(tiny_data["down"], [tiny_data["organic"]], settings, outdir=tmp_path, extractor=extractor,
                        progress=False, use_cache=False)
    row = result["ranking"][0]
    assert row["csi_std"] is None and row["spread_measured"] is False and row["all_structures_used"]
    assert all(part["csi_std"] is None for part in row["per_element"].values())
    assert result["downstream"]["all_structures_used"]
    warnings = " | ".join(result["warnings"])
    assert f"{tiny_data['organic']}: all 12 structures used; seeds share the sample" in warnings
    assert f"{tiny_data['down']}: all 8 structures used; seeds share the sample" in warnings
    assert "use more --samples" not in warnings and "the dataset holds no more structures" in warnings
    table = format_table(result)
    assert "± 0" not in table and "spread over seeds is not measured" in table
    data_row = next(line for line in table.splitlines() if line.lstrip().startswith("1 "))
    assert data_row.split()[3] == "-"  # the ± std column
    saved = json.loads((tmp_path / "csi.json").read_text())
    assert saved["ranking"][0]["csi_std"] is None
    csv_row = [l for l in (tmp_path / "csi.csv").read_text().splitlines() if not l.startswith("#")][1]
    assert csv_row.split(",")[3] == ""
    from fastcsi.pipeline import Ranking

    assert Ranking.load(tmp_path).closest.csi_std is None


class _Interrupting:
    """Wraps an extractor; raises KeyboardInterrupt at the given features() call (a killed run)."""

    def __init__(self, inner, fail_at=None):
        self.inner, self.fail_at, self.calls = inner, fail_at, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def features(self, batch, profiler=None):
        self.calls += 1
        if self.fail_at is not None and self.calls == self.fail_at:
            raise KeyboardInterrupt
        return self.inner.features(batch, profiler)


def test_interrupted_run_resumes_from_cache(tiny_data, extractor, tmp_path):
    settings = SelectSettings(samples=None, seeds=(0,), batch_size=100, dtype="float64")
    args = (tiny_data["down"], [tiny_data["organic"], tiny_data["metal"]], settings)
    out = tmp_path / "run"
    # One batch per dataset: call 3 (the metal upstream) is interrupted after two stats were cached.
    with pytest.raises(KeyboardInterrupt):
        run_select(*args, outdir=out, extractor=_Interrupting(extractor, fail_at=3), progress=False)
    assert not (out / "csi.json").exists()
    cached = sorted(p.name for p in (out / "cache").iterdir())
    assert len(cached) == 2 and all(name.endswith(".npz") for name in cached)  # no temp files

    counting = _Interrupting(extractor)
    resumed = run_select(*args, outdir=out, extractor=counting, progress=False)
    assert counting.calls == 1 and resumed["cache"] == {"hits": 2, "computed": 1}
    fresh = run_select(*args, outdir=tmp_path / "fresh", extractor=extractor, progress=False, use_cache=False)
    for a, b in zip(resumed["ranking"], fresh["ranking"]):
        assert a["upstream"] == b["upstream"] and a["csi"] == pytest.approx(b["csi"], rel=1e-12)

    again = _Interrupting(extractor)
    run_select(*args, outdir=out, extractor=again, progress=False)
    assert again.calls == 0  # everything reused


def test_stats_files_as_inputs(tiny_data, extractor, tmp_path):
    settings = SelectSettings(samples=6, dtype="float64")
    kw = dict(seed=0, progress=False, extractor=extractor)
    up_npz = tmp_path / "organic.npz"
    compute_stats_file(tiny_data["organic"], up_npz, settings, sampling="balanced", **kw)
    down_npz = tmp_path / "down.npz"
    compute_stats_file(tiny_data["down"], down_npz, settings, sampling="random", **kw)
    meta = FeatureStats.load(up_npz).metadata
    assert meta["extractor"] == extractor.fingerprint and meta["seed"] == 0 and meta["n_structures"] == 6

    settings = SelectSettings(samples=6, seeds=(0,), dtype="float64")
    direct = run_select(tiny_data["down"], [tiny_data["organic"]], settings, outdir=tmp_path / "a",
                        extractor=extractor, progress=False, use_cache=False)
    mixed = run_select(tiny_data["down"], [up_npz], settings, outdir=tmp_path / "b",
                       extractor=extractor, progress=False, use_cache=False)
    only_stats = run_select(down_npz, [up_npz], settings, outdir=tmp_path / "c", progress=False)
    expected = direct["ranking"][0]["csi"]
    assert mixed["ranking"][0]["csi"] == pytest.approx(expected, rel=1e-10)
    assert only_stats["ranking"][0]["csi"] == pytest.approx(expected, rel=1e-10)
    assert mixed["ranking"][0]["source"] == "stats" and mixed["ranking"][0]["n_structures"] == 6


def test_stats_file_from_another_backbone_is_refused(tiny_data, extractor, tmp_path):
    from fastcsi.extractors.gemnet_oc import GemNetOCExtractor
    from fastcsi.model import build_model, extractor_fingerprint

    torch.manual_seed(123)
    model = build_model("gemnet-oc-tiny").to(torch.float64).eval()
    other = GemNetOCExtractor(model, "final", "node", "cpu", torch.float64, extractor_fingerprint(model, "final", "node"),
                              extractor.dim, "another random init", name=extractor.name, pretrained=False)
    assert other.fingerprint != extractor.fingerprint
    up_npz = tmp_path / "organic_other.npz"
    compute_stats_file(tiny_data["organic"], up_npz, SelectSettings(samples=4, dtype="float64"), progress=False,
                       extractor=other)
    settings = SelectSettings(samples=4, seeds=(0,), dtype="float64")
    with pytest.raises(FastCSIError, match="cannot be compared"):
        run_select(tiny_data["down"], [up_npz], settings, outdir=tmp_path / "o", extractor=extractor,
                   progress=False)
    assert not (tmp_path / "o" / "csi.json").exists()


def test_default_backbone_is_reproducible_across_thread_counts():
    # torchrun ranks run with fewer threads than a single process: their features must still be
    # comparable (same fingerprint) with stats computed elsewhere.
    from fastcsi.pipeline.backbone import load_extractor

    before = torch.get_num_threads()
    try:
        prints = set()
        for threads in (1, 2):
            torch.set_num_threads(threads)
            prints.add(load_extractor("gemnet-oc-random", None, "final", "node", "cpu", "float32").fingerprint)
    finally:
        torch.set_num_threads(before)
    assert len(prints) == 1 and torch.get_num_threads() == before


def test_structure_level_aggregation(tiny_data, extractor, tmp_path):
    settings = SelectSettings(samples=None, seeds=(0,), agg="mean", dtype="float64", batch_size=16)
    result = run_select(tiny_data["down"], [tiny_data["organic"]], settings, outdir=tmp_path,
                        extractor=extractor, progress=False, use_cache=False)
    row = result["ranking"][0]
    # one sample per structure, and no per-element breakdown (structures have no single element)
    assert row["per_seed"][0]["n_samples"] == row["n_structures"] == 12
    assert row["per_element"] == {} and row["stats_settings"]["aggregation"] == "mean"
    assert not (tmp_path / "csi_per_element.png").exists() and (tmp_path / "csi.png").exists()
