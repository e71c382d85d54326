"""Benchmark: streaming covariance of N x 256 float32 features vs np.cov in memory (the baseline).

Inputs: N x 256 float32 rows with a large common offset (1e3: exposes naive sums of squares), fed
in 65536-row chunks. Reference: covariance_ref (two-pass float64 moments + Chan merge) on the whole
array; error = max |C - C_ref| / max |C_ref|, tolerance 1e-10 for the float64 paths, 1e-6 stated
for the float32 ones. Methods (timed round-robin by bench/harness.py, same BLAS settings):
  fastcsi FeatureStats (cpu)   ours: C++ one-triangle float64 SYRK with the upcast and centring
                               fused into packing (csrc/covariance.cpp), Chan merge per chunk
  np.cov                       baseline: a float64 copy of X in memory (O(N d) extra), a centring
                               pass, then dot(X, X.T), which numpy hands to BLAS dsyrk
  torch.cov                    baseline: the same in torch (float64 copy)
  blocked BLAS gemm / syrk     controls: our previous CPU path (centred float64 dgemm per block) and
                               the same with scipy's dsyrk
  chan gemm f64 / gemm f32     controls: plain chunked float64 Chan update with a full GEMM per
                               chunk; float32 GEMM per centred chunk (fast, ~1e-7 accurate)
GPU (--device cuda): FeatureStats backends "triton" (float32 tiles, float64 accumulation) and
"cuda" (float64 cuBLAS) vs torch.cov on the device. Work model: N d (d+1) flops (one triangle,
FMA = 2), N d 4 bytes (one read of X); for d = 256 the float32 GPU path is compute bound.

--single-thread: every method on one core (OpenBLAS with 1 thread, native with num_threads=1):
the per-core comparison, which stays meaningful when other jobs share the machine (OpenBLAS's
spinning threads degrade badly when the cores are oversubscribed).
--streaming: also feed 10^7 x 256 float32 rows (generated on the fly) to FeatureStats in a fresh
process and report its peak RSS growth, O(d^2 + chunk) where np.cov would need a 20 GB copy.

    python bench/covariance.py [--quick] [--single-thread] [--streaming] [--device cpu|cuda] [--out x.json]
"""
from __future__ import annotations

import multiprocessing
import os
import resource
import sys
import time

if __name__ == "__main__" and "--single-thread" in sys.argv:
    # Must precede the first numpy import: OpenBLAS reads it when it loads.
    for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[_var] = "1"

import numpy as np  # noqa: E402

from fastcsi._bench.harness import Case, Method, relative_error, script_main  # noqa: E402

KERNEL = "covariance"
DIM = 256
CHUNK = 65536


