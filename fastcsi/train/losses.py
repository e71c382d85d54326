"""Losses and error sums, written as *sums* plus counts so that data-parallel ranks can add them up
and divide once by the global count: the result is then independent of how a batch is split.

- energy: MAE of the normalised energy (JMP's ``mae``), per structure.
- forces: L2-MAE, the Euclidean norm of each atom's normalised force error averaged over atoms
  (JMP's ``l2mae``). Structures without force labels (ANI-1 in a pretraining mixture) add nothing to
  the force loss, its counts included: the mask is per structure, as in JMP's multi-task loss.
- scalar targets: MAE of the standardised target.
Reported errors are in physical units: energy MAE (eV, per structure), force MAE (eV/Å, per
component, the convention of rMD17/MD22 tables), target MAE (native unit).
"""
from __future__ import annotations

import numpy as np
import torch

from fastcsi.train.normalization import Normalizer, element_counts


def normalized_labels(structures, normalizer: Normalizer, targets) -> dict:
    """float64 numpy labels in the network's unit-scale space, computed before any cast to float32
    (a molecule's total energy, ~-4e3 eV, loses its meV digits in float32)."""
    out = {}
    if "energy" in targets:
        energies = np.array([s.energy for s in structures], dtype=np.float64)
        ref = element_counts([s.atomic_numbers for s in structures]) @ normalizer.linear_reference
        out["energy"] = (energies - ref) / normalizer.energy_std
    if "forces" in targets:
        forces = [s.forces if s.forces is not None else np.zeros((s.n_atoms, 3)) for s in structures]
        out["forces"] = np.concatenate(forces) / normalizer.force_std if structures else np.zeros((0, 3))
        if any(s.forces is None for s in structures):
            # 1 for the atoms of structures with force labels, 0 for the rest (only when needed)
            out["forces_mask"] = np.concatenate([np.full(s.n_atoms, float(s.forces is not None)) for s in structures])
    for name in targets:
        if name not in ("energy", "forces"):
            values = np.array([float(s.targets[name]) for s in structures], dtype=np.float64)
            out[name] = (values - normalizer.target_mean[name]) / normalizer.target_std[name]
    return out


def loss_terms(pred: dict, labels: dict, normalizer: Normalizer, targets) -> dict:
    """Per-batch sums: ``{name: (loss_sum, abs_error_sum_physical, loss_count, error_count)}``.

    ``pred`` is :class:`NormalizedModel` output; ``labels`` tensors from :func:`normalized_labels`.
    """
    terms = {}
    for name in targets:
        if name == "forces":
            diff = pred["forces_norm"].to(torch.float32) - labels["forces"]
            n_labelled = diff.shape[0]
            if "forces_mask" in labels:
                diff = diff * labels["forces_mask"].unsqueeze(-1)
                n_labelled = int(labels["forces_mask"].sum())
            loss_sum = torch.linalg.vector_norm(diff, dim=-1).sum()
            abs_sum = diff.detach().abs().sum().to(torch.float64) * normalizer.force_std
            terms[name] = (loss_sum, abs_sum, n_labelled, 3 * n_labelled)
        else:
            diff = pred[name + "_norm"].to(torch.float32) - labels[name]
            std = normalizer.energy_std if name == "energy" else normalizer.target_std[name]
            loss_sum = diff.abs().sum()
            abs_sum = diff.detach().abs().sum().to(torch.float64) * std
            terms[name] = (loss_sum, abs_sum, diff.shape[0], diff.shape[0])
    return terms


def combine(terms: dict, weights: dict, global_counts: dict):
    """Weighted loss: sum_t w_t * loss_sum_t / global_count_t (a mean over the *global* batch)."""
    total = None
    for name, (loss_sum, _, _, _) in terms.items():
        count = max(global_counts.get(name, 0), 1)
        part = weights.get(name, 1.0) * loss_sum / count
        total = part if total is None else total + part
    return total
