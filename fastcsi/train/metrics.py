"""Metric logging: one CSV row per epoch (and TensorBoard scalars when it is installed)."""
from __future__ import annotations

import csv
from pathlib import Path

from fastcsi.utils import atomic_write


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
            for key, value in row.items():
                if isinstance(value, (int, float)) and key not in ("step", "epoch"):
                    self._tb.add_scalar(key, value, step)
        self._flush()

    def _flush(self):
        if not self.enabled or not self.rows:
            return
        keys: list[str] = []
        for row in self.rows:
            keys += [k for k in row if k not in keys]
        with atomic_write(self.path, newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=keys)
            writer.writeheader()
            writer.writerows(self.rows)

    def close(self):
        if self._tb is not None:
            self._tb.close()
