"""Benchmark: streaming covariance of N x 256 float32 features vs np.cov in memory (the baseline).

Methods timed in the same run, same BLAS settings (correctness first: max |cov - np.cov| / max |np.cov|):
  np.cov            np.cov(X, rowvar=False): upcasts all of X to float64 in memory (O(N d) extra)
  chan-gemm-f64     plain chunked float64 Chan update with a full GEMM per chunk (our ``ref`` per chunk)
  gemm-f32          float32 GEMM per centred chunk, float64 accumulation (fast but ~1e-7 accurate)
  ours (cpu)        FeatureStats.update, backend "cpu": blocked, centred float64 GEMM, Chan merge
  ours (cpu, syrk)  the same blocked kernel with one-triangle SYRK (what SYRK buys on this BLAS)
Streaming run (skipped by --quick): 10^7 x 256 fed in 65536-row chunks to FeatureStats; reports peak
RSS growth, which stays O(d^2 + chunk) instead of the 20 GB np.cov would need.

GPU (when --device cuda): backends "triton" (float32 tiles, float64 accumulation) and "cuda"
(float64 cuBLAS). Roofline bound for the triton kernel, one pass over X:
    t >= max(N * d^2 / F32_FLOPS,  N * d * 4 bytes / HBM_BW)      (one triangle = N d^2 flops)
e.g. H100 SXM: F32 (non-tensor) ~67e12 FLOP/s, TF32 ~495e12, HBM ~3.35e12 B/s; for d = 256 the
float32 path is compute bound (N d^2 / 67e12 > N d 4 / 3.35e12 when d > 80).

    python bench/covariance.py [--quick] [--device cpu|cuda] [--out bench_out/covariance.json]
"""
from __future__ import annotations

import argparse
import resource
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats_common import blas_report, print_table, save_json, time_median  # noqa: E402

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


def _ours_syrk(x):
    # Same blocked kernel with one-triangle SYRK instead of GEMM: shows what SYRK buys on this BLAS.
    from fastcsi.stats.covariance_cpu import chunk_moments_cpu

    acc = (0, np.zeros(DIM), np.zeros((DIM, DIM)))
    for start in range(0, len(x), CHUNK):
        acc = merge_moments(*acc, *chunk_moments_cpu(x[start : start + CHUNK], method="syrk"))
    return acc[2] / (acc[0] - 1)


def _peak_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def _streaming(n_total: int) -> dict:
    """Feed n_total x 256 float32 rows in chunks; only one chunk exists at a time."""
    import time

    rng = np.random.default_rng(1)
    base = rng.standard_normal((CHUNK, DIM), dtype=np.float32) + np.float32(1e3)
    stats = FeatureStats(DIM)
    stats.update(base[:10])  # allocate the accumulators before measuring
    rss_before = _peak_rss_bytes()
    start = time.perf_counter()
    remaining = n_total
    step = 0
    while remaining > 0:
        rows = min(CHUNK, remaining)
        # Distinct data per chunk without regenerating randoms (cheap, keeps the timing about stats).
        chunk = base[:rows] * np.float32(1 + 1e-3 * (step % 7)) + np.float32(step % 5)
        stats.update(chunk)
        remaining -= rows
        step += 1
    seconds = time.perf_counter() - start
    return {
        "rows": n_total,
        "seconds": seconds,
        "peak_rss_delta_mb": (_peak_rss_bytes() - rss_before) / 2**20,
        "np_cov_would_need_mb": n_total * DIM * 8 / 2**20,
    }


def run(quick: bool = False, device: str = "cpu") -> dict:
    n = 100_000 if quick else 1_000_000
    repeats = 3
    x = _data(n)
    reference = np.cov(x, rowvar=False)
    scale = np.abs(reference).max()
    methods = {
        "np.cov": lambda: np.cov(x, rowvar=False),
        "chan-gemm-f64": lambda: _chunked(x, _chan_gemm_f64),
        "gemm-f32": lambda: _chunked(x, _gemm_f32),
        "ours (cpu)": lambda: _ours(x),
        "ours (cpu, syrk)": lambda: _ours_syrk(x),
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
    rows = []
    for name, fn in methods.items():
        error = float(np.abs(fn() - reference).max() / scale)  # correctness first (and warm-up)
        median, times = time_median(fn, repeats=repeats, warmup=0)
        rows.append({"method": name, "rows": n, "seconds": median, "rel_err_vs_np_cov": error})
    baseline = rows[0]["seconds"]
    for row in rows:
        row["speedup_vs_np_cov"] = baseline / row["seconds"]
    result = {"bench": "covariance", "quick": quick, "device": device, "dim": DIM, "blas": blas_report(), "rows": rows}
    if not quick:
        del x, reference
        result["streaming"] = _streaming(10_000_000)
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^5 rows, no streaming run (seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, device=args.device)
    print(f"BLAS: {result['blas']}")
    print_table(result["rows"], ["method", "rows", "seconds", "speedup_vs_np_cov", "rel_err_vs_np_cov"])
    if "streaming" in result:
        s = result["streaming"]
        print(
            f"streaming {s['rows']:.0e} x {DIM}: {s['seconds']:.1f} s, peak RSS +{s['peak_rss_delta_mb']:.0f} MB "
            f"(np.cov would need {s['np_cov_would_need_mb']:.0f} MB for the float64 copy)"
        )
    if args.out:
        save_json(result, args.out)
        print(f"saved {args.out}")
    ours = next(r for r in result["rows"] if r["method"] == "ours (cpu)")
    if ours["rel_err_vs_np_cov"] > 1e-12:
        print("FAILED: ours differs from np.cov by more than 1e-12 relative", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
