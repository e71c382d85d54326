"""The benchmark suite behind ``fastcsi bench``: every hot path against its named baselines, in one
process and one run, on documented inputs across sizes, correctness checked before timing.

Kernels (inputs, work measure, baselines; each is one adapter below):
  radius      radius graph (fastcsi.graph.radius_graph, backend auto) on rattled fcc Cu supercells,
              periodic, cutoff 6 Å, float64; vs vesin, matscipy and ase neighbour lists (full lists,
              i j S d). Check: edge count and sorted distances equal ase's (1e-9 Å).
  covariance  FeatureStats.update (backend cpu; triton and cuda on GPU) of N x 256 float32 features
              with a 1e3 offset, 65536-row chunks; vs np.cov and torch.cov (float64 copy in memory).
              Check: max |C - C_ref| / max |C_ref| <= 1e-10 vs a two-pass float64 reference.
              Work model: N d (d+1) flops (one triangle, FMA = 2), N d 4 bytes (one read of X).
  frechet     frechet_distance (backend cpu; cuda on GPU) of two d x d Wishart-like covariances; vs
              scipy.linalg.sqrtm(S1 @ S2) as in pytorch-fid / the paper's code. Check: relative error
              vs the 2-eigh reference (ours 1e-10, sqrtm 1e-6). Work model (nominal): 8/3 d^3 flops
              (potrf + sygst + eigenvalues), 2 d^2 8 bytes.
  gemnet      GemNet-OC per-atom feature extraction (extract_features, inference_mode) on n rattled
              ethanol molecules, float32; vs the plain PyTorch path: the full model forward under
              no_grad (and, on CUDA, extraction with the plain interaction instead of the fused
              Triton kernels). Check: final features through the energy head give the model energy
              (and fused == plain features on CUDA, 1e-4). Flops counted once by torch's
              FlopCounterMode (matmuls), no byte model.
  activation  GemNet-OC's scaled SiLU, 1/0.6 x SiLU(x), forward out of place (training) on float32
              (rows, 512) edge tensors (atoms x 256 in quick mode); ours (native, csrc/activation.cpp)
              vs torch.nn.functional.silu. Check: max error vs float64 relative to max |y| (1e-6).
              Work model: n elements read + written (8 n bytes), no flops.
  train       one AdamW step of fastcsi's training loop (bench/train_step.py), graph backend auto vs
              "ref" (plain path); JMP's recorded 2.74 s/step (32 ethanol, GemNet-OC-S, 2 threads) is
              the anchor row. Check: loss and gradients of both paths agree (1e-3 relative).

Quick mode (``--quick``) shrinks sizes and models (gemnet-oc-tiny) so that the whole suite takes
well under a minute on a 2-core CPU; full mode uses the paper-scale settings.

    python bench/suite.py [--quick] [--device cpu|cuda] [--only radius,frechet] [--out DIR]
"""
from __future__ import annotations

import importlib
import math
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

# bench/ is shipped as the package ``fastcsi._bench`` (fastcsi/_bench is a link to it), so the suite runs
# the same from a source checkout, an editable install and a plain ``pip install .``
from fastcsi._bench._suite_common import (finish_rows, machine_info, measure, measure_peaks, package_versions,
                                          write_report)
from fastcsi.backend import override

KERNELS = ("radius", "covariance", "frechet", "activation", "gemnet", "train")


@dataclass
class Method:
    name: str
    role: str  # ours | baseline | control | anchor
    fn: Callable[[], Any] | None = None
    check: Callable[[Any], float] | None = None  # error of one output (must be <= tolerance)
    tolerance: float = 0.0
    flops: float | None = None
    bytes: float | None = None
    dtype: str = "float64"
    count_flops: bool = False  # count flops (torch FlopCounterMode) during the correctness call
    skip: str | None = None  # reason: the row is reported as skipped, never run
    seconds: float | None = None  # anchor rows: a recorded figure, not timed here
    note: str | None = None


@dataclass
class Case:
    kernel: str
    name: str
    size: float
    size_unit: str
    items: float
    items_unit: str
    methods: list[Method] = field(default_factory=list)
    repeats: int = 3
    warmup: int = 0  # the correctness call before timing is already one warm-up


