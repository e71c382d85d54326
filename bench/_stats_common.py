"""Shared helpers for the stats benchmarks (frechet.py, covariance.py): timing, BLAS report, output."""
from __future__ import annotations

import json
import os
import statistics
import time


def blas_report() -> dict:
    """Which BLAS ran and with how many threads (threadpoolctl when installed)."""
    report = {"OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"), "cpu_count": os.cpu_count()}
    try:
        import threadpoolctl

        report["threadpools"] = [
            {k: info.get(k) for k in ("internal_api", "version", "num_threads", "architecture")}
            for info in threadpoolctl.threadpool_info()
        ]
    except ImportError:
        import numpy as np

        config = np.show_config(mode="dicts") if "mode" in np.show_config.__code__.co_varnames else {}
        blas = config.get("Build Dependencies", {}).get("blas", {}) if isinstance(config, dict) else {}
        report["numpy_blas"] = blas.get("openblas configuration") or blas.get("name")
    try:
        import torch

        report["torch_threads"] = torch.get_num_threads()
        report["torch_blas"] = "mkl" if torch.backends.mkl.is_available() else "other"
    except ImportError:  # pragma: no cover
        pass
    return report


def time_median(fn, repeats: int, warmup: int = 1) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), times


def print_table(rows: list[dict], columns: list[str]) -> None:
    widths = {c: max(len(c), *(len(_fmt(r.get(c))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(_fmt(row.get(c)).ljust(widths[c]) for c in columns))


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.3g}"
    return "" if value is None else str(value)


def save_json(result: dict, path) -> None:
    from fastcsi.utils import atomic_write, versions

    result = {**result, "versions": versions()}
    with atomic_write(path) as handle:
        json.dump(result, handle, indent=2, default=str)
