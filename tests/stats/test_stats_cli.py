"""fastcsi stats from-features / merge / info and fastcsi csi, through the real CLI entry point."""
import argparse
import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastcsi.cli.app import cli
from fastcsi.stats import FeatureStats, load_stats


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


@pytest.fixture()
def feature_files(tmp_path):
    gen = torch.Generator().manual_seed(0)
    structures = []
    for _ in range(30):
        n = int(torch.randint(2, 12, (1,), generator=gen))
        structures.append(
            {"node_features": torch.randn(n, 8, generator=gen), "atomic_numbers": torch.randint(1, 4, (n,), generator=gen)}
        )
    listed = tmp_path / "upstream.pt"
    torch.save(structures, listed)
    flat = tmp_path / "downstream.pt"
    torch.save({"features": torch.randn(200, 8, generator=gen) + 0.5}, flat)
    return listed, flat, structures


def test_from_features_flat_and_aggregations(feature_files, tmp_path):
    listed, _, structures = feature_files
    out = tmp_path / "flat.npz"
    result = _run("stats", "from-features", listed, "-o", out, "--extractor", "gemnet@1", "--meta", "seed=3")
    assert result.exit_code == 0, result.output
    stats = load_stats(out)
    atoms = torch.cat([s["node_features"] for s in structures]).double().numpy()
    assert stats.count == len(atoms) and stats.track_groups
    assert np.abs(stats.covariance() - np.cov(atoms, rowvar=False)).max() <= 1e-12
    assert stats.metadata["aggregation"] == "flat" and stats.metadata["extractor"] == "gemnet@1"
    assert stats.metadata["seed"] == 3 and stats.metadata["n_structures"] == 30
    assert len(stats.metadata["dataset_fingerprint"]) == 64
    for agg, reduce in (("mean", lambda f: f.mean(0)), ("sum", lambda f: f.sum(0)), ("max", lambda f: f.max(0).values)):
        out = tmp_path / f"{agg}.npz"
        assert _run("stats", "from-features", listed, "-o", out, "--agg", agg).exit_code == 0
        samples = torch.stack([reduce(s["node_features"]) for s in structures]).double().numpy()
        loaded = load_stats(out)
        assert loaded.count == 30 and not loaded.groups
        assert np.abs(loaded.mean - samples.mean(0)).max() <= 1e-6  # float32 reductions
        assert np.abs(loaded.covariance() - np.cov(samples, rowvar=False)).max() <= 1e-5


def test_csi_command_text_and_json(feature_files, tmp_path):
    listed, flat, _ = feature_files
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    assert _run("stats", "from-features", listed, "-o", a).exit_code == 0
    assert _run("stats", "from-features", flat, "-o", b).exit_code == 0
    text = _run("csi", a, b)
    assert text.exit_code == 0 and text.output.startswith("CSI ")
    payload = json.loads(_run("csi", a, b, "--json").output)
    stats_a, stats_b = load_stats(a), load_stats(b)
    expected_mean = float(((stats_a.mean - stats_b.mean) ** 2).sum())
    assert payload["mean_term"] == pytest.approx(expected_mean, rel=1e-12)
    assert payload["csi"] == pytest.approx(payload["mean_term"] + payload["trace_term"])
    assert (payload["n_a"], payload["n_b"]) == (stats_a.count, 200)
    same = json.loads(_run("csi", a, a, "--json").output)
    assert abs(same["csi"]) < 1e-10 and set(same["per_group"]) == {"1", "2", "3"}


def test_csi_names_per_element_rows_by_symbol(tmp_path):
    rng = np.random.default_rng(3)
    paths = []
    for name in ("a", "b"):
        z = rng.choice([1, 6, 8], size=300)
        stats = FeatureStats(3, {"extractor": "e"}, track_groups=True).update(rng.standard_normal((300, 3)), groups=z)
        paths.append(stats.save(tmp_path / f"{name}.npz"))
    text = _run("csi", *paths)
    assert text.exit_code == 0, text.output
    rows = text.output.split("per element:", 1)[1].splitlines()[1:]
    assert [row.split()[0] for row in rows] == ["H", "C", "O"]
    payload = json.loads(_run("csi", *paths, "--json").output)
    assert {z: part["element"] for z, part in payload["per_group"].items()} == {"1": "H", "6": "C", "8": "O"}


def test_merge_command_is_exact_and_refuses_incompatible(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((600, 5)) + 50
    paths = []
    for index, part in enumerate(np.split(x, [100, 350])):
        paths.append(FeatureStats(5, {"extractor": "e"}).update(part).save(tmp_path / f"s{index}.npz"))
    out = tmp_path / "merged.npz"
    result = _run("stats", "merge", *paths, "-o", out)
    assert result.exit_code == 0, result.output
    merged = load_stats(out)
    assert merged.count == 600
    assert np.abs(merged.covariance() - np.cov(x, rowvar=False)).max() <= 1e-12
    odd = FeatureStats(5, {"extractor": "other"}).update(x[:10]).save(tmp_path / "odd.npz")
    refused = _run("stats", "merge", paths[0], odd, "-o", tmp_path / "never.npz")
    assert refused.exit_code == 2 and "extractor" in refused.output and "odd.npz" in refused.output
    assert not (tmp_path / "never.npz").exists()
    assert "dim 5, 600 samples" in _run("stats", "info", out).output


def test_merged_file_reports_the_merged_counts_and_seeds(tmp_path):
    # Shards of equal size (as torchrun ranks or repeated `stats compute` runs write them).
    rng = np.random.default_rng(2)
    paths = []
    for seed in (0, 1):
        meta = {"extractor": "e", "n_structures": 40, "n_atoms": 360, "seed": seed}
        paths.append(FeatureStats(5, meta).update(rng.standard_normal((360, 5))).save(tmp_path / f"s{seed}.npz"))
    out = tmp_path / "merged.npz"
    merged_run = _run("stats", "merge", *paths, "-o", out)
    assert merged_run.exit_code == 0, merged_run.output
    assert "80 structures, 720 atoms" in merged_run.output
    info = _run("stats", "info", out).output
    meta = json.loads(info[info.index("{"):])
    assert (meta["n_structures"], meta["n_atoms"], meta["seeds"]) == (80, 720, [0, 1])
    assert "seed" not in meta


def test_user_mistakes_exit_2_with_one_line(feature_files, tmp_path):
    _, flat, _ = feature_files
    pickled = tmp_path / "pickled.pt"
    torch.save({"features": argparse.Namespace(rows=1)}, pickled)  # needs an arbitrary unpickle
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"junk")
    cases = [
        ("stats", "from-features", pickled, "-o", tmp_path / "x.npz"),
        ("stats", "from-features", junk, "-o", tmp_path / "x.npz"),
        ("stats", "from-features", flat, "-o", tmp_path / "x.npz", "--agg", "mean"),
        ("stats", "from-features", tmp_path / "missing.pt", "-o", tmp_path / "x.npz"),
        ("csi", tmp_path / "missing.npz", tmp_path / "missing.npz"),
    ]
    for args in cases:
        result = _run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert len(result.output.strip().splitlines()) == 1 and result.output.startswith("fastcsi: error:")
        assert "Traceback" not in result.output
    assert not (tmp_path / "x.npz").exists()
