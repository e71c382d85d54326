"""The one benchmark harness of bench/: cases, methods, the correctness gate, timing, rows, reports.

Every bench/<op>.py exposes ``cases(quick, device, sizes=None) -> iterable of Case``; the suite
(``fastcsi bench``, bench/suite.py) collects them, and each script also runs alone through
:func:`script_main` (``python bench/<op>.py [--quick] [--device cuda] [--out x.json]``).

A :class:`Case` builds its inputs once (``inputs()``), computes the expected output with the op's
reference (``reference(inputs)``, the ``*_ref`` oracle or a float64 formulation of it) and compares
each method's output with ``error(output, expected) -> float``. :func:`run_case`:

1. calls EVERY method (ours, baselines and controls alike) once on those inputs and checks its
   error against the tolerance of its dtype (:data:`TOLERANCES`, or the method's own stated one);
   a method that fails is marked "failed", printed to stderr and never timed;
2. times the methods that passed on the same inputs: ``warmup`` untimed calls, then ``repeats``
   timed calls, round-robin (one call of each method per round, so load drift on a shared machine
   hits all of them alike) unless the case says otherwise. CUDA: a pair of CUDA events around each
   call (device time of the stream); CPU: ``time.perf_counter``. The process CPU time
   (``time.process_time``, all threads) is recorded next to it: on a shared machine it is the
   steadier measure of the work done.

Row schema (one dict per kernel x case x method):
  kernel, case, size, size_unit        what ran, and the work measure of the x axis
  method, role                         role: "ours" | "baseline" | "control"
  status                               "ok" | "failed" (correctness) | "error" (raised) | "skipped"
  error, tolerance, correct            the check, on the timed inputs, BEFORE timing
  seconds, times, cpu_seconds, repeats medians and every repeat
  items, items_unit, throughput        throughput = items / seconds
  flops, bytes, dtype                  work model (nominal) for the roofline
  ratios                               {baseline: baseline seconds / seconds}, same run, same case
  roofline                             achieved FLOP/s and B/s vs the measured peaks
  note                                 why skipped / failed, or what the row means
  load_average, spread                 1-min load when the case was timed; (max - min) / median of times
  peak_rss_bytes, peak_rss_delta_bytes  host memory of the method's correctness call: the process's
                                       peak resident set during the call, and that peak minus the RSS
                                       just before it (what the call itself needed on top of the
                                       inputs); peak_rss_method says how it was measured;
                                       reference_peak_rss_delta_bytes: the same for the reference
  peak_cuda_bytes                      CUDA: torch's peak allocated bytes during that call
  timing_warnings                      why this row's time may not hold: load above the cores, wide spread
  unreliable_ratios                    baselines whose ratio involves a row with timing warnings
Ratios are only ever taken between rows of one run; a figure recorded elsewhere may appear as a
note, never as a divisor. A ratio from a loaded machine or from repeats that disagree is marked (†
in the tables), not dropped: the reader decides, knowing it may not hold.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable

ROLES = ("ours", "baseline", "control")
STATUSES = ("ok", "failed", "error", "skipped")
# Default check tolerances of an error measure relative to the reference's scale: float64 paths
# differ from the oracle by summation order only; float32 paths by float32 rounding of long sums.
TOLERANCES = {"float64": 1e-10, "float32": 1e-5, "exact": 0.0}
# The model's every op on its plain reference path (the oracle of model-level rows).
REFERENCE_PATH = dict(radius="ref", gemnet_indices="ref", interaction="ref", activation="ref", fused=False)


# ------------------------------------------------------------------------------------ cases
@dataclass
class Method:
    """One implementation timed in a case. ``fn(inputs)`` gets the case's inputs."""

    name: str
    role: str  # ours | baseline | control
    fn: Callable[[Any], Any] | None = None
    dtype: str = "float64"  # picks the tolerance (TOLERANCES) and the roofline's FLOP peak
    tolerance: float | None = None  # stated per method when its dtype's default does not apply
    flops: float | None = None  # None: the case's work model
    bytes: float | None = None
    count_flops: bool = False  # count flops (torch FlopCounterMode) during the correctness call
    reset: Callable[[Any], Any] | None = None  # untimed, before every call (e.g. restore an in-place input)
    skip: str | None = None  # the row is reported as skipped, never run
    note: str | None = None

    def __post_init__(self):
        if self.role not in ROLES:
            raise ValueError(f"method {self.name!r}: role {self.role!r} is not one of {', '.join(ROLES)}")
        if self.fn is None and self.skip is None:
            raise ValueError(f"method {self.name!r}: nothing to run and no reason to skip")


