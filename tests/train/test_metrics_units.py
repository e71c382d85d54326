"""Training logs say their units (issue 25): epoch lines and metrics.csv show MAEs in meV and meV/Å,
the convention of results.json, with the unit in the label; the learning curve too."""
import csv

import pytest
import torch

from fastcsi.train.config import TrainConfig
from fastcsi.train.finetune import plot_learning_curve
from fastcsi.train.loop import Trainer
from fastcsi.train.metrics import format_epoch_line, labelled_row, mae_unit
from fastcsi.train.normalization import NormalizedModel, Normalizer

from train_toy import PairModel, lj_structures


def test_epoch_lines_and_metrics_csv_are_in_mev_with_units(tmp_path):
    structures = lj_structures(12, seed=3)
    torch.manual_seed(0)
    model = NormalizedModel(PairModel(), Normalizer.fit(structures[:9]))
    lines = []
    trainer = Trainer(model, TrainConfig(epochs=2, batch_size=4, lr=3e-3), structures[:9], structures[9:],
                      ("energy", "forces"), tmp_path, progress=False, log=lines.append)
    trainer.fit()
    epoch_lines = [line for line in lines if line.startswith("epoch ")]
    assert len(epoch_lines) == 2
    last = trainer.metrics.rows[-1]  # in eV, as the loop computes
    assert f"val energy MAE {last['val_energy_mae'] * 1000:.4g} meV" in epoch_lines[-1]
    assert f"val forces MAE {last['val_forces_mae'] * 1000:.4g} meV/Å" in epoch_lines[-1]
    with open(tmp_path / "metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert {"val_energy_mae_meV", "val_forces_mae_meV_per_A", "train_forces_mae_meV_per_A"} <= set(rows[0])
    assert "val_energy_mae" not in rows[0]
    assert float(rows[-1]["val_energy_mae_meV"]) == pytest.approx(last["val_energy_mae"] * 1000)
    assert mae_unit("energy")[0] == "meV" and mae_unit("forces")[0] == "meV/Å"  # results.json's convention


def test_native_targets_are_labelled_native():
    row = {"epoch": 1, "step": 3, "train_loss": 0.5, "train_structures_per_s": 9.0, "val_U0_mae": 0.25}
    assert labelled_row(row)["val_U0_mae_native"] == 0.25
    assert "val U0 MAE 0.25 native" in format_epoch_line(row)


def test_learning_curve_labels_its_unit(tmp_path, monkeypatch):
    history = [{"epoch": e, "train_loss": 1.0 / e, "val_forces_mae": 0.1 / e} for e in (1, 2, 3)]
    labels = {}
    from matplotlib.axes import Axes

    original = Axes.set_ylabel
    monkeypatch.setattr(Axes, "set_ylabel", lambda ax, text, **kw: labels.setdefault(text, ax) and original(ax, text, **kw))
    plot_learning_curve(history, tmp_path / "learning_curve.png", "forces", title="t")
    assert "validation forces MAE (meV/Å)" in labels
    ticks = labels["train loss (normalised)"].get_xticks()
    assert all(float(t).is_integer() for t in ticks)  # no fractional epochs
    assert (tmp_path / "learning_curve.png").read_bytes()[:4] == b"\x89PNG"
