"""Schedules, EMA, splits, normalisation and losses: the loop's parts, each against a plain oracle."""
import math

import numpy as np
import pytest
import torch

from fastcsi.errors import FastCSIError
from fastcsi.train.config import TrainConfig, recipe_for
from fastcsi.train.ema import EMA
from fastcsi.train.losses import combine, loss_terms, normalized_labels
from fastcsi.train.normalization import NormalizedModel, Normalizer, element_counts, fit_linear_reference
from fastcsi.train.schedule import warmup_cosine_factor
from fastcsi.train.splits import parse_split, split_indices

from train_toy import OFFSETS, PairModel, lj_structures


def test_warmup_cosine_endpoints_and_monotone_decay():
    f = [warmup_cosine_factor(s, 100, 10, 0.2, 0.1) for s in range(120)]
    assert f[0] == pytest.approx(0.2)
    assert f[10] == pytest.approx(1.0)
    assert f[5] == pytest.approx(0.6)
    assert f[100] == pytest.approx(0.1) and f[119] == pytest.approx(0.1)
    assert f[55] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert warmup_cosine_factor(0, 1, 0, 0.2, 0.1) == pytest.approx(1.0)  # no warm-up: start at full lr


def test_linear_reference_recovers_element_energies():
    structures = lj_structures(40, seed=1)
    ref = fit_linear_reference([s.atomic_numbers for s in structures], [s.energy for s in structures])
    for z, e in OFFSETS.items():
        assert ref[z] == pytest.approx(e, abs=0.3)  # LJ interaction energy is small beside the offsets
    assert np.count_nonzero(ref) == 3


def test_linear_reference_single_composition_equals_mean():
    # rank-deficient count matrix (one molecule): minimum-norm solution still reproduces the mean
    numbers = [np.array([6, 6, 8, 1, 1, 1, 1, 1, 1])] * 5
    energies = np.array([-4209.5, -4209.6, -4209.4, -4209.55, -4209.45])
    ref = fit_linear_reference(numbers, energies)
    assert (element_counts(numbers) @ ref)[0] == pytest.approx(energies.mean(), abs=1e-8)


def test_linear_reference_rejects_nan_and_empty():
    with pytest.raises(FastCSIError):
        fit_linear_reference([np.array([1])], [np.nan])
    with pytest.raises(FastCSIError):
        fit_linear_reference([], [])


def test_normalizer_round_trip_and_constant_target():
    structures = lj_structures(10, seed=2)
    norm = Normalizer.fit(structures, targets=("energy", "forces", "gap"))
    again = Normalizer.from_dict(norm.to_dict())
    assert np.allclose(again.linear_reference, norm.linear_reference)
    assert again.energy_std == norm.energy_std and again.target_std == norm.target_std
    one = Normalizer.fit(structures[:1], targets=("energy",))
    assert one.energy_std == 1.0  # a single structure has no spread: no division by zero


@pytest.mark.parametrize("gradient", [False, True])
def test_normalized_model_returns_physical_units(gradient):
    structures = lj_structures(6, seed=3)
    norm = Normalizer.fit(structures)
    from fastcsi.data import collate

    torch.manual_seed(0)
    backbone = PairModel(gradient_forces=gradient, dropout=0.0).double()
    model = NormalizedModel(backbone, norm, gradient_forces=gradient).eval()
    batch = collate(structures, dtype=torch.float64)
    raw = backbone(batch)
    out = model(batch)
    ref = element_counts([s.atomic_numbers for s in structures]) @ norm.linear_reference
    assert torch.allclose(out["energy"], raw["energy"] * norm.energy_std + torch.as_tensor(ref))
    force_scale = norm.energy_std if gradient else norm.force_std
    assert torch.allclose(out["forces"], raw["forces"] * force_scale)
    # loss on perfect predictions is zero
    labels = {k: torch.as_tensor(v) for k, v in normalized_labels(structures, norm, ("energy", "forces")).items()}
    perfect = {"energy_norm": labels["energy"], "forces_norm": labels["forces"]}
    terms = loss_terms(perfect, labels, norm, ("energy", "forces"))
    assert float(combine(terms, {}, {"energy": 6, "forces": 30})) == pytest.approx(0.0, abs=1e-6)


