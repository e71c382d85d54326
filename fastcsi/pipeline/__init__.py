"""The CSI selection pipeline: the one place that joins data, graph, model and stats.

dataset -> sampled structures -> frozen backbone features -> streaming statistics (cached,
mergeable across torch.distributed ranks) -> CSI per (downstream, upstream) pair -> ranking and
reports. ``fastcsi select`` / ``fastcsi demo`` / ``fastcsi stats compute`` are thin layers over it.
"""
from fastcsi.pipeline.settings import (
    DEMO_SAMPLES,
    DEMO_SEEDS,
    PAPER_SAMPLES,
    SampleSpec,
    SelectSettings,
    parse_samples,
    parse_seeds,
)

__all__ = [
    "DEMO_SAMPLES",
    "DEMO_SEEDS",
    "PAPER_SAMPLES",
    "SampleSpec",
    "SelectSettings",
    "compute_stats_file",
    "parse_samples",
    "parse_seeds",
    "run_select",
]


def __getattr__(name):
    # The heavy parts (torch, the model) load only when used.
    if name in ("run_select", "compute_stats_file"):
        from fastcsi.pipeline import select

        return getattr(select, name)
    raise AttributeError(name)