@dataclass
class Case:
    """Inputs, the reference, the error measure and the methods of one benchmark point."""

    kernel: str
    name: str
    size: float
    size_unit: str
    items: float
    items_unit: str
    inputs: Callable[[], Any]
    reference: Callable[[Any], Any]
    error: Callable[[Any, Any], float]
    methods: list[Method] = field(default_factory=list)
    flops: float | None = None  # work model of one call (nominal), shared by the methods
    bytes: float | None = None
    repeats: int = 3
    warmup: int = 1  # untimed calls after the correctness call (first calls set up caches, JIT, autograd)
    round_robin: bool = True

    def tolerance(self, method: Method) -> float:
        return method.tolerance if method.tolerance is not None else TOLERANCES[method.dtype]


def relative_error(output, expected) -> float:
    """max |output - expected| / max |expected| (numpy arrays, tensors or scalars; inf on a shape
    mismatch or a non-finite value). Dicts: the worst over the output's keys, each against the
    expected value of that key (a method may return a subset of what the reference gives)."""
    import numpy as np

    if isinstance(expected, dict):
        if not isinstance(output, dict) or not output or set(output) - set(expected):
            return math.inf
        return max(relative_error(output[k], expected[k]) for k in output)

    got, want = _numpy(output), _numpy(expected)
    if got.shape != want.shape:
        return math.inf
    scale = float(np.abs(want).max(initial=0.0)) or 1.0
    diff = np.abs(got - want)
    return float(diff.max(initial=0.0)) / scale if np.isfinite(diff).all() else math.inf


def _numpy(value):
    import numpy as np

    if hasattr(value, "detach"):
        value = value.detach().cpu().double().numpy()
    return np.asarray(value, dtype=np.float64)


def identical(output, expected) -> float:
    """0 when two nested dicts / tensors / values are equal bit for bit (dtype included), else inf."""
    import torch

    if isinstance(expected, dict):
        same = isinstance(output, dict) and output.keys() == expected.keys() and \
            all(identical(output[k], expected[k]) == 0.0 for k in expected)
    elif isinstance(expected, torch.Tensor):
        same = isinstance(output, torch.Tensor) and output.dtype == expected.dtype and \
            torch.equal(output.cpu(), expected.cpu())
    else:
        same = output == expected
    return 0.0 if same else math.inf


# ----------------------------------------------------------------------------------- timing
def _cuda(device) -> bool:
    return str(device).startswith("cuda")


def sync(device) -> None:
    if _cuda(device):
        import torch

        torch.cuda.synchronize(device)


def measure(fns, device: str = "cpu", repeats: int = 3, warmup: int = 1, round_robin: bool = True,
            resets: dict | None = None) -> dict:
    """Time callables. ``fns``: one callable (returns its timing dict) or {name: callable} (returns
    {name: timing dict}). ``warmup`` untimed calls of each, then ``repeats`` timed calls, one of
    each per round when ``round_robin`` (else all repeats of one before the next). A timing dict:
    ``seconds`` (median), ``times`` (every repeat), ``cpu_seconds`` (median process CPU time),
    ``cpu_times``, ``repeats``. CUDA: events around each call; CPU: perf_counter. ``resets``:
    {name: callable} run untimed before every call of that name."""
    single = callable(fns)
    named = {"fn": fns} if single else dict(fns)
    resets = resets or {}
    cuda = _cuda(device)
    if cuda:
        import torch

    def once(name):
        if name in resets:
            resets[name]()
        if cuda:
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            cpu0 = time.process_time()
            start.record()
            named[name]()
            stop.record()
            stop.synchronize()
            return start.elapsed_time(stop) / 1e3, time.process_time() - cpu0
        wall0, cpu0 = time.perf_counter(), time.process_time()
        named[name]()
        return time.perf_counter() - wall0, time.process_time() - cpu0

    for name in named:
        for _ in range(warmup):
            once(name)
    sync(device)
    walls = {name: [] for name in named}
    cpus = {name: [] for name in named}
    order = [[name] * repeats for name in named]
    schedule = [name for round_ in zip(*order) for name in round_] if round_robin else sum(order, [])
    for name in schedule:
        wall, cpu = once(name)
        walls[name].append(wall)
        cpus[name].append(cpu)
    out = {name: {"seconds": statistics.median(walls[name]), "times": walls[name],
                  "cpu_seconds": statistics.median(cpus[name]), "cpu_times": cpus[name], "repeats": repeats}
           for name in named}
    return out["fn"] if single else out


