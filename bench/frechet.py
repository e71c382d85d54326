"""Benchmark: Fréchet distance trace term, ours vs scipy.linalg.sqrtm(S1 @ S2) (pytorch-fid / the paper).

Methods timed in the same run, same BLAS settings:
  sqrtm     scipy.linalg.sqrtm(S1 @ S2).real  (the named baseline: pytorch-fid's calculate_frechet_distance)
  2-eigh    our ``ref`` backend: eigh(S1) -> S1^1/2, eigvalsh(S1^1/2 S2 S1^1/2)
  ours      our ``cpu`` backend: potrf(S1), sygst(L^T S2 L), eigenvalues only (syevd)
  torch     our ``cuda`` backend's code (same reduction, torch.linalg; on CPU tensors, or on CUDA
            through ``backend="cuda"`` when --device cuda)
Correctness first: every method's FD vs the 2-eigh value (two exact formulations must agree to
~1e-12; the acceptance bound for ours is 1e-10 relative).

    python bench/frechet.py [--quick] [--device cpu|cuda] [--out bench_out/frechet.json]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import scipy.linalg

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _stats_common import blas_report, print_table, save_json, time_median  # noqa: E402

from fastcsi.stats.frechet import frechet_distance  # noqa: E402
from fastcsi.stats.frechet_cuda import frechet_distance_cuda  # noqa: E402


def _covariances(d: int, seed: int = 0):
    """Two well-conditioned, different sample covariances of 2d samples (Wishart-like)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * d, d))
    y = rng.standard_normal((2 * d, d)) * np.linspace(0.5, 2.0, d) + 0.1 * x
    mu1, mu2 = x.mean(0), y.mean(0) + 0.05
    return mu1, np.cov(x, rowvar=False), mu2, np.cov(y, rowvar=False)


def _sqrtm_fd(mu1, s1, mu2, s2):
    root = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def run(quick: bool = False, device: str = "cpu") -> dict:
    sizes = (256, 512) if quick else (256, 1024, 2048)
    rows = []
    for d in sizes:
        mu1, s1, mu2, s2 = _covariances(d)
        exact = frechet_distance(mu1, s1, mu2, s2, backend="ref")
        repeats = 3 if d <= 1024 else 2
        methods = {
            "sqrtm": lambda: _sqrtm_fd(mu1, s1, mu2, s2),
            "2-eigh": lambda: frechet_distance(mu1, s1, mu2, s2, backend="ref"),
            "ours": lambda: frechet_distance(mu1, s1, mu2, s2, backend="cpu"),
        }
        if device.startswith("cuda"):
            import torch

            t1, t2 = torch.tensor(s1, device=device), torch.tensor(s2, device=device)
            m1, m2 = torch.tensor(mu1, device=device), torch.tensor(mu2, device=device)

            def gpu():
                value = frechet_distance(m1, t1, m2, t2, backend="cuda")
                torch.cuda.synchronize()
                return value

            methods["torch-cuda"] = gpu
        else:
            import torch

            cpu_tensors = [torch.from_numpy(a) for a in (mu1, s1, mu2, s2)]
            methods["torch"] = lambda: frechet_distance_cuda(*cpu_tensors)
        timings = {}
        for name, fn in methods.items():
            value = fn()  # correctness first (also the warm-up)
            median, _ = time_median(fn, repeats=repeats, warmup=0)
            timings[name] = median
            rows.append(
                {"d": d, "method": name, "seconds": median, "rel_err_vs_2eigh": abs(value - exact) / abs(exact), "fd": value}
            )
        for row in rows[-len(methods):]:
            row["speedup_vs_sqrtm"] = timings["sqrtm"] / row["seconds"]
    ours = [r for r in rows if r["method"] == "ours"]
    result = {
        "bench": "frechet",
        "quick": quick,
        "device": device,
        "blas": blas_report(),
        "rows": rows,
        "summary": {f"speedup_d{r['d']}": r["speedup_vs_sqrtm"] for r in ours},
        "max_rel_err_ours": max(r["rel_err_vs_2eigh"] for r in ours),
    }
    return result


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="d = 256, 512 only (seconds)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--out", type=Path, default=None, help="write results as JSON")
    args = parser.parse_args(argv)
    result = run(quick=args.quick, device=args.device)
    print(f"BLAS: {result['blas']}")
    print_table(result["rows"], ["d", "method", "seconds", "speedup_vs_sqrtm", "rel_err_vs_2eigh"])
    if args.out:
        save_json(result, args.out)
        print(f"saved {args.out}")
    if result["max_rel_err_ours"] > 1e-10:
        print("FAILED: ours differs from the 2-eigh formulation by more than 1e-10", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