def test_loss_is_global_mean_and_split_invariant():
    norm = Normalizer(energy_std=2.0, force_std=0.5)
    pred = {"energy_norm": torch.tensor([1.0, 2.0, 3.0]), "forces_norm": torch.tensor([[3.0, 4.0, 0.0], [0, 0, 0]])}
    labels = {"energy": torch.zeros(3), "forces": torch.zeros(2, 3)}
    terms = loss_terms(pred, labels, norm, ("energy", "forces"))
    loss = combine(terms, {"energy": 1.0, "forces": 10.0}, {"energy": 3, "forces": 2})
    assert float(loss) == pytest.approx(6 / 3 + 10 * 5 / 2)
    assert float(terms["energy"][1]) == pytest.approx(6 * 2.0)  # physical abs error (eV)
    assert float(terms["forces"][1]) == pytest.approx(7 * 0.5)  # per component, eV/Å
    # two halves with global counts add up to the whole
    a = combine(loss_terms({k: v[:1] for k, v in pred.items()}, {k: v[:1] for k, v in labels.items()}, norm,
                           ("energy", "forces")), {"energy": 1.0, "forces": 10.0}, {"energy": 3, "forces": 2})
    b = combine(loss_terms({k: v[1:] for k, v in pred.items()}, {k: v[1:] for k, v in labels.items()}, norm,
                           ("energy", "forces")), {"energy": 1.0, "forces": 10.0}, {"energy": 3, "forces": 2})
    assert float(a + b) == pytest.approx(float(loss))


def test_ema_matches_closed_form_and_swaps_back():
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = EMA(model, 0.9, warmup=False)
    warm = EMA(model, 0.9)
    for value in (1.0, 2.0, 3.0):
        with torch.no_grad():
            model.weight.fill_(value)
        ema.update(model)
        warm.update(model)
    expected = ((0 * 0.9 + 0.1 * 1) * 0.9 + 0.1 * 2) * 0.9 + 0.1 * 3
    assert float(ema.shadow["weight"][0, 0]) == pytest.approx(expected)
    d = [1 / 10, 2 / 11, 3 / 12]  # warm-up decays (1 + t) / (10 + t), all below 0.9
    assert float(warm.shadow["weight"][0, 0]) == pytest.approx(((0 * d[0] + (1 - d[0]) * 1) * d[1] + (1 - d[1]) * 2) * d[2] + (1 - d[2]) * 3)
    assert EMA(model, 0.99).current_decay() == pytest.approx(0.1)
    with ema.applied(model):
        assert float(model.weight[0, 0].detach()) == pytest.approx(expected)
    assert float(model.weight[0, 0].detach()) == 3.0


def test_splits_counts_fractions_rest_and_errors():
    assert parse_split("950,50,rest", 1100) == (950, 50, 100)
    assert parse_split("0.8,0.1,0.1", 100) == (80, 10, 10)
    assert parse_split("0.8,0.1,0.1", 7) == (5, 1, 1)
    parts = split_indices(100, "60,20,rest", seed=1)
    allidx = np.concatenate(list(parts.values()))
    assert len(np.unique(allidx)) == 100
    assert np.array_equal(split_indices(100, "60,20,rest", seed=1)["train"], parts["train"])
    assert not np.array_equal(split_indices(100, "60,20,rest", seed=2)["train"], parts["train"])
    for bad in ("950,50", "a,b,c", "rest,rest,1", "950,50,rest"):
        with pytest.raises(FastCSIError):
            parse_split(bad, 100)


def test_config_validation_and_recipes():
    with pytest.raises(FastCSIError):
        TrainConfig(epochs=0)
    with pytest.raises(FastCSIError):
        TrainConfig(clip_algorithm="sometimes")
    assert TrainConfig.from_dict(TrainConfig(lr=1e-3).to_dict()).lr == 1e-3
    assert recipe_for(None, ["energy", "forces"]).name == "rmd17"
    assert recipe_for(None, ["band_gap"]).reduction == "mean"
    with pytest.raises(FastCSIError):
        recipe_for("nope", ["energy"])
