"""Target normalisation, fitted on the training sample only.

Energies: a per-element linear reference (least squares of energy on element counts, as JMP does
per pretraining dataset) is subtracted, and the residual is divided by its standard deviation.
The model therefore learns a unit-scale *interaction* energy; the reference, not the network,
carries the large per-element offsets (tens of thousands of eV for molecules).
Forces: divided by their root mean square component (the mean is zero by symmetry).
Graph-level scalar targets: (y - mean) / std.

Least squares uses ``numpy.linalg.lstsq`` (minimum-norm solution), so a single-molecule dataset
(every row of the count matrix equal, rank 1) still gets a reference equal to its mean energy.
Cost: O(S * Z^2) for S structures and Z distinct elements.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from fastcsi.errors import FastCSIError

MAX_Z = 119


def element_counts(numbers_per_structure) -> np.ndarray:
    """(S, 119) float64 matrix of element counts."""
    counts = np.zeros((len(numbers_per_structure), MAX_Z), dtype=np.float64)
    for row, numbers in enumerate(numbers_per_structure):
        np.add.at(counts[row], np.asarray(numbers, dtype=np.int64), 1.0)
    return counts


def fit_linear_reference(numbers_per_structure, energies) -> np.ndarray:
    """Per-element energies ``ref`` (119,) minimising sum_s (E_s - counts_s . ref)^2."""
    energies = np.asarray(energies, dtype=np.float64).reshape(-1)
    if len(numbers_per_structure) != energies.shape[0]:
        raise FastCSIError("linear reference: number of energies and structures differ")
    if energies.shape[0] == 0:
        raise FastCSIError("linear reference: no labelled structures in the training sample")
    if not np.isfinite(energies).all():
        raise FastCSIError("linear reference: training energies contain NaN or inf")
    counts = element_counts(numbers_per_structure)
    present = np.flatnonzero(counts.sum(0) > 0)
    coef, *_ = np.linalg.lstsq(counts[:, present], energies, rcond=None)
    ref = np.zeros(MAX_Z, dtype=np.float64)
    ref[present] = coef
    return ref


@dataclass
class Normalizer:
    """Scales that map physical targets to the unit-scale quantities the network predicts."""

    linear_reference: np.ndarray = field(default_factory=lambda: np.zeros(MAX_Z))  # eV per element
    energy_std: float = 1.0  # eV, of the residual after the reference
    force_std: float = 1.0  # eV/Å, RMS force component
    target_mean: dict = field(default_factory=dict)  # name -> native unit
    target_std: dict = field(default_factory=dict)

    @classmethod
    def fit(cls, structures, targets=("energy", "forces"), per_atom_targets=()) -> "Normalizer":
        """Fit on ``structures`` (the training sample). ``per_atom_targets``: graph targets whose
        prediction is a mean over atoms (intensive) - normalised the same way."""
        norm = cls()
        numbers = [s.atomic_numbers for s in structures]
        if "energy" in targets:
            energies = [s.energy for s in structures]
            if any(e is None for e in energies):
                raise FastCSIError("training sample has structures without an energy label")
            norm.linear_reference = fit_linear_reference(numbers, energies)
            residual = np.asarray(energies) - element_counts(numbers) @ norm.linear_reference
            norm.energy_std = _safe_std(residual)
        if "forces" in targets:
            # structures without force labels are masked out of the force loss (losses.py): the scale
            # comes from those that have them
            labelled = [s.forces for s in structures if s.forces is not None]
            forces = np.concatenate(labelled) if labelled else np.zeros((0, 3))
            norm.force_std = _safe_std(forces, rms=True)
        for name in targets:
            if name in ("energy", "forces"):
                continue
            values = []
            for s in structures:
                if name not in s.targets:
                    raise FastCSIError(f"structure {s.id!r} has no target {name!r}")
                values.append(float(s.targets[name]))
            values = np.asarray(values)
            if not np.isfinite(values).all():
                raise FastCSIError(f"target {name!r} has NaN or inf values in the training sample")
            norm.target_mean[name] = float(values.mean()) if len(values) else 0.0
            norm.target_std[name] = _safe_std(values - norm.target_mean[name], rms=True)
        return norm

    def to_dict(self) -> dict:
        nz = np.flatnonzero(self.linear_reference)
        return {
            "linear_reference": {int(z): float(self.linear_reference[z]) for z in nz},
            "energy_std": float(self.energy_std),
            "force_std": float(self.force_std),
            "target_mean": dict(self.target_mean),
            "target_std": dict(self.target_std),
        }

    @classmethod
    def from_dict(cls, values: dict) -> "Normalizer":
        ref = np.zeros(MAX_Z)
        for z, v in values.get("linear_reference", {}).items():
            ref[int(z)] = float(v)
        return cls(ref, float(values["energy_std"]), float(values["force_std"]),
                   dict(values.get("target_mean", {})), dict(values.get("target_std", {})))


def _safe_std(values, rms: bool = False) -> float:
    values = np.asarray(values, dtype=np.float64)
    if values.size == 0:
        return 1.0
    std = float(np.sqrt(np.mean(values**2))) if rms else float(values.std())
    # A constant target (one structure, or one frame repeated) would divide by zero.
    return std if std > 1e-12 else 1.0


class NormalizedModel(torch.nn.Module):
    """Wrap a backbone that predicts unit-scale outputs so that it returns physical ones.

    ``backbone(batch)`` -> {"energy": (B,), "forces": (N, 3)}; ``energy`` is read as the normalised
    residual energy, so physical energy = energy * energy_std + counts . linear_reference. With
    gradient forces (forces = -dE_raw/dpos) the physical forces scale with energy_std; with direct
    forces they scale with force_std. Graph targets are read from the same scalar head
    ("energy"), divided by the atom count when ``reduction == "mean"``, then de-standardised.
    """

    def __init__(self, backbone: torch.nn.Module, normalizer: Normalizer, gradient_forces: bool = False,
                 target: str = "energy", reduction: str = "sum"):
        super().__init__()
        self.backbone = backbone
        self.gradient_forces = bool(gradient_forces)
        self.target = target
        self.reduction = reduction
        self.normalizer = normalizer
        self.register_buffer("linear_reference", torch.as_tensor(normalizer.linear_reference, dtype=torch.float64))

    def forward(self, batch) -> dict:
        raw = self.backbone(batch)
        norm = self.normalizer
        out = {}
        energy_raw = raw["energy"].reshape(-1)
        if self.target == "energy":
            ref = self.linear_reference.to(energy_raw.device)[batch.atomic_numbers]
            per_structure = torch.zeros(batch.num_structures, dtype=ref.dtype, device=ref.device)
            per_structure.index_add_(0, batch.batch, ref)
            out["energy"] = energy_raw.to(torch.float64) * norm.energy_std + per_structure
            out["energy_norm"] = energy_raw
        else:
            value = energy_raw
            if self.reduction == "mean":
                value = value / batch.natoms.to(value.dtype)
            out[self.target + "_norm"] = value
            out[self.target] = value.to(torch.float64) * norm.target_std[self.target] + norm.target_mean[self.target]
        if raw.get("forces") is not None:
            # Forces in units of force_std; gradient forces inherit the energy's scale.
            to_norm = norm.energy_std / norm.force_std if self.gradient_forces else 1.0
            out["forces_norm"] = raw["forces"] * to_norm
            out["forces"] = out["forces_norm"] * norm.force_std
        return out
