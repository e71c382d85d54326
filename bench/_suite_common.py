"""Shared machinery of the benchmark suite (``fastcsi bench``): timing, device peaks, roofline
arithmetic, machine description and the report writers (bench.json, bench.md, one PNG per kernel).

Row schema (one dict per kernel x case x method, every figure of the report):
  kernel, case, size, size_unit        what ran, and the work measure the PNG puts on its x axis
  method, role                         role: "ours" | "baseline" | "control" | "anchor"
  status                               "ok" | "failed" (correctness check) | "error" (raised) | "skipped"
  error, tolerance, correct            correctness metric measured on the same inputs BEFORE timing
  seconds, times, repeats              median wall time (CUDA events on GPU) and every repeat
  items, items_unit, throughput        throughput = items / seconds (e.g. atoms/s, rows/s)
  flops, bytes, dtype                  work model (nominal, see each kernel) for the roofline
  ratios                               {baseline method: baseline seconds / seconds} (> 1 = faster)
  roofline                             achieved FLOP/s and B/s vs the measured peaks (see ``roofline``)
  note                                 why skipped / failed, or what the row means
"""
from __future__ import annotations

import json
import math
import os
import platform
import statistics
import time
from pathlib import Path

ROLES = ("ours", "baseline", "control", "anchor")
STATUSES = ("ok", "failed", "error", "skipped")


# ----------------------------------------------------------------------------------------- timing
def _cuda(device: str) -> bool:
    return str(device).startswith("cuda")


def measure(fn, device: str = "cpu", repeats: int = 3, warmup: int = 1) -> dict:
    """Median seconds of ``fn()`` after ``warmup`` calls. CUDA: one pair of events per repeat
    (device time of the stream, no host-side jitter); CPU: ``time.perf_counter``."""
    for _ in range(warmup):
        fn()
    times = []
    if _cuda(device):
        import torch

        torch.cuda.synchronize(device)
        for _ in range(repeats):
            start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            stop.record()
            stop.synchronize()
            times.append(start.elapsed_time(stop) / 1e3)
    else:
        for _ in range(repeats):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
    return {"seconds": statistics.median(times), "times": times, "repeats": repeats}


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
    for name in ("scipy", "vesin", "matscipy", "ase", "triton", "numba", "matplotlib"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


# ------------------------------------------------------------------------------------------ rows
def finish_rows(rows: list[dict], peaks: dict | None) -> list[dict]:
    """Fill throughput, ratios vs every baseline of the same kernel, case and size, and the roofline."""
    for row in rows:
        ok = row["status"] == "ok" and row.get("seconds")
        row["throughput"] = row["items"] / row["seconds"] if ok and row.get("items") else None
        row["roofline"] = (roofline(row.get("flops"), row.get("bytes"), row["seconds"], peaks, row.get("dtype", "float32"))
                           if ok and row["role"] != "anchor" else None)
    for row in rows:
        row["ratios"] = {}
        if not (row["status"] == "ok" and row.get("seconds")):
            continue
        for other in rows:
            if (other["kernel"], other["case"], other["size"]) == (row["kernel"], row["case"], row["size"]) \
                    and other is not row \
                    and other["role"] in ("baseline", "anchor") and other["status"] == "ok" and other.get("seconds"):
                row["ratios"][other["method"]] = other["seconds"] / row["seconds"]
    return rows


# ---------------------------------------------------------------------------------------- writers
def _fmt(value, digits: int = 3) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.{digits}g}"
    return str(value)


def _si(value) -> str:
    if value is None:
        return ""
    for scale, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.3g} {prefix}"
    return f"{value:.3g} "


def markdown(report: dict) -> str:
    machine, peaks = report["machine"], report.get("peaks") or {}
    lines = ["# fastcsi bench", "",
             f"device {report['settings']['device']}, quick={report['settings']['quick']}, "
             f"kernels {', '.join(report['settings']['only'])}, total {report['total_seconds']:.1f} s", "",
             f"machine: {machine.get('cpu_model')}, {machine.get('cores')} cores, {machine.get('ram_gb')} GB RAM, "
             f"load average {_fmt(machine.get('load_average'))}, GPU {(machine.get('gpu') or {}).get('name', 'none')}",
             "versions: " + ", ".join(f"{k} {v}" for k, v in report["versions"].items() if v), ""]
    if peaks:
        lines += [f"measured peaks ({peaks['device']}): bandwidth {_si(peaks.get('bandwidth_Bps'))}B/s, "
                  f"float32 {_si(peaks.get('flops_float32'))}FLOP/s, float64 {_si(peaks.get('flops_float64'))}FLOP/s "
                  f"({'; '.join(peaks['method'].values())})", ""]
    by_kernel: dict[str, list[dict]] = {}
    for row in report["rows"]:
        by_kernel.setdefault(row["kernel"], []).append(row)
    for kernel, rows in by_kernel.items():
        meta = report["kernels"].get(kernel, {})
        lines += [f"## {kernel}", "", meta.get("description", ""), ""]
        baselines = list(dict.fromkeys(m for r in rows for m in r["ratios"]))
        header = ["case", "size", "method", "role", "median s", "throughput", *[f"x vs {b}" for b in baselines],
                  "correct (err)", "roofline"]
        lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for r in rows:
            roof = r.get("roofline") or {}
            roof_text = ""
            if roof.get("fraction") is not None:
                parts = []
                if roof.get("achieved_flops"):
                    parts.append(f"{_si(roof['achieved_flops'])}FLOP/s")
                if roof.get("achieved_Bps"):
                    parts.append(f"{_si(roof['achieved_Bps'])}B/s")
                roof_text = f"{100 * roof['fraction']:.2g}% ({roof['bound']}; {', '.join(parts)})"
            status = {"ok": f"yes ({_fmt(r.get('error'), 2)})", "failed": f"**FAILED** ({_fmt(r.get('error'), 2)})",
                      "error": "**ERROR**", "skipped": "skipped"}[r["status"]]
            if r["role"] == "anchor":
                status = "recorded"
            cells = [r["case"], f"{r['size']} {r['size_unit']}", r["method"], r["role"], _fmt(r.get("seconds")),
                     f"{_si(r['throughput'])}{r['items_unit']}/s" if r.get("throughput") else "",
                     *[_fmt(r["ratios"].get(b)) for b in baselines], status, roof_text]
            lines.append("| " + " | ".join(cells) + " |")
        notes = [f"- {r['method']} ({r['case']}): {r['note']}" for r in rows if r.get("note")]
        notes += [f"- {n}" for n in meta.get("notes", [])]
        if notes:
            lines += ["", *notes]
        lines.append("")
    return "\n".join(lines)


def plot_kernel(rows: list[dict], kernel: str, path: Path, title: str = "") -> bool:
    """Time vs size, log-log, one line per method; False when there is nothing to draw."""
    series: dict[str, list[tuple[float, float]]] = {}
    unit = ""
    for r in rows:
        if r["kernel"] == kernel and r["status"] == "ok" and r.get("seconds") and r["role"] != "anchor":
            series.setdefault(r["method"], []).append((float(r["size"]), r["seconds"]))
            unit = r["size_unit"]
    if not series:
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from fastcsi.utils import atomic_path

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for method, points in series.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel(unit)
    ax.set_ylabel("median seconds")
    ax.set_title(title or kernel)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
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
    with atomic_write(outdir / "bench.json") as handle:
        json.dump(report, handle, indent=1, default=str, allow_nan=True)
    return report["files"]
