"""What `select --optimize-mix --budget` drew, said as drawn, and pretraining on it (issue 25, items 7-9):
an upstream without forces is masked out of the force loss (and select counts it), validation follows
the mixture's weights, and the printout shows the drawn shares, the capped upstreams and a best
single that is the ranking's statistic (the mean over seeds)."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from fastcsi.cli import cli
from fastcsi.pipeline import SelectSettings
from fastcsi.pipeline.mix import MixSettings, format_mix
from fastcsi.pipeline.report import display_names
from fastcsi.pipeline.select import run_select
from fastcsi.train.losses import loss_terms, normalized_labels
from fastcsi.train.normalization import Normalizer
from fastcsi.train.pretrain import held_out

sys.path.insert(0, str(Path(__file__).parents[1] / "train"))
from train_toy import lj_structures  # noqa: E402

FAST = ["--model", "gemnet-oc-tiny", "--batch-size", "4", "--threads", "1", "--quiet", "--epochs", "1"]
BUDGET = 20


def _write(path, structures, forces=True):
    from ase.calculators.singlepoint import SinglePointCalculator
    from ase.io import write

    frames = []
    for s in structures:
        atoms = s.to_ase()
        atoms.calc = SinglePointCalculator(atoms, energy=s.energy, **({"forces": s.forces} if forces else {}))
        frames.append(atoms)
    write(path, frames, format="extxyz")
    return path


@pytest.fixture(scope="module")
def drawn(tmp_path_factory, extractor):
    """Upstreams with forces, without forces (as ANI-1) and a small one like the downstream (which
    the budget uses up); select with two seeds and a budget."""
    root = tmp_path_factory.mktemp("drawn")
    paths = {"down": _write(root / "down.extxyz", lj_structures(16, seed=3, min_atoms=4, max_atoms=6)),
             "forces": _write(root / "forces.extxyz", lj_structures(16, seed=1, min_atoms=3, max_atoms=5)),
             "no_forces": _write(root / "no_forces.extxyz", lj_structures(16, seed=2, min_atoms=5, max_atoms=7),
                                 forces=False),
             "small": _write(root / "small.extxyz", lj_structures(3, seed=5, min_atoms=4, max_atoms=6))}
    outdir = root / "select"
    result = run_select(paths["down"], [paths["forces"], paths["no_forces"], paths["small"]],
                        SelectSettings(samples=None, seeds=(0, 1), batch_size=8), outdir=outdir,
                        extractor=extractor, progress=False,
                        mix=MixSettings(level="dataset", budget=BUDGET, seed=1))
    return paths, outdir, result


def _chosen(outdir):
    selection = json.loads((outdir / "pretrain_set.json").read_text())
    return {Path(e["given_as"]).stem: e for e in selection["datasets"]}


def test_select_counts_the_chosen_structures_without_forces(drawn):
    _, outdir, result = drawn
    chosen = _chosen(outdir)
    assert chosen["no_forces"]["chosen"] > 0, "the fixture must draw from the upstream without forces"
    assert chosen["no_forces"]["without_forces"] == chosen["no_forces"]["chosen"]
    assert chosen["forces"]["without_forces"] == 0 and chosen["no_forces"]["without_forces_exact"]
    text = format_mix(result["mix"])
    assert f"{chosen['no_forces']['chosen']} of the {BUDGET} chosen structures have no force labels" in text


def test_the_printout_shows_what_was_drawn_and_what_ran_out(drawn):
    _, outdir, result = drawn
    chosen = _chosen(outdir)
    lines = {line.split()[0]: line for line in format_mix(result["mix"]).splitlines()[1:] if line.startswith("  ")}
    for name, entry in chosen.items():
        line = next(text for key, text in lines.items() if key.startswith(name))
        assert f" {entry['chosen']} ({entry['chosen'] / BUDGET:5.1%})" in line, line
        assert ("capped: all" in line) == (entry["chosen"] == entry["structures"]), line
    weights = result["mix"]["weights"]
    small = next(label for label in weights if Path(label).stem == "small")
    assert chosen["small"]["chosen"] == 0 and weights[small] > 0.005
    assert " 0 ( 0.0%)" in lines["small.extxyz"]  # a share too small to draw a structure says so


def test_an_upstream_the_budget_uses_up_is_said_to_be_capped(drawn, extractor, tmp_path):
    paths, _, _ = drawn
    result = run_select(paths["down"], [paths["forces"], paths["no_forces"], paths["small"]],
                        SelectSettings(samples=None, seeds=(0, 1), batch_size=8), outdir=tmp_path,
                        extractor=extractor, progress=False, mix=MixSettings(level="dataset", budget=30, seed=1))
    forces_line = next(line for line in format_mix(result["mix"]).splitlines()
                       if line.split()[0] == "forces.extxyz")
    assert result["mix"]["drawn"][str(paths["forces"])]["chosen"] == 16
    assert "16 (53.3%)  capped: all 16 of 16 structures" in forces_line, forces_line


def test_best_single_is_the_rankings_mean_over_seeds(drawn):
    _, _, result = drawn
    ranking = {Path(row["upstream"]).stem: row for row in result["ranking"]}
    best = result["mix"]["seed_means"]["best_single"]
    top = min(ranking.values(), key=lambda row: row["csi"])
    assert best["upstream"] == top["upstream"]
    assert best["csi"] == pytest.approx(top["csi"], rel=1e-9)
    text = format_mix(result["mix"])
    assert f"best single ({display_names([top['upstream']])[0]}) {top['csi']:.4g}" in text
    assert "CSI (mean over 2 seeds, as the ranking)" in text


def test_pretraining_on_the_selection_masks_forces_and_validates_by_its_weights(drawn, tmp_path):
    _, outdir, _ = drawn
    chosen = _chosen(outdir)
    result = CliRunner().invoke(cli, ["pretrain", "--from-selection", str(outdir / "pretrain_set.json"),
                                      "--val-samples", "6", "-o", str(tmp_path / "pre"), *FAST])
    assert result.exit_code == 0, result.output
    assert "have no force labels: their force loss is masked" in result.output
    record = json.loads((tmp_path / "pre" / "pretrain.json").read_text())
    budget = record["budget"]
    assert budget["training_without_forces"] == chosen["no_forces"]["chosen"]
    val = {Path(p).stem: n for p, n in budget["validation_per_dataset"].items()}
    # by the trained shares (small: weight 0, none), each capped by what training left of it
    left = {name: entry["structures"] - entry["chosen"] for name, entry in chosen.items()}
    assert chosen["small"]["chosen"] == 0 and val["small"] == 0 and sum(val.values()) == 6
    wanted_forces = round(6 * chosen["forces"]["chosen"] / BUDGET)
    assert val["forces"] == min(wanted_forces, left["forces"]) and val["no_forces"] == 6 - val["forces"]


def _without_forces(s):
    return type(s)(s.atomic_numbers, s.positions, energy=s.energy, forces=None, id=s.id)


def test_validation_without_force_labels_reports_and_selects_on_energy(tmp_path):
    from fastcsi.model import build_model
    from fastcsi.train.config import TrainConfig
    from fastcsi.train.loop import Trainer
    from fastcsi.train.normalization import NormalizedModel

    train = lj_structures(4, seed=8)
    val = [_without_forces(s) for s in lj_structures(2, seed=9)]
    model = NormalizedModel(build_model("gemnet-oc-tiny", direct_forces=True), Normalizer.fit(train))
    trainer = Trainer(model, TrainConfig(epochs=1, batch_size=2, amp=False, max_threads=1), train, val,
                      ("energy", "forces"), tmp_path, device="cpu", progress=False, log=lambda *a, **k: None)
    assert trainer.metric_name == "energy"  # not a force error of 0 that never changes
    assert set(trainer.evaluate(val)) == {"energy"} and set(trainer.evaluate(train)) == {"energy", "forces"}


def test_the_force_loss_masks_structures_without_forces():
    structures = lj_structures(3, seed=7)
    normalizer = Normalizer.fit(structures)
    n_atoms = [s.n_atoms for s in structures]
    pred = {"energy_norm": torch.zeros(3), "forces_norm": torch.randn(sum(n_atoms), 3)}

    def terms(group, forces_pred):
        labels = {k: torch.as_tensor(v, dtype=torch.float32) for k, v in
                  normalized_labels(group, normalizer, ("energy", "forces")).items()}
        return loss_terms({"energy_norm": torch.zeros(len(group)), "forces_norm": forces_pred}, labels, normalizer,
                          ("energy", "forces"))["forces"]

    unlabelled = list(structures)
    unlabelled[1] = _without_forces(structures[1])
    masked = terms(unlabelled, pred["forces_norm"])
    cut = np.cumsum([0, *n_atoms])
    only_labelled = terms([structures[0], structures[2]],
                          torch.cat([pred["forces_norm"][cut[0]:cut[1]], pred["forces_norm"][cut[2]:cut[3]]]))
    assert masked[2] == only_labelled[2] == n_atoms[0] + n_atoms[2]  # atoms counted: labelled ones only
    assert float(masked[0]) == pytest.approx(float(only_labelled[0]), rel=1e-6)
    assert float(masked[1]) == pytest.approx(float(only_labelled[1]), rel=1e-6)


class _Sized:
    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n


def test_validation_is_drawn_by_the_weights_and_skips_zero_weight_upstreams():
    datasets = [_Sized(50), _Sized(50), _Sized(1000)]
    train = np.array([[0, i] for i in range(10)] + [[1, i] for i in range(30)])
    val = held_out(datasets, train, 20, seed=0, weights=[0.25, 0.75, 0.0])
    per = np.bincount(val[:, 0], minlength=3)
    assert per.tolist() == [5, 15, 0]  # not mostly the big upstream nobody trained on
    assert not set(map(tuple, val.tolist())) & set(map(tuple, train.tolist()))
    # an upstream with nothing left hands its part on; with no weighted one left, anything held out serves
    used_up = np.array([[0, i] for i in range(50)])
    assert np.bincount(held_out(datasets, used_up, 8, 0, [0.5, 0.5, 0])[:, 0], minlength=3).tolist() == [0, 8, 0]
    assert len(held_out(datasets, used_up, 8, 0, [1.0, 0, 0])) == 8