def _counting_flops(fn):
    """``fn()`` under torch's FlopCounterMode (matmul-class ops): (output, flops or None)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        output = fn()
    return output, (float(counter.get_total_flops()) or None)


# ------------------------------------------------------------------------------------- memory
# Peak memory per call, without a child process per method: Linux resets a process's peak RSS
# (VmHWM) to its current RSS when "5" is written to /proc/self/clear_refs, so the VmHWM read after
# the call is the peak during it. Elsewhere ru_maxrss is the fallback: the process's lifetime
# maximum, so a call's delta shows only when it raised that maximum (a lower bound).
def _status_bytes(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as handle:
            for line in handle:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def memory_mark(device: str = "cpu") -> dict:
    """Start measuring one call's peak memory (host RSS; CUDA allocations on a CUDA device).
    Collects garbage first: earlier cases' cyclic garbage freed during the call would otherwise
    lower the peak's excess over the starting RSS."""
    import gc

    gc.collect()
    mark = {"method": "VmHWM after /proc/self/clear_refs=5 (per call)"}
    try:
        with open("/proc/self/clear_refs", "w") as handle:
            handle.write("5")
        mark["rss"] = _status_bytes("VmRSS")
    except OSError:
        import resource

        mark["method"] = "ru_maxrss (lifetime maximum: a lower bound per call)"
        mark["rss"] = None
        mark["maxrss"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    if _cuda(device):
        import torch

        torch.cuda.reset_peak_memory_stats(device)
    return mark


def memory_since(mark: dict, device: str = "cpu") -> dict:
    """Peak memory since ``mark`` (see the row schema in the module doc)."""
    out = {"peak_rss_method": mark["method"]}
    if mark.get("rss") is not None:
        peak = _status_bytes("VmHWM")
        out.update(peak_rss_bytes=peak, peak_rss_delta_bytes=None if peak is None else max(0, peak - mark["rss"]))
    else:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        out.update(peak_rss_bytes=peak, peak_rss_delta_bytes=max(0, peak - mark["maxrss"]))
    if _cuda(device):
        import torch

        out["peak_cuda_bytes"] = int(torch.cuda.max_memory_allocated(device))
    return out


# -------------------------------------------------------------------------------------- runner
def _default_log(message: str, err: bool = False):
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def _row(case: Case, m: Method) -> dict:
    return {"kernel": case.kernel, "case": case.name, "size": case.size, "size_unit": case.size_unit,
            "method": m.name, "role": m.role, "status": "ok", "error": None, "tolerance": case.tolerance(m),
            "correct": None, "seconds": None, "times": [], "cpu_seconds": None, "repeats": case.repeats,
            "items": case.items, "items_unit": case.items_unit,
            "flops": m.flops if m.flops is not None else case.flops,
            "bytes": m.bytes if m.bytes is not None else case.bytes, "dtype": m.dtype, "note": m.note}


def _raised(row: dict, exc: Exception, log, where: str):
    row.update(status="error", correct=False, note=f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
               traceback=traceback.format_exc(limit=4))
    log(f"!! {where} raised {row['note']}", err=True)


def run_case(case: Case, device: str = "cpu", log=_default_log) -> list[dict]:
    """Check every method on the case's inputs, then time those that passed (see the module doc)."""
    inputs = case.inputs()
    mark = memory_mark(device)
    expected = case.reference(inputs)
    reference_memory = memory_since(mark, device)
    rows, timed = [], {}
    for m in case.methods:
        row = _row(case, m)
        row["reference_peak_rss_delta_bytes"] = reference_memory.get("peak_rss_delta_bytes")
        rows.append(row)
        where = f"{case.kernel} / {case.name} / {m.name}"
        if m.skip:
            row.update(status="skipped", note=m.skip)
            continue
        try:
            if m.reset:
                m.reset(inputs)
            mark = memory_mark(device)
            if m.count_flops:
                output, row["flops"] = _counting_flops(lambda m=m: m.fn(inputs))
            else:
                output = m.fn(inputs)
            sync(device)
            row.update(memory_since(mark, device))
            error = float(case.error(output, expected))
        except Exception as exc:  # one broken method must not hide the rest of the report
            _raised(row, exc, log, where)
            continue
        del output
        row.update(error=error, correct=bool(math.isfinite(error) and error <= row["tolerance"]))
        if not row["correct"]:
            row.update(status="failed", note=f"correctness check FAILED: error {error:.3g} > tolerance "
                                             f"{row['tolerance']:.3g}; not timed")
            log(f"!! {where}: {row['note']}", err=True)
            continue
        timed[m.name] = (row, m)
    if not timed:
        return rows
    fns = {name: (lambda m=m: m.fn(inputs)) for name, (_, m) in timed.items()}
    resets = {name: (lambda m=m: m.reset(inputs)) for name, (_, m) in timed.items() if m.reset}
    try:
        timings = measure(fns, device, case.repeats, case.warmup, case.round_robin, resets)
    except Exception:  # find which method raised: time them one by one
        timings = {}
        for name, fn in fns.items():
            try:
                timings[name] = measure(fn, device, case.repeats, case.warmup)
            except Exception as exc:
                _raised(timed[name][0], exc, log, f"{case.kernel} / {case.name} / {name} (timing)")
    load = _load_now()  # the 1-min load over the timing just done (with this process in it)
    for name, timing in timings.items():
        timed[name][0].update(timing, load_average=load)
    return rows


def run_cases(cases: Iterable[Case], device: str = "cpu", log=_default_log, say_rows: bool = True) -> list[dict]:
    rows = []
    for case in cases:
        case_rows = run_case(case, device, log)
        rows += case_rows
        if say_rows:
            for r in case_rows:
                shown = f"{r['seconds']:.4g} s" if r["seconds"] else r["status"]
                log(f"  {r['case']:<44.44} {r['method']:<36.36} {shown}")
    return rows


def setup_error_row(kernel: str, exc: Exception) -> dict:
    """The row that reports a kernel whose cases could not even be built."""
    return {"kernel": kernel, "case": "setup", "size": 0, "size_unit": "", "method": "(setup)", "role": "ours",
            "status": "error", "correct": False, "error": None, "tolerance": None, "seconds": None, "times": [],
            "cpu_seconds": None, "repeats": 0, "items": None, "items_unit": "", "flops": None, "bytes": None,
            "dtype": "", "traceback": traceback.format_exc(limit=6),
            "note": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}


# (max - min) / median of the repeats above which a row's time is not one number (quiet runs: < 0.2)
WIDE_SPREAD = 0.5


def _load_now():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def timing_warnings(row: dict, cores: int | None = None) -> list[str]:
    """Why ``row``'s median may not hold: the machine was loaded beyond its cores while it was
    timed, or its repeats disagree widely (other processes took the cores for part of the time)."""
    cores = cores or os.cpu_count() or 1
    out = []
    load = row.get("load_average")
    if load is not None and load > cores:
        out.append(f"load {load:.1f} > {cores} cores")
    if row.get("spread") is not None and row["spread"] > WIDE_SPREAD:
        out.append(f"spread {100 * row['spread']:.0f}% over {len(row['times'])} repeats")
    return out


def finish_rows(rows: list[dict], peaks: dict | None) -> list[dict]:
    """Fill throughput, ratios vs every baseline of the same kernel, case and size, and the roofline;
    mark timings (and the ratios built on them) that a loaded machine or disagreeing repeats make
    doubtful."""
    for row in rows:
        times = [t for t in row.get("times") or [] if t is not None]
        row["spread"] = ((max(times) - min(times)) / row["seconds"]
                         if len(times) >= 2 and row.get("seconds") else None)
        row["timing_warnings"] = timing_warnings(row) if row["status"] == "ok" and row.get("seconds") else []
    for row in rows:
        ok = row["status"] == "ok" and row.get("seconds")
        row["throughput"] = row["items"] / row["seconds"] if ok and row.get("items") else None
        row["roofline"] = (roofline(row.get("flops"), row.get("bytes"), row["seconds"], peaks, row.get("dtype") or "float32")
                           if ok else None)
    for row in rows:
        row["ratios"] = {}
        if not (row["status"] == "ok" and row.get("seconds")):
            continue
        for other in rows:
            if (other["kernel"], other["case"], other["size"]) == (row["kernel"], row["case"], row["size"]) \
                    and other is not row \
                    and other["role"] == "baseline" and other["status"] == "ok" and other.get("seconds"):
                row["ratios"][other["method"]] = other["seconds"] / row["seconds"]
                if row["timing_warnings"] or other["timing_warnings"]:
                    row.setdefault("unreliable_ratios", []).append(other["method"])
    return rows


def failed_rows(rows: list[dict]) -> list[str]:
    return [f"{r['kernel']} / {r['case']} / {r['method']}" for r in rows if r["status"] in ("failed", "error")]


# ------------------------------------------------------------------------------------ peaks / roof
def measure_peaks(device: str = "cpu", quick: bool = True) -> dict:
    """Measured (not datasheet) peaks of this device, in the same run as the kernels.

    bandwidth: a large copy (CUDA: device-to-device ``Tensor.copy_``; CPU: ``np.copyto``), counting
    read + write bytes. FLOP/s: a square matmul per dtype (2 n^3 flops; TF32 off on CUDA so float32
    is the true float32 rate).
    """
    import numpy as np
    import torch

    out = {"device": device, "method": {}}
    if _cuda(device):
        nbytes = (1 << 28) if quick else (1 << 30)
        src = torch.empty(nbytes // 4, dtype=torch.float32, device=device)
        dst = torch.empty_like(src)
        copy = measure(lambda: dst.copy_(src), device, repeats=5, warmup=2)
        out["method"]["bandwidth"] = f"device-to-device copy of {nbytes / 2**20:.0f} MiB (read + write)"
        del src, dst
        sizes = {"float32": 8192, "float64": 4096}
        previous = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
    else:
        nbytes = (1 << 25) if quick else (1 << 28)
        src = np.ones(nbytes // 8)
        dst = np.empty_like(src)
        copy = measure(lambda: np.copyto(dst, src), device, repeats=5, warmup=1)
        out["method"]["bandwidth"] = f"np.copyto of {nbytes / 2**20:.0f} MiB (read + write)"
        del src, dst
        sizes = {"float32": 512 if quick else 2048, "float64": 512 if quick else 2048}
    out["bandwidth_Bps"] = 2 * nbytes / copy["seconds"]
    try:
        for name, n in sizes.items():
            dtype = getattr(torch, name)
            a = torch.randn(n, n, dtype=dtype, device=device)
            b = torch.randn(n, n, dtype=dtype, device=device)
            timing = measure(lambda: a @ b, device, repeats=5, warmup=2)
            out[f"flops_{name}"] = 2 * n**3 / timing["seconds"]
            out["method"][f"flops_{name}"] = f"torch matmul {n}x{n} {name}"
    finally:
        if _cuda(device):
            torch.backends.cuda.matmul.allow_tf32 = previous
    return out


def roofline(flops, nbytes, seconds, peaks: dict, dtype: str = "float32") -> dict | None:
    """Where a measured time sits under the roofline of the measured peaks.

    attainable FLOP/s = min(peak FLOP/s, intensity * peak B/s) with intensity = flops / bytes;
    ``fraction`` = achieved / attainable (for a kernel with no flop model: achieved B/s / peak B/s).
    ``bound`` says which roof applies at this intensity. None when there is nothing to compare.
    """
    if not seconds or not peaks or seconds <= 0:
        return None
    peak_flops = peaks.get(f"flops_{dtype}") or peaks.get("flops_float32")
    peak_bw = peaks.get("bandwidth_Bps")
    out = {"dtype": dtype, "peak_flops": peak_flops, "peak_Bps": peak_bw}
    if flops:
        out["achieved_flops"] = flops / seconds
        out["flops_fraction"] = out["achieved_flops"] / peak_flops if peak_flops else None
    if nbytes:
        out["achieved_Bps"] = nbytes / seconds
        out["bandwidth_fraction"] = out["achieved_Bps"] / peak_bw if peak_bw else None
    if flops and nbytes and peak_flops and peak_bw:
        intensity = flops / nbytes
        attainable = min(peak_flops, intensity * peak_bw)
        out.update(intensity=intensity, attainable_flops=attainable, fraction=out["achieved_flops"] / attainable,
                   bound="compute" if intensity * peak_bw >= peak_flops else "memory")
    elif flops and peak_flops:
        out.update(fraction=out["flops_fraction"], bound="compute (no byte model)")
    elif nbytes and peak_bw:
        out.update(fraction=out["bandwidth_fraction"], bound="memory (no flop model)")
    else:
        return None
    return out


# ---------------------------------------------------------------------------------------- machine
def machine_info(device: str = "cpu") -> dict:
    info = {"cpu_model": platform.processor() or None, "cores": os.cpu_count(), "ram_gb": None,
            "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None, "gpu": None}
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    info["cpu_model"] = line.split(":", 1)[1].strip()
                    break
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemTotal"):
                    info["ram_gb"] = round(int(line.split()[1]) / 2**20, 1)
                    break
    except OSError:  # not Linux: keep what platform gave
        pass
    try:
        import torch

        info["torch_threads"] = torch.get_num_threads()
        if torch.cuda.is_available():
            index = torch.device(device).index or 0 if _cuda(device) else 0
            props = torch.cuda.get_device_properties(index)
            info["gpu"] = {"name": props.name, "memory_gb": round(props.total_memory / 2**30, 1),
                           "capability": f"{props.major}.{props.minor}", "sms": props.multi_processor_count}
    except ImportError:  # pragma: no cover - torch is a dependency
        pass
    return info


def package_versions() -> dict:
    from importlib import metadata

    from fastcsi.utils import versions

    out = {k: (None if v is None else str(v)) for k, v in versions().items()}
    for name in ("scipy", "vesin", "matscipy", "ase", "triton", "numba", "matplotlib", "threadpoolctl"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


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
        report["threadpools"] = None
    return report


def optional(module: str):
    """(module, None), or (None, the skip reason) when it is not installed."""
    import importlib

    try:
        return importlib.import_module(module), None
    except ImportError:
        return None, f"{module} is not installed (pip install 'fastcsi[bench]'); skipped"


# ---------------------------------------------------------------------------------------- reports
def build_report(rows: list[dict], settings: dict, kernels: dict, peaks: dict | None, device: str,
                 seconds: float) -> dict:
    rows = finish_rows(rows, peaks)
    doubtful = [f"{r['kernel']} / {r['case']} / {r['method']}: {'; '.join(r['timing_warnings'])}"
                for r in rows if r.get("timing_warnings")]
    return {"schema": "fastcsi.bench/2", "timing_warnings": doubtful, "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "settings": settings, "machine": machine_info(device), "versions": package_versions(),
            "blas": blas_report(), "peaks": peaks, "kernels": kernels, "rows": rows, "failed": failed_rows(rows),
            "skipped": [f"{r['kernel']} / {r['method']}: {r['note']}" for r in rows if r["status"] == "skipped"],
            "total_seconds": seconds}


def save_json(report: dict, path) -> None:
    from fastcsi.utils import atomic_write

    with atomic_write(path) as handle:
        json.dump(report, handle, indent=1, default=str, allow_nan=True)


def fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def si(value) -> str:
    if value is None:
        return ""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value:.3g} "


def status_text(row: dict) -> str:
    return {"ok": f"yes ({fmt(row.get('error'), 2)})", "failed": f"**FAILED** ({fmt(row.get('error'), 2)})",
            "error": "**ERROR**", "skipped": "skipped"}[row["status"]]


def kernel_table(rows: list[dict], roofline_column: bool = True) -> list[str]:
    """Markdown table lines of one kernel's rows: time, CPU time, throughput, same-run ratios."""
    baselines = list(dict.fromkeys(m for r in rows for m in r.get("ratios", {})))
    doubtful = any(r.get("timing_warnings") for r in rows)
    header = ["case", "size", "method", "role", "median s", "CPU s", "throughput",
              *[f"x vs {b}" for b in baselines], "correct (err)", "peak RSS (+call)"] + \
        (["roofline"] if roofline_column else [])
    header += ["timing (†: may not hold)"] if doubtful else []
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        cells = [r["case"], f"{fmt(r['size'])} {r['size_unit']}", r["method"], r["role"], fmt(r.get("seconds")),
                 fmt(r.get("cpu_seconds")),
                 f"{si(r['throughput'])}{r['items_unit']}/s" if r.get("throughput") else "",
                 *[_ratio_text(r, b) for b in baselines], status_text(r), memory_text(r)]
        if roofline_column:
            cells.append(_roof_text(r.get("roofline") or {}))
        if doubtful:
            cells.append(("† " + "; ".join(r["timing_warnings"])) if r.get("timing_warnings") else "")
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def memory_text(row: dict) -> str:
    """"1.2 GiB (+800 MiB)": the process's peak RSS during the method's checked call and what the
    call added to the RSS it started from."""
    peak, delta = row.get("peak_rss_bytes"), row.get("peak_rss_delta_bytes")
    if peak is None:
        return ""
    return f"{_bytes_text(peak)} (+{_bytes_text(delta or 0)})"


def _bytes_text(value: float) -> str:
    for scale, unit in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f} B"


def _ratio_text(row: dict, baseline: str) -> str:
    text = fmt(row.get("ratios", {}).get(baseline))
    return f"{text} †" if text and baseline in row.get("unreliable_ratios", []) else text


def timing_caveat(report: dict) -> list[str]:
    """The line above the tables when some timings may not hold (empty otherwise)."""
    doubtful = report.get("timing_warnings") or []
    if not doubtful:
        return []
    return [f"**{len(doubtful)} timing(s) marked †: taken with the load average above the cores or with "
            f"repeats more than {100 * WIDE_SPREAD:.0f}% apart. Their ratios may not hold (they can "
            "contradict each other); rerun on an idle machine before quoting them.**", ""]


def _roof_text(roof: dict) -> str:
    if roof.get("fraction") is None:
        return ""
    parts = []
    if roof.get("achieved_flops"):
        parts.append(f"{si(roof['achieved_flops'])}FLOP/s")
    if roof.get("achieved_Bps"):
        parts.append(f"{si(roof['achieved_Bps'])}B/s")
    return f"{100 * roof['fraction']:.2g}% ({roof['bound']}; {', '.join(parts)})"


def by_kernel(rows: list[dict]) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows:
        out.setdefault(row["kernel"], []).append(row)
    return out


def machine_line(report: dict) -> str:
    machine = report["machine"]
    return (f"{machine.get('cpu_model')}, {machine.get('cores')} cores, {machine.get('ram_gb')} GB RAM, "
            f"load average {', '.join(f'{v:.1f}' for v in machine.get('load_average') or [])}, "
            f"GPU {(machine.get('gpu') or {}).get('name', 'none')}")


def markdown(report: dict) -> str:
    peaks = report.get("peaks") or {}
    settings = report["settings"]
    lines = ["# fastcsi bench", "",
             f"device {settings['device']}, quick={settings['quick']}, kernels {', '.join(settings['only'])}, "
             f"{report.get('date', '')}, total {report['total_seconds']:.1f} s", "",
             f"machine: {machine_line(report)}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v), ""]
    if peaks:
        lines += [f"measured peaks ({peaks['device']}): bandwidth {si(peaks.get('bandwidth_Bps'))}B/s, "
                  f"float32 {si(peaks.get('flops_float32'))}FLOP/s, float64 {si(peaks.get('flops_float64'))}FLOP/s "
                  f"({'; '.join(peaks['method'].values())})", ""]
    lines += timing_caveat(report)
    for kernel, rows in by_kernel(report["rows"]).items():
        meta = report["kernels"].get(kernel, {})
        lines += [f"## {kernel}", "", meta.get("description", ""), "", *kernel_table(rows)]
        notes = [f"- {r['method']} ({r['case']}): {r['note']}" for r in rows if r.get("note")]
        references = {r["case"]: r["reference_peak_rss_delta_bytes"] for r in rows
                      if r.get("reference_peak_rss_delta_bytes") is not None}
        notes += [f"- reference ({case}): its call added {_bytes_text(extra)} to the peak RSS"
                  for case, extra in references.items()]
        notes += [f"- {n}" for n in meta.get("notes", [])]
        if notes:
            lines += ["", *notes]
        lines.append("")
    return "\n".join(lines)


def plot_kernel(rows: list[dict], kernel: str, path: Path, title: str = "") -> bool:
    """Time vs size, log-log, one line per method, ticks at the sizes run; points whose timing may
    not hold (load, spread) hollow. False when there is nothing to draw."""
    import textwrap

    series: dict[str, list[tuple[float, float, bool]]] = {}
    unit = ""
    mine = [r for r in rows if r["kernel"] == kernel and r["status"] == "ok" and r.get("seconds")]
    several = len({r["case"] for r in mine}) > 1
    for r in mine:
        label = f"{r['method']} ({r['case']})" if several else r["method"]
        series.setdefault(label, []).append((float(r["size"]), r["seconds"], bool(r.get("timing_warnings"))))
        unit = r["size_unit"]
    if not series:
        return False
    from matplotlib.ticker import FixedLocator, NullLocator

    from fastcsi.utils import pyplot, save_figure

    fig, ax = pyplot().subplots(figsize=(6.4, 4.6))
    doubtful = False
    for method, points in series.items():
        points.sort()
        (line,) = ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
        hollow = [p for p in points if p[2]]
        doubtful = doubtful or bool(hollow)
        ax.plot([p[0] for p in hollow], [p[1] for p in hollow], "o", color=line.get_color(), markerfacecolor="white",
                linestyle="none")
    ax.set_xscale("log")
    ax.set_yscale("log")
    sizes = sorted({p[0] for points in series.values() for p in points})
    ax.xaxis.set_major_locator(FixedLocator(sizes))  # the sizes run, not 3x10^1
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xticklabels([f"{s:g}" for s in sizes])
    ax.set_xlabel(unit + ("  (hollow: timed under load or with scattered repeats, may not hold)" if doubtful else ""),
                  fontsize=9 if doubtful else None)
    ax.set_ylabel("median seconds")
    ax.set_title("\n".join(textwrap.wrap(title or kernel, 70)), fontsize=9)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=6 if several else 8)
    save_figure(fig, path)
    return True


def write_report(report: dict, outdir: Path) -> dict:
    """bench.json, bench.md and bench_<kernel>.png in ``outdir``, each written atomically."""
    from fastcsi.utils import atomic_write

    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    files = {}
    for kernel in report["kernels"]:
        path = outdir / f"bench_{kernel}.png"
        if plot_kernel(report["rows"], kernel, path, report["kernels"][kernel].get("title", kernel)):
            files[f"png_{kernel}"] = path.name
    report["files"] = {"json": "bench.json", "markdown": "bench.md", **files}
    with atomic_write(outdir / "bench.md") as handle:
        handle.write(markdown(report))
    save_json(report, outdir / "bench.json")
    return report["files"]


def print_rows(rows: list[dict]) -> None:
    """The plain-text table a script prints (the suite writes Markdown instead)."""
    columns = ["case", "size", "method", "role", "seconds", "cpu_seconds", "throughput", "ratios", "status", "error",
               "peak_rss"]
    table = [[(", ".join(f"{k} {v:.2f}x" for k, v in r.get("ratios", {}).items()) if c == "ratios" else
               memory_text(r) if c == "peak_rss" else fmt(r.get(c))) for c in columns] for r in rows]
    widths = [max(len(c), *(len(t[i]) for t in table)) if table else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths)))
    for t in table:
        print("  ".join(v.ljust(w) for v, w in zip(t, widths)))


def script_main(kernel: str, cases_fn, description: str, argv=None, add_arguments=None, notes=()) -> int:
    """``python bench/<op>.py [--quick] [--device cpu|cuda] [--threads N] [--out x.json]``: run the
    op's cases, print the table, save the report (bench.json schema, one kernel) and exit 1 when a
    row failed its check or raised. ``add_arguments(parser)`` adds script options, passed on to
    ``cases_fn`` as keyword arguments."""
    parser = argparse.ArgumentParser(description=description.strip().splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (seconds)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--threads", type=int, default=0, help="torch intra-op threads (0 = torch's default)")
    parser.add_argument("--out", type=Path, default=None, help="write the report as JSON here (atomic)")
    extra = add_arguments(parser) if add_arguments else []
    args = parser.parse_args(argv)
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    options = {name: getattr(args, name) for name in extra}
    start = time.perf_counter()
    rows = []
    try:
        rows = run_cases(cases_fn(args.quick, args.device, **options), args.device)
    except Exception as exc:
        rows.append(setup_error_row(kernel, exc))
        _default_log(f"!! {kernel}: setup raised {rows[-1]['note']}", err=True)
    settings = {"device": args.device, "only": [kernel], "quick": args.quick, "options": options}
    kernels = {kernel: {"title": kernel, "description": description.strip().splitlines()[0], "notes": list(notes)}}
    report = build_report(rows, settings, kernels, None, args.device, time.perf_counter() - start)
    print(f"machine: {machine_line(report)}")
    print_rows(report["rows"])
    for note in notes:
        print(f"note: {note}")
    if args.out:
        save_json(report, args.out)
        print(f"saved {args.out}")
    if report["failed"]:
        print(f"FAILED: {'; '.join(report['failed'])}", file=sys.stderr)
        return 1
    return 0
