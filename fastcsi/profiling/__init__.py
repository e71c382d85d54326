"""Stage timers, memory peaks, torch.profiler traces and the ``profile.md`` / ``profile.json`` reports
that every long command writes into its run directory."""
from fastcsi.profiling.profiler import Profiler, torch_trace

__all__ = ["Profiler", "torch_trace"]
