"""The CSI selection pipeline: the one place that joins data, graph, model and stats.

dataset -> sampled structures -> frozen backbone features -> streaming statistics (cached,
mergeable across torch.distributed ranks) -> CSI per (downstream, upstream) pair -> ranking and
reports. ``fastcsi select`` / ``fastcsi demo`` / ``fastcsi stats compute`` are thin layers over it.
"""
from fastcsi.pipeline.ranking import Ranking, RankingEntry
from fastcsi.pipeline.settings import SampleSpec, SelectSettings

# ``fastcsi.select`` (the function) lives in the submodule of the same name: fastcsi.pipeline.select.select
__all__ = ["Ranking", "RankingEntry", "SampleSpec", "SelectSettings", "compute_stats_file", "run_select",
           "run_select_backbones"]


def __getattr__(name):
    # The heavy parts (torch, the model) load only when used.
    if name in ("run_select", "run_select_backbones", "compute_stats_file"):
        import importlib

        return getattr(importlib.import_module("fastcsi.pipeline.select"), name)
    raise AttributeError(name)
