"""Metric logging: one CSV row per epoch (and TensorBoard scalars when it is installed).

Training works in eV and eV/Å; what a person reads (the epoch lines, ``metrics.csv``,
``results.json``) shows errors in one convention, meV and meV/Å, with the unit in the label
(``val_forces_mae_meV_per_A``). Scalar targets (QM9's U0, ...) keep the file's units: "native".
"""
from __future__ import annotations

import csv
import re
from pathlib import Path

from fastcsi.utils import atomic_write

# target -> (unit shown, factor from the training unit)
MAE_UNITS = {"energy": ("meV", 1000.0), "forces": ("meV/Å", 1000.0)}
_MAE_KEY = re.compile(r"^(train|val)_(.+)_mae$")


def mae_unit(target: str) -> tuple:
    """(unit, factor) in which ``target``'s errors are shown: meV, meV/Å or the file's own ("native")."""
    return MAE_UNITS.get(target, ("native", 1.0))


def _column(key: str) -> tuple:
    """The ``metrics.csv`` column of a row key, and the factor of its value."""
    match = _MAE_KEY.match(key)
    if not match:
        return key, 1.0
    unit, factor = mae_unit(match.group(2))
    return f"{key}_{unit.replace('/Å', '_per_A')}", factor


def labelled_row(row: dict) -> dict:
    """A metrics row as written to ``metrics.csv``: MAE columns in meV / meV/Å, unit in the name."""
    out = {}
    for key, value in row.items():
        column, factor = _column(key)
        out[column] = value * factor if factor != 1.0 and isinstance(value, (int, float)) else value
    return out


def format_epoch_line(row: dict) -> str:
    """The epoch line a run prints: loss (of normalised targets), validation MAEs with units, speed."""
    parts = [f"epoch {row['epoch']}", f"step {row['step']}", f"loss {row['train_loss']:.4f} (normalised)"]
    for key, value in row.items():
        match = _MAE_KEY.match(key)
        if match and match.group(1) == "val":
            unit, factor = mae_unit(match.group(2))
            parts.append(f"val {match.group(2)} MAE {value * factor:.4g} {unit}")
    parts.append(f"{row['train_structures_per_s']:.1f} structures/s")
    return " | ".join(parts)


class MetricsLogger:
    """Appends rows to ``metrics.csv``; a resumed run keeps the rows of the interrupted one up to
    its checkpoint (rows after it are dropped, so no epoch appears twice)."""

    def __init__(self, rundir, enabled: bool = True, tensorboard: bool = True):
        self.path = Path(rundir) / "metrics.csv"
        self.enabled = enabled
        self.rows: list[dict] = []
        self._tb = None
        if enabled and tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(log_dir=str(Path(rundir) / "tensorboard"))
            except Exception:  # tensorboard not installed: CSV only
                self._tb = None

    def restore(self, rows):
        self.rows = [dict(r) for r in rows]
        self._flush()

    def log(self, row: dict):
        self.rows.append(dict(row))
        if self._tb is not None:
            step = int(row.get("step", len(self.rows)))
            for key, value in labelled_row(row).items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tb.add_scalar(key, value, step)
        self._flush()

    def _flush(self):
        if not self.enabled or not self.rows:
            return
        rows = [labelled_row(row) for row in self.rows]  # self.rows stay in eV: resume state, plots
        keys: list[str] = []
        for row in rows:
            keys += [k for k in row if k not in keys]
        with atomic_write(self.path, newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(rows)

    def close(self):
        if self._tb is not None:
            self._tb.close()