def features(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    mix = (np.eye(DIM) + rng.standard_normal((DIM, DIM)) * 0.05).astype(np.float32)
    return rng.standard_normal((n, DIM), dtype=np.float32) @ mix + np.float32(1e3)


def chunked(x, moments):
    """Covariance of ``x`` from per-chunk (count, mean, scatter) triples, Chan-merged."""
    from fastcsi.stats.covariance_ref import merge_moments

    acc = (0, np.zeros(DIM), np.zeros((DIM, DIM)))
    for start in range(0, len(x), CHUNK):
        acc = merge_moments(*acc, *moments(x[start:start + CHUNK]))
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


def feature_stats(backend: str):
    """What users run: FeatureStats.update per chunk, then covariance()."""
    from fastcsi.stats import FeatureStats

    def fn(x):
        stats = FeatureStats(DIM)
        for start in range(0, len(x), CHUNK):
            stats.update(x[start:start + CHUNK], backend=backend)
        return stats.covariance()
    return fn


def cases(quick: bool = True, device: str = "cpu", sizes=None, single_thread: bool = False):
    import torch

    from fastcsi.stats.covariance_cpu import chunk_moments_cpu
    from fastcsi.stats.covariance_ref import chunk_moments_ref

    def reference(inp):
        n, _, scatter = chunk_moments_ref(inp["x"])
        return scatter / (n - 1)

    def blas(method):
        return lambda inp: chunked(inp["x"], lambda c: chunk_moments_cpu(c, method=method))

    if single_thread:  # the same kernel and merge as FeatureStats, on one thread
        def ours(inp):
            return chunked(inp["x"], lambda c: chunk_moments_cpu(c, method="native", num_threads=1))
    else:
        def ours(inp, run=feature_stats("cpu")):
            return run(inp["x"])

    cuda = str(device).startswith("cuda")
    for n in sizes or ((2048, 8192) if quick else (16384, 131072, 1_048_576)):
        def inputs(n=n):
            x = features(n, seed=n)
            return {"x": x, "gpu": torch.from_numpy(x).to(device) if cuda else None}

        methods = [
            Method("fastcsi FeatureStats (cpu)", "ours", ours),
            Method("np.cov", "baseline", lambda inp: np.cov(inp["x"], rowvar=False)),
            Method("torch.cov", "baseline", lambda inp: torch.cov(torch.from_numpy(inp["x"]).double().T)),
            Method("blocked BLAS gemm", "control", blas("gemm")),
            Method("blocked BLAS syrk", "control", blas("syrk")),
            Method("chan gemm f64", "control", lambda inp: chunked(inp["x"], _chan_gemm_f64)),
            Method("gemm f32", "control", lambda inp: chunked(inp["x"], _gemm_f32), "float32", 1e-6),
        ]
        if cuda:
            methods += [Method("fastcsi FeatureStats (triton)", "ours",
                               lambda inp: feature_stats("triton")(inp["gpu"]), "float32", 1e-6),
                        Method("fastcsi FeatureStats (cuda f64)", "ours", lambda inp: feature_stats("cuda")(inp["gpu"])),
                        Method("torch.cov (cuda)", "baseline", lambda inp: torch.cov(inp["gpu"].double().T))]
        yield Case(KERNEL, f"N x {DIM} float32, offset 1e3", n, "rows", n, "rows", inputs, reference, relative_error,
                   methods, flops=float(n) * DIM * (DIM + 1), bytes=float(n) * DIM * 4, repeats=3 if quick else 5)


# ------------------------------------------------------------------------------ memory (streaming)
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
    from fastcsi.stats import FeatureStats

    rng = np.random.default_rng(1)
    base = rng.standard_normal((CHUNK, DIM), dtype=np.float32) + np.float32(1e3)
    stats = FeatureStats(DIM)
    stats.update(base[:10])  # allocate the accumulators before measuring
    rss_before = _peak_rss_bytes()
    start, cpu_start = time.perf_counter(), time.process_time()
    remaining, step = n_total, 0
    while remaining > 0:
        rows = min(CHUNK, remaining)
        # distinct data per chunk without regenerating randoms (keeps the timing about stats)
        stats.update(base[:rows] * np.float32(1 + 1e-3 * (step % 7)) + np.float32(step % 5))
        remaining -= rows
        step += 1
    return {"rows": n_total, "seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu_start,
            "peak_rss_delta_mb": (_peak_rss_bytes() - rss_before) / 2**20, "peak_rss_mb": _peak_rss_bytes() / 2**20,
            "np_cov_would_need_mb": n_total * DIM * 8 / 2**20}


def streaming_fresh_process(n_total: int = 10_000_000) -> dict:
    # The peak is a high-water mark: measured in this process it would still hold np.cov's copy.
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_streaming, (n_total,))


def _arguments(parser):
    parser.add_argument("--single-thread", action="store_true",
                        help="one core for every method (OpenBLAS 1 thread, native num_threads=1)")
    return ["single_thread"]


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    streaming = "--streaming" in argv
    rc = script_main(KERNEL, cases, __doc__, [a for a in argv if a != "--streaming"], _arguments)
    if streaming:
        s = streaming_fresh_process()
        print(f"streaming {s['rows']:.0e} x {DIM}: {s['seconds']:.1f} s ({s['cpu_seconds']:.1f} s CPU), peak RSS "
              f"+{s['peak_rss_delta_mb']:.0f} MB ({s['peak_rss_mb']:.0f} MB in all; np.cov would need "
              f"{s['np_cov_would_need_mb']:.0f} MB for the float64 copy)")
    return rc


if __name__ == "__main__":
    sys.exit(main())
