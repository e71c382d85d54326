"""The benchmark suite behind ``fastcsi bench``: every op's cases (bench/<op>.py, each through the
one harness bench/harness.py) against their named baselines, in one process and one run,
correctness checked before timing, device peaks measured in the same run for the roofline.

Kernels (``--only`` names; the cases, inputs, references and tolerances are in each module's
docstring):
  radius          bench/radius.py          radius graph vs vesin, matscipy, ase
  gemnet_indices  bench/gemnet_indices.py  GemNet-OC index sets, numba walks vs the torch formulation
  covariance      bench/covariance.py      streaming covariance vs np.cov, torch.cov
  frechet         bench/frechet.py         Fréchet distance vs scipy sqrtm (pytorch-fid)
  activation      bench/activation.py      scaled SiLU vs torch
  interaction     bench/interaction.py     GemNet-OC interaction op vs its plain torch form
  gemnet          bench/gemnet.py          model level: feature extraction vs the plain path
  train           bench/train_step.py      model level: one AdamW training step vs the plain path

Quick mode (``--quick``) shrinks sizes and models (gemnet-oc-tiny) so that the whole suite takes
about a minute on a 2-core CPU; full mode uses the paper-scale settings.

    python bench/suite.py [--quick] [--device cpu|cuda] [--only radius,frechet] [--out DIR]
"""
from __future__ import annotations

import importlib
import sys
import time
from pathlib import Path

# bench/ is shipped as the package ``fastcsi._bench`` (fastcsi/_bench is a link to it), so the suite runs
# the same from a source checkout, an editable install and a plain ``pip install .``
from fastcsi._bench.harness import build_report, measure_peaks, run_case, setup_error_row, write_report

MODULES = {"radius": "radius", "gemnet_indices": "gemnet_indices", "covariance": "covariance",
           "frechet": "frechet", "activation": "activation", "interaction": "interaction", "gemnet": "gemnet",
           "train": "train_step"}
KERNELS = tuple(MODULES)


def module(kernel: str):
    """The bench script of ``kernel``, imported as a module (its cases are collected, nothing runs)."""
    return importlib.import_module(f"fastcsi._bench.{MODULES[kernel]}")


def describe(kernel: str) -> dict:
    doc = (module(kernel).__doc__ or kernel).strip()
    title = doc.splitlines()[0].removeprefix("Benchmark: ").rstrip(".")
    description = " ".join(doc.split("\n\n")[1].split()) if "\n\n" in doc else ""
    return {"title": title, "description": description, "notes": []}


def _default_log(message: str, err: bool = False):
    print(message, file=sys.stderr if err else sys.stdout, flush=True)


def run_suite(device: str = "cpu", only=KERNELS, quick: bool = True, sizes: dict | None = None,
              peaks: dict | None = None, log=_default_log, progress: bool = True) -> dict:
    """Run the chosen kernels' cases and return the report dict (rows finished, nothing written)."""
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
        bar.set_postfix_str(kernel)
        say(f"[{kernel}]")
        try:
            kernels[kernel] = describe(kernel)
            for case in module(kernel).cases(quick, device, sizes.get(kernel)):
                case_rows = run_case(case, device, say)
                rows += case_rows
                for r in case_rows:
                    shown = f"{r['seconds']:.4g} s" if r["seconds"] else r["status"]
                    say(f"  {r['case']:<48.48} {r['method']:<36.36} {shown}")
        except Exception as exc:  # setup of a whole kernel failed: report it as one error row
            kernels.setdefault(kernel, {"title": kernel, "description": "", "notes": []})
            rows.append(setup_error_row(kernel, exc))
            say(f"!! {kernel}: setup raised {rows[-1]['note']}", err=True)
        kernels[kernel]["seconds"] = time.perf_counter() - t0
        bar.update(1)
    bar.close()
    if not str(device).startswith("cuda"):
        for meta in kernels.values():
            meta["notes"].append("roofline on CPU: fractions of the peaks measured here by np.copyto and a "
                                 "torch matmul (indicative; the GPU roofline is the intended use)")
    return build_report(rows, settings, kernels, peaks, device, time.perf_counter() - start)


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
