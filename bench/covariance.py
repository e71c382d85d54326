"""Benchmark: streaming covariance of N x 256 float32 features vs np.cov in memory (the baseline).

Methods timed in the same run, round-robin (one call of each per round, so load drifts hit all alike),
same BLAS settings; correctness first (max |cov - np.cov| / max |np.cov|), one warm-up call each:
  np.cov            np.cov(X, rowvar=False): a float64 copy of X in memory (O(N d) extra), a centring
                    pass, then dot(X, X.T), which numpy hands to OpenBLAS dsyrk (one triangle)
  chan-gemm-f64     plain chunked float64 Chan update with a full GEMM per chunk (our ``ref`` per chunk)
  gemm-f32          float32 GEMM per centred chunk, float64 accumulation (fast but ~1e-7 accurate)
  ours (native)     FeatureStats.update, backend "cpu" default: C++ one-triangle float64 SYRK with the
                    upcast + centring fused into packing (csrc/covariance.cpp), Chan merge
  ours (cpu, gemm)  the blocked BLAS path that was the default before: centred float64 dgemm per block
  ours (cpu, syrk)  the same blocked BLAS path with scipy's dsyrk
Each row reports the median wall time and the median CPU time of the process (all threads): on a
shared machine the CPU time is the steadier measure of the work done.
Streaming run (skipped by --quick): 10^7 x 256 float32 fed in 65536-row chunks (generated on the fly)
to FeatureStats in a fresh process; reports its peak RSS growth, which stays O(d^2 + chunk) instead of
the 20 GB np.cov would need.

GPU (when --device cuda): backends "triton" (float32 tiles, float64 accumulation) and "cuda"
(float64 cuBLAS). Roofline bound for the triton kernel, one pass over X:
    t >= max(N * d^2 / F32_FLOPS,  N * d * 4 bytes / HBM_BW)      (one triangle = N d^2 flops)
e.g. H100 SXM: F32 (non-tensor) ~67e12 FLOP/s, TF32 ~495e12, HBM ~3.35e12 B/s; for d = 256 the
float32 path is compute bound (N d^2 / 67e12 > N d 4 / 3.35e12 when d > 80).

--single-thread: every method on one core (OpenBLAS with 1 thread, native with num_threads=1): the
per-core comparison, which stays meaningful when other jobs share the machine (OpenBLAS's spinning
threads degrade badly when the cores are oversubscribed, the single-threaded runs do not).

    python bench/covariance.py [--quick] [--single-thread] [--device cpu|cuda] [--out bench_out/covariance.json]
"""
from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import statistics
import sys
import time
from pathlib import Path

if __name__ == "__main__" and "--single-thread" in sys.argv:
    # Must precede the first numpy import: OpenBLAS reads it when it loads.
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats_common import blas_report, print_table, save_json  # noqa: E402

from fastcsi.stats import FeatureStats  # noqa: E402
from fastcsi.stats.covariance_ref import merge_moments  # noqa: E402

DIM = 256
CHUNK = 65536


