"""`select --optimize-mix`: per-class stats from the same pass, mix.json, pretrain_set.json, bad input."""
import json

import numpy as np
import pytest
from click.testing import CliRunner

from fastcsi.cli import cli
from fastcsi.data import open_dataset
from fastcsi.pipeline import SelectSettings
from fastcsi.pipeline.compute import StatsCache, dataset_stats
from fastcsi.data.sampling import draw_selection
from fastcsi.pipeline.mix import MixSettings
from fastcsi.pipeline.select import run_select
from fastcsi.pipeline.settings import SampleSpec
from fastcsi.stats import FeatureStats


def _invoke(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def test_class_stats_come_from_the_same_pass(tiny_data, extractor, tmp_path):
    ds = open_dataset(tiny_data["organic"])
    spec = SampleSpec.make("all", None, 0, len(ds))
    cache = StatsCache(tmp_path / "cache")
    stats, hit = dataset_stats(ds, "organic", extractor, spec, cache=cache, progress=False, per_class=True)
    assert not hit
    classes = stats.class_stats
    names = classes.metadata["class_names"]
    assert names == sorted(set(np.asarray(ds.class_keys()).astype(str).tolist())) and len(names) == 4
    # the classes partition the samples: merged they are the dataset's stats
    merged = FeatureStats(stats.dim)
    for group in classes.groups.values():
        merged.merge(group)
    assert merged.count == stats.count
    np.testing.assert_allclose(merged.mean, stats.mean, atol=1e-12)
    np.testing.assert_allclose(merged.scatter, stats.scatter, rtol=1e-10, atol=1e-10)
    # each class holds the atoms of its own structures
    keys = np.asarray(ds.class_keys()).astype(str)
    natoms = ds.n_atoms_per_structure()
    for label, group in classes.groups.items():
        assert group.count == natoms[keys == names[label]].sum()
        assert classes.metadata["class_structures"][str(label)] == (keys == names[label]).sum()
    # cached together, and a hit brings the classes back
    again, hit = dataset_stats(ds, "organic", extractor, spec, cache=cache, progress=False, per_class=True)
    assert hit and sorted(again.class_stats.groups) == sorted(classes.groups)
    plain, hit = dataset_stats(ds, "organic", extractor, spec, cache=cache, progress=False)
    assert not hit and not hasattr(plain, "class_stats")  # a different cache key
    np.testing.assert_allclose(plain.scatter, stats.scatter, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def dataset_run(tiny_data, extractor, tmp_path_factory):
    out = tmp_path_factory.mktemp("mix_dataset")
    settings = SelectSettings(samples=None, seeds=(0,), batch_size=8)
    result = run_select(tiny_data["down"], [tiny_data["organic"], tiny_data["metal"]], settings, outdir=out,
                        extractor=extractor, progress=False, mix=MixSettings(budget=10, seed=3))
    return out, result


def test_dataset_level_mix_and_pretrain_set(dataset_run, tiny_data):
    out, result = dataset_run
    mix = json.loads((out / "mix.json").read_text())
    assert mix["format"] == "fastcsi-mix/1" and mix["level"] == "dataset"
    weights = mix["weights"]
    assert sum(weights.values()) == pytest.approx(1.0)
    single = {row["upstream"]: row["csi"] for row in result["ranking"]}
    best = min(single, key=single.get)
    assert mix["csi"]["best_single"] == {"upstream": best, "csi": pytest.approx(single[best], rel=1e-9)}
    assert mix["csi"]["optimum"] <= single[best] + 1e-12
    for name in ("balanced", "temperature:2"):
        assert mix["csi"]["optimum"] <= mix["csi"][name] + 1e-12
    assert {"mix.json", "mix.png", "pretrain_set.json"} <= set(result["profile"]["outputs"])
    assert (out / "mix.png").stat().st_size > 0
    assert json.loads((out / "csi.json").read_text())["mix"]["weights"] == weights

    chosen = json.loads((out / "pretrain_set.json").read_text())
    assert chosen["format"] == "fastcsi-pretrain-set/1" and chosen["budget"] == 10
    assert sum(len(d["indices"]) for d in chosen["datasets"]) == 10
    by_component = {c["dataset"]: c["structures"] for c in mix["components"]}
    for entry, path in zip(chosen["datasets"], (tiny_data["organic"], tiny_data["metal"])):
        ds = open_dataset(path)
        assert entry["fingerprint"] == ds.fingerprint
        idx = entry["indices"]
        assert idx == sorted(set(idx)) and all(0 <= i < len(ds) for i in idx)
        assert len(idx) == by_component[str(path)]
    # quotas follow the structure shares (largest remainder)
    shares = mix["structure_shares"]
    for entry in chosen["datasets"]:
        assert abs(len(entry["indices"]) - 10 * shares[entry["given_as"]]) <= 1


def test_draws_are_seeded_and_class_balanced(tiny_data):
    datasets = [open_dataset(tiny_data["organic"]), open_dataset(tiny_data["metal"])]
    plan = [{"dataset": 0, "classes": None, "structure_share": 0.6},
            {"dataset": 1, "classes": None, "structure_share": 0.4}]
    first, quotas = draw_selection(datasets, plan, 10, seed=1)
    again, _ = draw_selection(datasets, plan, 10, seed=1)
    assert quotas == [6, 4] and all(np.array_equal(a, b) for a, b in zip(first, again))
    keys = np.asarray(datasets[0].class_keys()).astype(str)
    _, per_class = np.unique(keys[first[0]], return_counts=True)
    assert per_class.max() - per_class.min() <= 1  # 6 structures over 4 classes: 2,2,1,1
    # class-level plan: only the named classes, capped by what they hold (3 each)
    names = sorted(set(keys))
    plan = [{"dataset": 0, "classes": names[:1], "structure_share": 0.9},
            {"dataset": 0, "classes": names[1:], "structure_share": 0.1}]
    chosen, quotas = draw_selection(datasets, plan, 6, seed=0)
    assert quotas == [3, 3] and len(chosen[1]) == 0
    assert sum(keys[chosen[0]] == names[0]) == 3


def test_class_level_mix(tiny_data, extractor, tmp_path):
    settings = SelectSettings(samples=None, seeds=(0,), batch_size=8)
    mix = MixSettings(level="class", budget=8, component_samples=2, seed=0)
    result = run_select(tiny_data["down"], [tiny_data["organic"], tiny_data["metal"]], settings, outdir=tmp_path,
                        extractor=extractor, progress=False, mix=mix)
    payload = json.loads((tmp_path / "mix.json").read_text())
    comps = payload["components"]
    assert len(comps) == 6  # 4 molecule classes + 2 metal clusters, each its own component
    assert all(len(c["classes"]) == 1 for c in comps)
    for path, share in payload["weights"].items():
        assert share == pytest.approx(sum(c["weight"] for c in comps if c["dataset"] == path), abs=1e-12)
    assert payload["csi"]["optimum"] <= payload["csi"]["best_single"]["csi"] * (1 + 1e-9)
    assert "dataset_optimum" in payload["csi"] and result["mix"]["level"] == "class"
    chosen = json.loads((tmp_path / "pretrain_set.json").read_text())
    assert sum(len(d["indices"]) for d in chosen["datasets"]) == 8
    for entry in chosen["datasets"]:
        keys = np.asarray(open_dataset(entry["path"]).class_keys()).astype(str)
        drawn = set(keys[entry["indices"]].tolist())
        wanted = {c["classes"][0] for c in comps if c["dataset"] == entry["given_as"] and c["structures"]}
        assert drawn == wanted


def test_cli_optimize_mix_and_bad_input(tiny_data, tmp_path):
    out = tmp_path / "ok"
    base = ["select", "--downstream", tiny_data["down"], "--upstream", tiny_data["organic"], "--upstream",
            tiny_data["metal"], "--samples", "all", "--seeds", "0", "--quiet"]
    r = _invoke(*base, "-o", out, "--optimize-mix", "--budget", "6")
    assert r.exit_code == 0, r.output
    assert "CSI-optimal dataset-level mixture" in r.stdout and "best single" in r.stdout
    assert (out / "pretrain_set.json").is_file()
    npz = tmp_path / "organic.npz"
    assert _invoke("stats", "compute", tiny_data["organic"], "-o", npz, "--samples", "4", "--quiet").exit_code == 0
    cases = [
        (["--optimize-mix", "--diversity", "-0.5"], "TAU"),
        (["--optimize-mix", "--budget", "1000"], "larger than the data"),
        (["--budget", "5"], "--optimize-mix"),
        (["--optimize-mix", "--floor", "0.7"], "--floor"),
    ]
    for extra, needle in cases:
        bad = tmp_path / f"bad{len(needle)}"
        r = _invoke(*base, "-o", bad, *extra)
        assert r.exit_code == 2, r.output
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("fastcsi: error: ") and needle in lines[0], r.stderr
        assert not bad.exists()
    bad = tmp_path / "bad_stats"
    r = _invoke("select", "--downstream", tiny_data["down"], "--upstream", npz, "--samples", "4", "--seeds", "0",
                "--quiet", "-o", bad, "--optimize-mix", "--level", "class")
    assert r.exit_code == 2 and "stats file" in r.stderr and not (bad / "mix.json").exists()


def test_single_upstream_mix_is_that_upstream(tiny_data, extractor, tmp_path):
    settings = SelectSettings(samples=None, seeds=(0,), batch_size=8)
    result = run_select(tiny_data["down"], [tiny_data["organic"]], settings, outdir=tmp_path, extractor=extractor,
                        progress=False, mix=MixSettings())
    assert result["mix"]["weights"] == {str(tiny_data["organic"]): 1.0}
    assert result["mix"]["csi"]["optimum"] == pytest.approx(result["ranking"][0]["csi"], rel=1e-9)
