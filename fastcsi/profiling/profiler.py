"""Where the time and memory go, per stage.

A :class:`Profiler` accumulates wall time per named stage (``read``, ``graph``, ``model``, ``stats``,
``forward``, ``backward``, ``optimizer`` ...) and work counters (structures, atoms), and reports
throughput and peak memory. On CUDA it synchronises at stage boundaries, so stage times are real
device times rather than launch times; that costs a little overlap, which is why it can be disabled.
"""
from __future__ import annotations

import contextlib
import json
import resource
import sys
import time
from collections import OrderedDict
from pathlib import Path

from fastcsi.utils import allocator_tuned, atomic_write, versions


def _peak_host_rss_mib() -> float:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / 1024.0 if sys.platform != "darwin" else peak / 2**20


class Profiler:
    def __init__(self, device=None, enabled: bool = True, synchronize: bool = True):
        self.enabled = enabled
        self.device = str(device) if device is not None else "cpu"
        self.synchronize = synchronize and self.device.startswith("cuda")
        self.stages: "OrderedDict[str, dict]" = OrderedDict()
        self.counters: "OrderedDict[str, float]" = OrderedDict()
        self._start = time.perf_counter()
        self._stopped: float | None = None

    def _sync(self):
        if self.synchronize:
            import torch

            torch.cuda.synchronize()

    @contextlib.contextmanager
    def stage(self, name: str):
        """Time the block under ``name`` (nested stages are timed independently)."""
        if not self.enabled:
            yield
            return
        self._sync()
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            entry = self.stages.setdefault(name, {"total_s": 0.0, "calls": 0})
            entry["total_s"] += time.perf_counter() - t0
            entry["calls"] += 1

    def add_time(self, name: str, seconds: float, calls: int = 1):
        entry = self.stages.setdefault(name, {"total_s": 0.0, "calls": 0})
        entry["total_s"] += float(seconds)
        entry["calls"] += calls

    def count(self, **counts):
        """Add work done, e.g. ``count(structures=32, atoms=412)``."""
        for key, value in counts.items():
            self.counters[key] = self.counters.get(key, 0) + value

    def stop(self):
        self._stopped = time.perf_counter()

    @property
    def wall_s(self) -> float:
        end = self._stopped if self._stopped is not None else time.perf_counter()
        return end - self._start

    def summary(self, settings: dict | None = None) -> dict:
        wall = self.wall_s
        stages = OrderedDict()
        for name, entry in self.stages.items():
            stages[name] = {
                "total_s": entry["total_s"],
                "calls": entry["calls"],
                "mean_s": entry["total_s"] / max(entry["calls"], 1),
                "share_of_wall": entry["total_s"] / wall if wall > 0 else 0.0,
            }
        throughput = {f"{k}_per_s": (v / wall if wall > 0 else 0.0) for k, v in self.counters.items()}
        # with the CLI's malloc tuning, freed memory stays in the process: RSS is a high-water mark
        memory = {"peak_host_rss_mib": _peak_host_rss_mib(), "malloc_tuning": "on" if allocator_tuned() else "off"}
        if self.device.startswith("cuda"):
            import torch

            memory["peak_gpu_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
            memory["peak_gpu_reserved_mib"] = torch.cuda.max_memory_reserved() / 2**20
            memory["gpu"] = torch.cuda.get_device_name()
        return {
            "wall_s": wall,
            "device": self.device,
            "stages": stages,
            "counters": dict(self.counters),
            "throughput": throughput,
            "memory": memory,
            "settings": settings or {},
            "versions": versions(),
        }

    def markdown(self, settings: dict | None = None, title: str = "Profile") -> str:
        s = self.summary(settings)
        lines = [f"# {title}", "", f"Device: `{s['device']}`; wall time {s['wall_s']:.2f} s", ""]
        lines += ["| stage | total (s) | calls | mean (ms) | share of wall |", "|---|---:|---:|---:|---:|"]
        for name, e in s["stages"].items():
            lines.append(
                f"| {name} | {e['total_s']:.3f} | {e['calls']} | {1e3 * e['mean_s']:.2f} | "
                f"{100 * e['share_of_wall']:.1f}% |"
            )
        if s["counters"]:
            lines += ["", "| work | total | per second |", "|---|---:|---:|"]
            for key, value in s["counters"].items():
                lines.append(f"| {key} | {value:,.0f} | {s['throughput'][key + '_per_s']:,.1f} |")
        lines += ["", "| memory | value |", "|---|---:|"]
        for key, value in s["memory"].items():
            lines.append(f"| {key} | {value:,.1f} |" if isinstance(value, float) else f"| {key} | {value} |")
        if s["settings"]:
            lines += ["", "Settings:", "", "```json", json.dumps(s["settings"], indent=1, default=str), "```"]
        return "\n".join(lines) + "\n"

    def write(self, outdir, settings: dict | None = None, title: str = "Profile") -> dict:
        """Write ``profile.json`` and ``profile.md`` into ``outdir`` (atomically); return the summary."""
        outdir = Path(outdir)
        summary = self.summary(settings)
        with atomic_write(outdir / "profile.json") as fh:
            json.dump(summary, fh, indent=1, default=str)
        with atomic_write(outdir / "profile.md") as fh:
            fh.write(self.markdown(settings, title=title))
        return summary


@contextlib.contextmanager
def torch_trace(outdir, enabled: bool = True, wait: int = 1, warmup: int = 1, active: int = 3):
    """A torch.profiler schedule that writes a chrome trace (``trace.json``) of a few steps into
    ``outdir``; yields an object with ``step()`` (a no-op when disabled)."""

    class _Noop:
        def step(self):
            pass

    if not enabled:
        yield _Noop()
        return
    import torch

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    activities = [torch.profiler.ProfilerActivity.CPU]
    if torch.cuda.is_available():
        activities.append(torch.profiler.ProfilerActivity.CUDA)

    def on_ready(prof):
        prof.export_chrome_trace(str(outdir / "trace.json"))

    with torch.profiler.profile(
        activities=activities,
        schedule=torch.profiler.schedule(wait=wait, warmup=warmup, active=active, repeat=1),
        on_trace_ready=on_ready,
        record_shapes=True,
    ) as prof:
        yield prof