def _data(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((n, DIM), dtype=np.float32)
    mix = (np.eye(DIM) + rng.standard_normal((DIM, DIM)) * 0.05).astype(np.float32)
    return base @ mix + np.float32(1e3)  # large common offset: exposes naive sums of squares


def _chunked(x: np.ndarray, kernel):
    acc = (0, np.zeros(DIM), np.zeros((DIM, DIM)))
    for start in range(0, len(x), CHUNK):
        acc = merge_moments(*acc, *kernel(x[start : start + CHUNK]))
    return acc[2] / (acc[0] - 1)


def _chan_gemm_f64(chunk):
    c64 = chunk.astype(np.float64)
    mean = c64.mean(0)
    c64 -= mean
    return len(chunk), mean, c64.T @ c64


def _gemm_f32(chunk):
    mean = chunk.mean(0, dtype=np.float64)
    centred = (chunk - mean.astype(np.float32)).astype(np.float32)
    return len(chunk), mean, (centred.T @ centred).astype(np.float64)


def _ours(x, backend="cpu"):
    stats = FeatureStats(DIM)
    for start in range(0, len(x), CHUNK):
        stats.update(x[start : start + CHUNK], backend=backend)
    return stats.covariance()


def _ours_native_threads(x, num_threads):
    # What FeatureStats.update runs (native kernel + Chan merge), with an explicit thread count.
    from fastcsi.stats.covariance_cpu import chunk_moments_cpu

    acc = (0, np.zeros(DIM), np.zeros((DIM, DIM)))
    for start in range(0, len(x), CHUNK):
        acc = merge_moments(*acc, *chunk_moments_cpu(x[start : start + CHUNK], method="native", num_threads=num_threads))
    return acc[2] / (acc[0] - 1)


def _ours_blas(x, method):
    # The blocked BLAS kernel (gemm: the previous default; syrk: scipy dsyrk), same chunking.
    from fastcsi.stats.covariance_cpu import chunk_moments_cpu

    acc = (0, np.zeros(DIM), np.zeros((DIM, DIM)))
    for start in range(0, len(x), CHUNK):
        acc = merge_moments(*acc, *chunk_moments_cpu(x[start : start + CHUNK], method=method))
    return acc[2] / (acc[0] - 1)


def _peak_rss_bytes() -> int:
    """Peak resident memory of this process image. Linux: VmHWM, which starts afresh at exec;
    ru_maxrss would carry the parent's high-water mark into a spawned child."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _streaming(n_total: int) -> dict:
    """Feed n_total x 256 float32 rows in chunks; only one chunk exists at a time."""
    rng = np.random.default_rng(1)
    base = rng.standard_normal((CHUNK, DIM), dtype=np.float32) + np.float32(1e3)
    stats = FeatureStats(DIM)
    stats.update(base[:10])  # allocate the accumulators before measuring
    rss_before = _peak_rss_bytes()
    start = time.perf_counter()
    cpu_start = time.process_time()
    remaining = n_total
    step = 0
    while remaining > 0:
        rows = min(CHUNK, remaining)
        # Distinct data per chunk without regenerating randoms (cheap, keeps the timing about stats).
        chunk = base[:rows] * np.float32(1 + 1e-3 * (step % 7)) + np.float32(step % 5)
        stats.update(chunk)
        remaining -= rows
        step += 1
    return {
        "rows": n_total,
        "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu_start,
        "peak_rss_delta_mb": (_peak_rss_bytes() - rss_before) / 2**20,
        "peak_rss_mb": _peak_rss_bytes() / 2**20,  # the whole process (interpreter, numpy, torch, one chunk)
        "np_cov_would_need_mb": n_total * DIM * 8 / 2**20,
    }


def _streaming_fresh_process(n_total: int) -> dict:
    # The peak is a high-water mark: measured in this process it would still hold np.cov's copy.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_streaming, (n_total,))


def _time_round_robin(methods: dict, repeats: int) -> dict:
    """{name: (median wall s, median CPU s, walls)}; one call of every method per round."""
    walls = {name: [] for name in methods}
    cpus = {name: [] for name in methods}
    for _ in range(repeats):
        for name, fn in methods.items():
            wall0, cpu0 = time.perf_counter(), time.process_time()
            fn()
            cpus[name].append(time.process_time() - cpu0)
            walls[name].append(time.perf_counter() - wall0)
    return {name: (statistics.median(walls[name]), statistics.median(cpus[name]), walls[name]) for name in methods}


def run(quick: bool = False, device: str = "cpu", single_thread: bool = False) -> dict:
    """single_thread: native on one thread (set OPENBLAS_NUM_THREADS=1 before numpy loads for the BLAS)."""
    n = 50_000 if quick else 1_000_000
    repeats = 3
    x = _data(n)
    reference = np.cov(x, rowvar=False)
    scale = np.abs(reference).max()
    methods = {
        "np.cov": lambda: np.cov(x, rowvar=False),
        "chan-gemm-f64": lambda: _chunked(x, _chan_gemm_f64),
        "gemm-f32": lambda: _chunked(x, _gemm_f32),
        "ours (native)": (lambda: _ours_native_threads(x, 1)) if single_thread else (lambda: _ours(x)),
        "ours (cpu, gemm)": lambda: _ours_blas(x, "gemm"),
        "ours (cpu, syrk)": lambda: _ours_blas(x, "syrk"),
    }
    if device.startswith("cuda"):
        import torch

        xt = torch.from_numpy(x).to(device)

        def on_gpu(backend):
            def fn():
                out = _ours(xt, backend)
                torch.cuda.synchronize()
                return out

            return fn

        methods["ours (triton)"] = on_gpu("triton")
        methods["ours (cuda f64)"] = on_gpu("cuda")
    errors = {name: float(np.abs(fn() - reference).max() / scale) for name, fn in methods.items()}  # + warm-up
    timings = _time_round_robin(methods, repeats)
    rows = []
    for name in methods:
        wall, cpu, walls = timings[name]
        rows.append({"method": name, "rows": n, "seconds": wall, "cpu_seconds": cpu, "all_seconds": walls,
                     "rel_err_vs_np_cov": errors[name]})
    baseline = rows[0]
    for row in rows:
        row["speedup_vs_np_cov"] = baseline["seconds"] / row["seconds"]
        row["cpu_speedup_vs_np_cov"] = baseline["cpu_seconds"] / row["cpu_seconds"]
    from fastcsi import _native

    result = {"bench": "covariance", "quick": quick, "device": device, "dim": DIM, "single_thread": single_thread,
              "blas": blas_report(),
              "native_isa": _native.native.covariance_kernel_isa() if _native.has("covariance_kernel_isa") else None,
              "load_average": list(_load_average()), "rows": rows}
    if not quick:
        del x, reference
        result["streaming"] = _streaming_fresh_process(10_000_000)
    return result


def _load_average():
    try:
        return os.getloadavg()
    except OSError:  # pragma: no cover
        return ()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^5 rows, no streaming run (seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--single-thread", action="store_true",
                        help="one core for every method (OpenBLAS 1 thread, native num_threads=1)")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, device=args.device, single_thread=args.single_thread)
    print(f"BLAS: {result['blas']}")
    print(f"native micro-kernel: {result['native_isa']}; single thread: {result['single_thread']}; "
          f"load average after timing: {[round(v, 1) for v in result['load_average']]}")
    print_table(result["rows"], ["method", "rows", "seconds", "speedup_vs_np_cov", "cpu_seconds",
                                 "cpu_speedup_vs_np_cov", "rel_err_vs_np_cov"])
    if "streaming" in result:
        s = result["streaming"]
        print(
            f"streaming {s['rows']:.0e} x {DIM}: {s['seconds']:.1f} s ({s['cpu_seconds']:.1f} s CPU), "
            f"peak RSS +{s['peak_rss_delta_mb']:.0f} MB during the run ({s['peak_rss_mb']:.0f} MB in all) "
            f"(np.cov would need {s['np_cov_would_need_mb']:.0f} MB for the float64 copy)"
        )
    if args.out:
        save_json(result, args.out)
        print(f"saved {args.out}")
    ours = next(r for r in result["rows"] if r["method"] == "ours (native)")
    if ours["rel_err_vs_np_cov"] > 1e-12:
        print("FAILED: ours differs from np.cov by more than 1e-12 relative", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
