"""``fastcsi evaluate``: a trained model against the labels of a dataset.

Per target, in the units ``fastcsi finetune`` reports (energy meV per structure, also meV/atom;
forces meV/Å per component; graph-level targets native): MAE and RMSE; force MAE per element
(components of that element's atoms); parity plots (predicted vs reference) as PNG; everything
in ``metrics.json`` with the model, data, settings and versions. On a fine-tuning run's test split
the MAEs are the ``test_mae`` of its ``results.json``.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from fastcsi.errors import FastCSIError
from fastcsi.utils import atomic_write, pyplot, save_figure, versions


def parse_eval_targets(spec, model) -> tuple:
    """``energy,forces`` / a target name; default: what the model was trained on."""
    if spec is None:
        names = tuple(t for t in model.trained_targets if t in model.properties) or model.properties[:1]
    else:
        names = tuple(t.strip() for t in str(spec).split(",") if t.strip())
        if not names:
            raise FastCSIError("--target is empty; use energy,forces or a target name")
    if "stress" in names:
        raise FastCSIError("--target stress: datasets carry no stress labels fastcsi reads; evaluate energy, forces "
                           "or a graph-level target")
    return model.check_properties(names)


def _label(structure, target):
    if target == "energy":
        return structure.energy
    if target == "forces":
        return structure.forces
    return structure.targets.get(target)


def evaluate(model, data, outdir, targets=None, batch_size: int = 32, progress: bool = True,
             data_options: dict | None = None) -> dict:
    """Compare ``model`` with the labels of ``data``; write ``metrics.json`` and ``parity_*.png``
    to ``outdir``; return the metrics record."""
    from fastcsi.data import open_dataset
    from fastcsi.data.base import chemical_symbols
    from fastcsi.inference.predict import iter_predictions
    from fastcsi.train.metrics import mae_unit

    targets = parse_eval_targets(targets, model)
    dataset = open_dataset(data, **(data_options or {}))
    if len(dataset) == 0:
        raise FastCSIError(f"{data}: no structures to evaluate")
    pred = {t: [] for t in targets}
    ref = {t: [] for t in targets}
    n_atoms, numbers = [], []
    for i, structure, prediction in iter_predictions(model, dataset, targets, batch_size, progress, desc="evaluate"):
        for t in targets:
            label = _label(structure, t)
            if label is None:
                raise FastCSIError(f"{data}: structure {i} has no {t!r} label to evaluate against "
                                   f"(choose another --target)")
            pred[t].append(prediction[t])
            ref[t].append(label)
        n_atoms.append(structure.n_atoms)
        numbers.append(structure.atomic_numbers)
    n_atoms = np.asarray(n_atoms, dtype=np.float64)
    metrics, per_element, plots = {}, {}, {}
    outdir = Path(outdir)
    for t in targets:
        unit, factor = mae_unit(t)
        if t == "forces":
            p, r = np.concatenate(pred[t]), np.concatenate(ref[t])
            z = np.repeat(np.concatenate(numbers), 3)
            err = (p - r).reshape(-1)
            symbols = chemical_symbols()
            for element in np.unique(z):
                e = err[z == element]
                per_element[symbols[int(element)]] = {"mae": float(np.abs(e).mean() * factor),
                                                      "rmse": float(np.sqrt((e**2).mean()) * factor),
                                                      "atoms": int(e.size // 3), "unit": unit}
        else:
            p, r = np.asarray(pred[t], dtype=np.float64), np.asarray(ref[t], dtype=np.float64)
            err = p - r
        metrics[t] = _errors(err, factor, unit)
        if t == "energy":
            metrics["energy_per_atom"] = _errors(err / n_atoms, factor, unit + "/atom")
        plots[t] = str(_parity_plot(p.reshape(-1), r.reshape(-1), t, outdir / f"parity_{t}.png", metrics[t]))
    record = {
        "kind": "fastcsi-evaluate",
        "metrics": metrics,
        "forces_per_element": per_element,
        "plots": plots,
        "data": {"path": str(Path(data).resolve()), "format": dataset.format, "structures": len(dataset),
                 "atoms": int(n_atoms.sum()), "fingerprint": getattr(dataset, "fingerprint", None),
                 "units_note": dataset.units_note, "options": dict(data_options or {})},
        "model": model.describe(),
        "settings": {"targets": list(targets), "batch_size": batch_size},
        "versions": versions(),
    }
    with atomic_write(outdir / "metrics.json") as fh:
        json.dump(record, fh, indent=1, default=str)
    return record


def _errors(err, factor: float, unit: str) -> dict:
    err = np.asarray(err, dtype=np.float64).reshape(-1)
    return {"mae": float(np.abs(err).mean() * factor), "rmse": float(np.sqrt((err**2).mean()) * factor),
            "count": int(err.size), "unit": unit}


PLOT_UNITS = {"energy": "eV", "forces": "eV/Å"}


def _parity_plot(pred, ref, target: str, path: Path, metric: dict) -> Path:
    """Predicted vs reference; total energies are shown relative to the mean reference energy
    (-97,080 eV with a spread of 1 eV would otherwise need offset tick labels that collide)."""
    plt = pyplot()

    unit = PLOT_UNITS.get(target, "native unit")
    shift = float(np.mean(ref)) if ref.size else 0.0
    spread = float(ref.max() - ref.min()) if ref.size else 0.0
    if abs(shift) <= 10 * max(spread, 1e-12):
        shift = 0.0  # forces, per-atom or referenced energies: shown as they are
    ref, pred = ref - shift, pred - shift
    fig, ax = plt.subplots(figsize=(4.8, 4.8))
    ax.scatter(ref, pred, s=4, alpha=0.5, linewidths=0)
    lo, hi = float(min(ref.min(), pred.min())), float(max(ref.max(), pred.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_aspect("equal", adjustable="datalim")
    ax.ticklabel_format(useOffset=False)
    relative = f", relative to {shift:,.6g}" if shift else ""
    ax.set_xlabel(f"reference {target} ({unit}{relative})")
    ax.set_ylabel(f"predicted {target} ({unit}{relative})")
    ax.set_title(f"{target}: MAE {metric['mae']:.4g} {metric['unit']}, RMSE {metric['rmse']:.4g} {metric['unit']}",
                 fontsize=9)
    save_figure(fig, path, dpi=100)
    return path