def _optional(module: str):
    try:
        return importlib.import_module(module), None
    except ImportError:
        return None, f"{module} is not installed (pip install 'fastcsi[bench]'); skipped"


def _sibling(name: str):
    """Another bench script of this folder, imported as a module (its ``run`` is not called)."""
    return importlib.import_module(f"fastcsi._bench.{name}")


# ---------------------------------------------------------------------------------------- radius
NEIGHBOR_CUTOFF = 6.0


def radius_cases(quick: bool, device: str, sizes=None):
    import torch
    from ase.build import bulk
    from ase.neighborlist import neighbor_list as ase_neighbor_list

    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.graph import radius_graph

    vesin, vesin_missing = _optional("vesin")
    matscipy_nl, matscipy_missing = _optional("matscipy.neighbours")
    reps = sizes or ((2, 3) if quick else (3, 5, 8))
    cutoff = NEIGHBOR_CUTOFF
    for rep in reps:
        atoms = bulk("Cu", "fcc", a=3.61, cubic=True).repeat((rep, rep, rep))
        atoms.rattle(0.05, seed=rep)
        batch = batch_from_atoms([atoms], dtype=torch.float64, device=device)
        ref_d = np.sort(ase_neighbor_list("d", atoms, cutoff))

        def distances_error(d, ref_d=ref_d):
            d = np.sort(np.asarray(d, dtype=np.float64))
            return math.inf if d.shape != ref_d.shape else float(np.abs(d - ref_d).max(initial=0.0))

        n_edges = len(ref_d)
        # lower bound of traffic: positions in, (i, j, S, d, vector) out
        nbytes = len(atoms) * 3 * 8 + n_edges * (2 * 8 + 3 * 8 + 8 + 3 * 8)
        methods = [Method("fastcsi radius_graph", "ours",
                          lambda batch=batch: radius_graph(batch, cutoff, backend="auto"),
                          lambda g: distances_error(g.distances.detach().cpu().numpy()), 1e-9,
                          flops=8.0 * n_edges, bytes=nbytes)]
        box, positions = np.asarray(atoms.cell), atoms.positions

        if vesin is not None:
            calc = vesin.NeighborList(cutoff=cutoff, full_list=True)
            methods.append(Method("vesin", "baseline",
                                  lambda calc=calc: calc.compute(positions, box, True, quantities="ijSd"),
                                  lambda out: distances_error(out[3]), 1e-9, flops=8.0 * n_edges, bytes=nbytes))
        else:
            methods.append(Method("vesin", "baseline", skip=vesin_missing))
        if matscipy_nl is not None:
            methods.append(Method("matscipy", "baseline",
                                  lambda atoms=atoms: matscipy_nl.neighbour_list("ijSd", atoms, cutoff),
                                  lambda out: distances_error(out[3]), 1e-9, flops=8.0 * n_edges, bytes=nbytes))
        else:
            methods.append(Method("matscipy", "baseline", skip=matscipy_missing))
        methods.append(Method("ase", "baseline", lambda atoms=atoms: ase_neighbor_list("ijSd", atoms, cutoff),
                              lambda out: distances_error(out[3]), 1e-9, flops=8.0 * n_edges, bytes=nbytes))
        yield Case("radius", f"Cu fcc {rep}x{rep}x{rep} cubic, {cutoff} Å", len(atoms), "atoms", n_edges, "edges",
                   methods, repeats=3 if quick else 5)


# ------------------------------------------------------------------------------------ covariance
COV_DIM = 256


