"""`fastcsi pretrain --from-selection OUT/pretrain_set.json` and `--mix csi:OUT/mix.json`: trains on
exactly the selected set (fingerprints checked), or on fresh draws with the CSI-optimal weights."""
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from fastcsi.cli import cli
from fastcsi.data import open_dataset
from fastcsi.pipeline import SelectSettings
from fastcsi.pipeline.mix import MixSettings
from fastcsi.pipeline.select import run_select

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from train_toy import lj_structures  # noqa: E402

FAST = ["--model", "gemnet-oc-tiny", "--batch-size", "4", "--threads", "1", "--quiet", "--epochs", "1"]


@pytest.fixture(scope="module")
def selected(tmp_path_factory, extractor):
    """Two labelled upstreams, a downstream, and select --optimize-mix outputs at both levels."""
    from ase.io import write

    root = tmp_path_factory.mktemp("mixdata")
    paths = {}
    for name, seed, lo, hi in (("up_a", 1, 3, 5), ("up_b", 2, 6, 8), ("down", 3, 4, 6)):
        paths[name] = root / f"{name}.extxyz"
        write(paths[name], [s.to_ase() for s in lj_structures(16, seed=seed, min_atoms=lo, max_atoms=hi)])
    settings = SelectSettings(samples=None, seeds=(0,), batch_size=8)
    outs = {}
    for level in ("dataset", "class"):
        outs[level] = root / f"select_{level}"
        run_select(paths["down"], [paths["up_a"], paths["up_b"]], settings, outdir=outs[level], extractor=extractor,
                   progress=False, mix=MixSettings(level=level, budget=6, component_samples=2, seed=1))
    return paths, outs


def _run(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def _one_line_error(result, needle):
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastcsi: error: ") and needle in lines[0], result.stderr


def test_from_selection_trains_on_exactly_that_set(selected, tmp_path):
    from fastcsi.train.normalization import Normalizer

    _, outs = selected
    chosen_file = outs["dataset"] / "pretrain_set.json"
    chosen = json.loads(chosen_file.read_text())
    r = _run("pretrain", "--from-selection", chosen_file, "-o", tmp_path / "pre", *FAST)
    assert r.exit_code == 0, r.output
    assert "N = 6 structures" in r.stdout and "exactly the 6 structures of" in r.stdout
    record = json.loads((tmp_path / "pre" / "pretrain.json").read_text())
    source = record["budget"]["data_source"]
    assert source["kind"] == "selection" and source["file"] == str(chosen_file.resolve())
    assert record["settings"]["selection"] == str(chosen_file)
    per_dataset = {str(Path(p).resolve()): n for p, n in record["budget"]["per_dataset"].items()}
    assert per_dataset == {e["path"]: len(e["indices"]) for e in chosen["datasets"]}
    # the normaliser is fitted on the training structures: it matches the selected ones exactly
    structures = [open_dataset(e["path"])[i] for e in chosen["datasets"] for i in e["indices"]]
    expected = Normalizer.fit(structures, ("energy", "forces")).to_dict()
    assert json.dumps(record["normalizer"], sort_keys=True) == json.dumps(expected, sort_keys=True)


def test_from_selection_refuses_changed_data_and_mismatches(selected, tmp_path):
    paths, outs = selected
    chosen = json.loads((outs["dataset"] / "pretrain_set.json").read_text())
    copy = tmp_path / "up_a.extxyz"
    shutil.copy(paths["up_a"], copy)
    with open(copy, "a") as fh:  # the file changes after the selection was made
        fh.write("\n")
    chosen["datasets"][0]["path"] = str(copy)
    stale = tmp_path / "stale.json"
    stale.write_text(json.dumps(chosen))
    _one_line_error(_run("pretrain", "--from-selection", stale, "-o", tmp_path / "x", *FAST), "changed since")
    assert not (tmp_path / "x" / "pretrain.json").exists()
    good = outs["dataset"] / "pretrain_set.json"
    _one_line_error(_run("pretrain", "--from-selection", good, "--samples", 5, "-o", tmp_path / "y", *FAST),
                    "drop --samples")
    _one_line_error(_run("pretrain", "--from-selection", good, "--data", paths["down"], "-o", tmp_path / "z", *FAST),
                    "does not name the datasets")
    _one_line_error(_run("pretrain", "--from-selection", outs["dataset"] / "mix.json", "-o", tmp_path / "w", *FAST),
                    "not a pretraining-set file")
    _one_line_error(_run("pretrain", "--data", paths["up_a"], "-o", tmp_path / "v", *FAST), "--samples")


@pytest.mark.parametrize("level", ["dataset", "class"])
def test_mix_csi_uses_the_weights_with_fresh_draws(selected, tmp_path, level):
    paths, outs = selected
    mix_file = outs[level] / "mix.json"
    mix = json.loads(mix_file.read_text())
    r = _run("pretrain", "--mix", f"csi:{mix_file}", "--samples", 8, "--seed", 4, "-o", tmp_path / "pre", *FAST)
    assert r.exit_code == 0, r.output
    assert f"{level}-level CSI-optimal weights" in r.stdout
    record = json.loads((tmp_path / "pre" / "pretrain.json").read_text())
    assert record["budget"]["data_source"]["kind"] == "csi" and record["budget"]["data_source"]["level"] == level
    counts = np.array([record["budget"]["per_dataset"][p] for p in mix["structure_shares"]])
    shares = np.array(list(mix["structure_shares"].values()))
    assert counts.sum() == 8
    # structures follow the CSI-optimal shares, up to rounding and what a component can hold
    capacity = np.array([16, 16])
    assert np.all((np.abs(counts - 8 * shares) <= 1) | (counts == capacity))


@pytest.mark.parametrize("level", ["dataset", "class"])
def test_mix_csi_with_the_mix_seed_reproduces_the_selection(selected, level):
    from fastcsi.train.pretrain import PretrainSettings, draw_training_data, resolve_data_source

    _, outs = selected
    settings, plan = resolve_data_source(PretrainSettings(data=[], samples=6, mix=f"csi:{outs[level] / 'mix.json'}"))
    datasets = [open_dataset(p) for p in settings.data]
    train, val, _ = draw_training_data(settings, plan, datasets, n_val=2, seed=1)  # the fixture's --mix-seed
    chosen = json.loads((outs[level] / "pretrain_set.json").read_text())
    for k, entry in enumerate(chosen["datasets"]):
        assert train[train[:, 0] == k, 1].tolist() == entry["indices"]
    assert not set(map(tuple, val.tolist())) & set(map(tuple, train.tolist()))  # validation is held out
