"""Benchmark: Fréchet distance of two Gaussians, ours vs scipy.linalg.sqrtm(S1 @ S2) (pytorch-fid / the paper).

Inputs: means and two Wishart-like d x d sample covariances of 2d samples (well conditioned,
different). Reference: frechet_ref (eigh(S1) -> S1^1/2, eigenvalues of S1^1/2 S2 S1^1/2); error =
|FD - FD_ref| / |FD_ref|, tolerance 1e-10 (two exact formulations differ by rounding only), 1e-6
stated for sqrtm (its Schur-based square root of a non-symmetric product loses digits).
Methods (timed round-robin by bench/harness.py, same BLAS settings):
  fastcsi frechet (cpu)      ours: potrf(S1), sygst(L^T S2 L), eigenvalues only (syevd)
  scipy sqrtm (pytorch-fid)  baseline: scipy.linalg.sqrtm(S1 @ S2).real, pytorch-fid's formula
  fastcsi frechet (ref)      control: the 2-eigh oracle itself
  fastcsi frechet (torch)    control: the "cuda" backend's code (torch.linalg) on CPU tensors
GPU (--device cuda): the "cuda" backend on device tensors. Work model (nominal): 8/3 d^3 flops
(potrf + sygst + eigenvalues), 2 d^2 8 bytes.

    python bench/frechet.py [--quick] [--device cpu|cuda] [--out bench_out/frechet.json]
"""
from __future__ import annotations

import sys

import numpy as np

from fastcsi._bench.harness import Case, Method, relative_error, script_main

KERNEL = "frechet"


def covariances(d: int, seed: int):
    """Means and two well-conditioned, different sample covariances of 2d samples (Wishart-like)."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((2 * d, d))
    y = rng.standard_normal((2 * d, d)) * np.linspace(0.5, 2.0, d) + 0.1 * x
    return x.mean(0), np.cov(x, rowvar=False), y.mean(0) + 0.05, np.cov(y, rowvar=False)


def sqrtm_fd(mu1, s1, mu2, s2) -> float:
    import scipy.linalg

    root = scipy.linalg.sqrtm(s1 @ s2).real
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))


def cases(quick: bool = True, device: str = "cpu", sizes=None):
    import torch

    from fastcsi.stats.frechet import frechet_distance
    from fastcsi.stats.frechet_cuda import frechet_distance_cuda
    from fastcsi.stats.frechet_ref import frechet_distance_ref

    cuda = str(device).startswith("cuda")
    for d in sizes or ((32, 64, 128) if quick else (256, 512, 1024, 2048)):
        def inputs(d=d):
            arrays = covariances(d, seed=d)
            return {"np": arrays, "cpu": [torch.from_numpy(a) for a in arrays],
                    "gpu": [torch.as_tensor(a, device=device) for a in arrays] if cuda else None}

        methods = [Method("fastcsi frechet (cpu)", "ours", lambda inp: frechet_distance(*inp["np"], backend="cpu")),
                   Method("scipy sqrtm (pytorch-fid)", "baseline", lambda inp: sqrtm_fd(*inp["np"]), tolerance=1e-6,
                          note="the flop model of ours applied for comparison; sqrtm does several times more work"
                          if d == (32 if quick else 256) else None),
                   Method("fastcsi frechet (ref)", "control", lambda inp: frechet_distance(*inp["np"], backend="ref")),
                   Method("fastcsi frechet (torch)", "control", lambda inp: frechet_distance_cuda(*inp["cpu"]))]
        if cuda:
            methods.append(Method("fastcsi frechet (cuda)", "ours",
                                  lambda inp: frechet_distance(*inp["gpu"], backend="cuda")))
        yield Case(KERNEL, "two Wishart-like d x d covariances", d, "d", 1, "distances", inputs,
                   lambda inp: frechet_distance_ref(*inp["np"]), relative_error, methods,
                   flops=8 / 3 * d**3, bytes=2.0 * d * d * 8, repeats=3 if quick else 5)


if __name__ == "__main__":
    sys.exit(script_main(KERNEL, cases, __doc__))