def covariance_cases(quick: bool, device: str, sizes=None):
    import torch

    from fastcsi.stats import FeatureStats

    chunk = 65536
    for n in sizes or ((2048, 8192) if quick else (16384, 131072, 1_048_576)):
        rng = np.random.default_rng(n)
        mix = (np.eye(COV_DIM) + rng.standard_normal((COV_DIM, COV_DIM)) * 0.05).astype(np.float32)
        x = rng.standard_normal((n, COV_DIM), dtype=np.float32) @ mix + np.float32(1e3)
        x64 = x.astype(np.float64)
        centred = x64 - x64.mean(0)
        reference = centred.T @ centred / (n - 1)  # two-pass float64: the oracle
        del x64, centred
        scale = np.abs(reference).max()

        def rel_error(cov, reference=reference, scale=scale):
            if isinstance(cov, torch.Tensor):
                cov = cov.detach().cpu().double().numpy()
            return float(np.abs(np.asarray(cov, dtype=np.float64) - reference).max() / scale)

        def ours(data, backend):
            def fn():
                stats = FeatureStats(COV_DIM)
                for start in range(0, len(data), chunk):
                    stats.update(data[start:start + chunk], backend=backend)
                return stats.covariance()
            return fn

        work = dict(flops=float(n) * COV_DIM * (COV_DIM + 1), bytes=float(n) * COV_DIM * 4)
        methods = [Method("fastcsi FeatureStats (cpu)", "ours", ours(x, "cpu"), rel_error, 1e-10, dtype="float64", **work),
                   Method("np.cov", "baseline", lambda x=x: np.cov(x, rowvar=False), rel_error, 1e-10, **work),
                   Method("torch.cov", "baseline", lambda x=x: torch.cov(torch.from_numpy(x).double().T), rel_error,
                          1e-10, **work)]
        if str(device).startswith("cuda"):
            xt = torch.from_numpy(x).to(device)
            methods += [Method("fastcsi FeatureStats (triton)", "ours", ours(xt, "triton"), rel_error, 1e-6,
                               dtype="float32", **work),
                        Method("fastcsi FeatureStats (cuda f64)", "ours", ours(xt, "cuda"), rel_error, 1e-10, **work),
                        Method("torch.cov (cuda)", "baseline", lambda xt=xt: torch.cov(xt.double().T), rel_error,
                               1e-10, **work)]
        yield Case("covariance", f"N x {COV_DIM} float32, offset 1e3", n, "rows", n, "rows", methods,
                   repeats=3 if quick else 5)


# --------------------------------------------------------------------------------------- frechet
def frechet_cases(quick: bool, device: str, sizes=None):
    import scipy.linalg
    import torch

    from fastcsi.stats.frechet import frechet_distance
    from fastcsi.stats.frechet_cuda import frechet_distance_cuda

    for d in sizes or ((32, 64, 128) if quick else (256, 512, 1024, 2048)):
        rng = np.random.default_rng(d)
        x = rng.standard_normal((2 * d, d))
        y = rng.standard_normal((2 * d, d)) * np.linspace(0.5, 2.0, d) + 0.1 * x
        mu1, mu2 = x.mean(0), y.mean(0) + 0.05
        s1, s2 = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        exact = frechet_distance(mu1, s1, mu2, s2, backend="ref")

        def rel(value, exact=exact):
            return abs(float(value) - exact) / abs(exact)

        def sqrtm_fd(mu1=mu1, s1=s1, mu2=mu2, s2=s2):
            diff = mu1 - mu2
            root = scipy.linalg.sqrtm(s1 @ s2).real
            return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * np.trace(root))

        work = dict(flops=8 / 3 * d**3, bytes=2.0 * d * d * 8)
        methods = [Method("fastcsi frechet (cpu)", "ours",
                          lambda: frechet_distance(mu1, s1, mu2, s2, backend="cpu"), rel, 1e-10, **work),
                   Method("scipy sqrtm (pytorch-fid)", "baseline", sqrtm_fd, rel, 1e-6,
                          note="flop model of ours applied for comparison; sqrtm does ~10x more work"
                          if d in (32, 256) else None, **work),
                   Method("fastcsi frechet (torch)", "control",  # the cuda backend's code on CPU tensors
                          lambda cpu=[torch.from_numpy(a) for a in (mu1, s1, mu2, s2)]: frechet_distance_cuda(*cpu),
                          rel, 1e-10, **work)]
        if str(device).startswith("cuda"):
            tensors = [torch.as_tensor(a, device=device) for a in (mu1, s1, mu2, s2)]
            methods.append(Method("fastcsi frechet (cuda)", "ours",
                                  lambda tensors=tensors: frechet_distance(*tensors, backend="cuda"), rel, 1e-10, **work))
        yield Case("frechet", "two Wishart-like d x d covariances", d, "d", 1, "distances", methods,
                   repeats=3 if quick else 5)


# ------------------------------------------------------------------------------------ activation
def activation_cases(quick: bool, device: str, sizes=None):
    import torch

    from fastcsi import _native
    from fastcsi.model.gemnet_oc.activation import silu

    scale = 1.0 / 0.6
    width = 256 if quick else 512
    for rows in sizes or ((288, 2304) if quick else (2304, 18432)):
        x = torch.randn((rows, width), generator=torch.Generator().manual_seed(rows)) * 3
        exact = scale * x.double() * torch.sigmoid(x.double())

        def err(y, exact=exact):
            return float((y.double() - exact).abs().max() / exact.abs().max())

        work = dict(bytes=8.0 * x.numel(), dtype="float32")
        skip = None if _native.has("silu_forward") else f"native extension not built: {_native.NATIVE_ERROR}"
        methods = [Method("fastcsi silu (native)", "ours", lambda x=x: silu(x, scale, backend="cpu"), err, 1e-6,
                          skip=skip, **work),
                   Method("torch silu", "baseline", lambda x=x: torch.nn.functional.silu(x).mul_(scale), err, 1e-6,
                          **work)]
        yield Case("activation", f"scaled SiLU of rows x {width} float32", rows, "rows", x.numel(), "elements",
                   methods, repeats=5 if quick else 20)


# ---------------------------------------------------------------------------------------- gemnet
def _counting_flops(fn):
    """``fn()`` under torch's FlopCounterMode (matmul-class ops): (output, flops or None)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        output = fn()
    return output, (float(counter.get_total_flops()) or None)


def gemnet_cases(quick: bool, device: str, sizes=None):
    import torch

    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.model import build_model, extract_features
    from fastcsi.model.gemnet_oc.layers import scatter_sum

    config = "gemnet-oc-tiny" if quick else "gemnet-oc-s"
    torch.manual_seed(0)
    model = build_model(config).to(device).eval()
    cuda = str(device).startswith("cuda")
    for n in sizes or ((1, 3) if quick else (4, 16, 32)):
        batch = batch_from_atoms(_sibling("gemnet").rattled_ethanols(n), dtype=torch.float32).to(device)
        with torch.no_grad():
            energy = model(batch)["energy"]
        energy_scale = float(energy.abs().max().clamp_min(1.0))

        def energy_error(features, batch=batch, energy=energy, scale=energy_scale):
            with torch.no_grad():
                from_features = scatter_sum(model.out_energy(features.clone())[:, 0], batch.batch, batch.num_structures)
            return float((from_features - energy).abs().max()) / scale

        def extract(backend, batch=batch):
            def fn():
                with override(interaction=backend):
                    return extract_features(model, batch)
            return fn

        def forward(batch=batch):
            with override(interaction="ref"), torch.no_grad():
                return model(batch)["energy"]

        methods = [Method("extract_features", "ours", extract("auto"), energy_error, 1e-4, count_flops=True,
                          dtype="float32"),
                   Method("plain full forward (no_grad)", "baseline", forward,
                          lambda e: 0.0 if bool(torch.isfinite(e).all()) else math.inf, 0.0,
                          count_flops=True, dtype="float32")]
        if cuda:
            plain = extract("ref")()

            def fused_error(features, plain=plain):
                return float((features - plain).abs().max() / plain.abs().max().clamp_min(1e-30))

            methods[0].check = fused_error
            methods.append(Method("extract_features (plain interaction)", "baseline", extract("ref"), energy_error,
                                  1e-4, count_flops=True, dtype="float32"))
        yield Case("gemnet", f"{config}, {n} ethanol, float32", batch.num_atoms, "atoms", batch.num_atoms, "atoms",
                   methods, repeats=2 if quick else 5)


# ----------------------------------------------------------------------------------------- train
def train_cases(quick: bool, device: str, sizes=None):
    import tempfile

    import torch

    train_step = _sibling("train_step")
    config = "gemnet-oc-tiny" if quick else "gemnet-oc-s"
    for n in sizes or ((2,) if quick else (8, 32)):
        structures = train_step.ethanol_structures(n)
        atoms = sum(s.n_atoms for s in structures)
        rundir = tempfile.mkdtemp(prefix="fastcsi-bench-train-")
        ours = train_step.make_trainer(structures, device, config, rundir)
        plain = train_step.make_trainer(structures, device, config, rundir)
        # both paths from the same initial weights, before either takes a step
        with override(**train_step.PLAIN):
            loss_plain, grads_plain = train_step.loss_and_grads(plain)
        loss_ours, grads_ours = train_step.loss_and_grads(ours)
        if set(grads_ours) != set(grads_plain):
            disagreement = math.inf
        else:
            disagreement = max(abs(loss_ours - loss_plain) / max(abs(loss_plain), 1.0),
                               *(float(((grads_ours[k] - grads_plain[k]).abs()
                                        / (grads_plain[k].abs().max() + 1e-12)).max()) for k in grads_plain))
        index = np.arange(n)

        def agreement(loss, disagreement=disagreement):
            return disagreement if math.isfinite(float(loss)) else math.inf

        def plain_step(plain=plain):
            with override(**train_step.PLAIN):
                return plain.train_step(index)

        methods = [Method("fastcsi train step (graph auto)", "ours", lambda ours=ours: ours.train_step(index), agreement,
                          1e-3, dtype="float32"),
                   Method("plain path (graph ref)", "baseline", plain_step,
                          lambda loss: 0.0 if math.isfinite(float(loss)) else math.inf, 0.0, dtype="float32")]
        anchor = train_step.ANCHOR
        if n == 32 and config == "gemnet-oc-s" and not str(device).startswith("cuda") and torch.get_num_threads() == 2:
            methods.append(Method("JMP (recorded)", "anchor", seconds=anchor["seconds_per_step"], note=anchor["name"]))
        yield Case("train", f"{config} AdamW step, {n} ethanol, 12 Å", atoms, "atoms", n, "structures",
                   methods, repeats=2 if quick else 5)


ADAPTERS = {"radius": radius_cases, "covariance": covariance_cases, "frechet": frechet_cases,
            "activation": activation_cases, "gemnet": gemnet_cases, "train": train_cases}
TITLES = {"radius": "radius graph vs vesin / matscipy / ase", "covariance": "covariance of N x 256 features",
          "frechet": "Fréchet distance vs scipy sqrtm", "activation": "scaled SiLU vs torch",
          "gemnet": "GemNet-OC feature extraction",
          "train": "GemNet-OC training step"}


def _description(kernel: str) -> str:
    doc = __doc__.split("Kernels", 1)[1]
    lines, take = [], False
    for line in doc.splitlines():
        if line.startswith(f"  {kernel} "):
            take = True
        elif take and (not line.startswith("              ") or not line.strip()):
            break
        if take:
            lines.append(line.strip())
    return " ".join(lines)[len(kernel):].strip()


# ---------------------------------------------------------------------------------------- runner
def _sync(device: str):
    if str(device).startswith("cuda"):
        import torch

        torch.cuda.synchronize(device)


def run_case(case: Case, device: str, log=print) -> list[dict]:
    rows = []
    for m in case.methods:
        row = {"kernel": case.kernel, "case": case.name, "size": case.size, "size_unit": case.size_unit,
               "method": m.name, "role": m.role, "status": "ok", "error": None, "tolerance": m.tolerance,
               "correct": None, "seconds": None, "times": [], "repeats": case.repeats, "items": case.items,
               "items_unit": case.items_unit, "flops": m.flops, "bytes": m.bytes, "dtype": m.dtype, "note": m.note}
        if m.skip:
            row.update(status="skipped", note=m.skip)
        elif m.role == "anchor":
            row.update(seconds=m.seconds)
        else:
            try:
                # correctness first, on the inputs that will be timed (this call is also the warm-up)
                if m.count_flops:
                    output, counted = _counting_flops(m.fn)
                    row["flops"] = m.flops = counted
                else:
                    output = m.fn()
                _sync(device)
                error = float(m.check(output)) if m.check else 0.0
                row.update(error=error, correct=bool(math.isfinite(error) and error <= m.tolerance))
                if not row["correct"]:
                    row.update(status="failed", note=f"correctness check FAILED: error {error:.3g} > tolerance "
                                                     f"{m.tolerance:.3g}; not timed")
                    log(f"!! {case.kernel} / {case.name} / {m.name}: {row['note']}", err=True)
                else:
                    row.update(measure(m.fn, device, repeats=case.repeats, warmup=case.warmup))
            except Exception as exc:  # one broken method must not hide the rest of the report
                row.update(status="error", correct=False, note=f"{type(exc).__name__}: {exc}".splitlines()[0][:300],
                           traceback=traceback.format_exc(limit=4))
                log(f"!! {case.kernel} / {case.name} / {m.name} raised {row['note']}", err=True)
        rows.append(row)
    return rows


def _default_log(message: str, err: bool = False):
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def run_suite(device: str = "cpu", only=KERNELS, quick: bool = True, sizes: dict | None = None,
              peaks: dict | None = None, log=_default_log, progress: bool = True) -> dict:
    """Run the chosen kernels and return the report dict (rows finished, nothing written)."""
    start = time.perf_counter()
    sizes = sizes or {}
    settings = {"device": device, "only": list(only), "quick": quick, "sizes": sizes}
    if peaks is None:
        log("measuring device peaks (copy bandwidth, matmul FLOP/s)")
        peaks = measure_peaks(device, quick)
    rows, kernels = [], {}
    from tqdm import tqdm

    bar = tqdm(total=len(only), desc="fastcsi bench", unit="kernel", file=sys.stderr, disable=not progress,
               leave=False)

    def say(message, err=False):  # lines above the progress bar, not through it
        bar.clear()
        log(message, err=err)
        bar.refresh()

    for kernel in only:
        t0 = time.perf_counter()
        kernels[kernel] = {"title": TITLES[kernel], "description": _description(kernel), "notes": []}
        bar.set_postfix_str(kernel)
        say(f"[{kernel}]")
        try:
            for case in ADAPTERS[kernel](quick, device, sizes.get(kernel)):
                case_rows = run_case(case, device, say)
                rows += case_rows
                for r in case_rows:
                    shown = f"{r['seconds']:.4g} s" if r["seconds"] else r["status"]
                    say(f"  {r['case']:<40.40} {r['method']:<36.36} {shown}")
        except Exception as exc:  # setup of a whole kernel failed: report it as one error row
            rows.append({"kernel": kernel, "case": "setup", "size": 0, "size_unit": "", "method": "(setup)",
                         "role": "ours", "status": "error", "correct": False, "error": None, "tolerance": None,
                         "seconds": None, "times": [], "repeats": 0, "items": None, "items_unit": "",
                         "flops": None, "bytes": None, "dtype": "", "traceback": traceback.format_exc(limit=6),
                         "note": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]})
            say(f"!! {kernel}: setup raised {rows[-1]['note']}", err=True)
        kernels[kernel]["seconds"] = time.perf_counter() - t0
        bar.update(1)
    bar.close()
    rows = finish_rows(rows, peaks)
    if not str(device).startswith("cuda"):
        for meta in kernels.values():
            meta["notes"].append("roofline on CPU: fractions of the peaks measured here by np.copyto and a "
                                 "torch matmul (indicative; the GPU roofline is the intended use)")
    return {"schema": "fastcsi.bench/1", "settings": settings, "machine": machine_info(device),
            "versions": package_versions(), "peaks": peaks, "kernels": kernels, "rows": rows,
            "failed": [f"{r['kernel']} / {r['case']} / {r['method']}" for r in rows if r["status"] in ("failed", "error")],
            "skipped": [f"{r['kernel']} / {r['method']}: {r['note']}" for r in rows if r["status"] == "skipped"],
            "total_seconds": time.perf_counter() - start}


def main(argv=None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--only", default=",".join(KERNELS))
    parser.add_argument("--out", type=Path, default=Path("bench_out"))
    args = parser.parse_args(argv)
    only = [k.strip() for k in args.only.split(",") if k.strip()]
    unknown = [k for k in only if k not in KERNELS]
    if unknown:
        parser.error(f"unknown kernel(s) {', '.join(unknown)}; choose from {', '.join(KERNELS)}")
    report = run_suite(args.device, only, args.quick)
    write_report(report, args.out)
    print((args.out / "bench.md").read_text())
    return 1 if report["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
