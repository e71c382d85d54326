"""Sanitizer fuzz of the compiled kernels (issue 26): build csrc/ with AddressSanitizer and
UndefinedBehaviorSanitizer into a separate module, then run hostile inputs through it.

    python tools/sanitize_fuzz.py [--examples 120] [--seed 0] [--build-dir build/sanitize]

Build: every csrc/*.cpp with ``-fsanitize=address,undefined,float-cast-overflow
-fno-sanitize-recover=all`` (float-cast-overflow is outside GCC's "undefined" group, and an
out-of-range double -> integer cast is exactly how the issue-26 bin counts went wrong), compiled in
parallel and linked into ``<build-dir>/_C<ext suffix>``; the installed extension is never touched.
Rebuilt only when the sources or flags changed (a content hash beside the module).

Run: a child Python with libasan preloaded (Python itself is not instrumented) loads that module as
``fastcsi._C`` before anything imports the real one, so the dispatcher, the wrappers and the kernels
are exactly what users run, only sanitized. The child runs
  * the issue-26 reproduction and hypothesis-drawn batches of hostile geometries
    (tests/graph/hostile_geometries.py: huge and tiny coordinates, coincident atoms, thin, skewed,
    singular and left-handed cells, cells smaller than the cutoff, zero and one atom, mixed
    periodicity, batches mixing them) through ``radius_graph`` in float32 and float64 on 2 threads,
    each checked against the float64 reference (the same outcome, ok or refused, and the same
    edges; a budget error only where that side's own smaller edge budget explains it), and again
    through the kernel with small memory budgets and up to 8 threads, where the budget error is
    raised inside worker threads (the default budget's result, or a budget error);
  * direct abuse of every kernel entry point: absurd thread counts, empty and one-row inputs,
    negative strides, NaN, and budgets too small for the request (covariance, SiLU, radius).
Green means: the child exits 0, every case was correct or one clean error, and no sanitizer wrote a
report (any report aborts the child: halt_on_error). It takes about 1-2 minutes on 2 cores, most
of it the build.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SANITIZE = ["-fsanitize=address,undefined,float-cast-overflow", "-fno-sanitize-recover=all",
            "-fno-omit-frame-pointer", "-g1", "-O0"]
REPORT_MARKERS = ("ERROR: AddressSanitizer", "runtime error:", "ERROR: LeakSanitizer", "SUMMARY: UndefinedBehavior")


def _compiler() -> str:
    return os.environ.get("CXX", "g++")


def build(build_dir: Path, jobs: int) -> Path:
    """The sanitized extension module (built or reused); raises CalledProcessError on a compile error."""
    import pybind11

    build_dir.mkdir(parents=True, exist_ok=True)
    module = build_dir / f"_C{sysconfig.get_config_var('EXT_SUFFIX')}"
    stamp = build_dir / "sources.sha256"
    sources = sorted((ROOT / "csrc").glob("*.cpp"))
    includes = [f"-I{pybind11.get_include()}", f"-I{sysconfig.get_paths()['include']}"]
    common = [_compiler(), "-std=c++17", "-fPIC", "-fopenmp", "-fvisibility=hidden", *SANITIZE, *includes]
    # rebuilt when a source, a header or the flags changed (by content: times race with edits)
    digest = hashlib.sha256(" ".join(common).encode())
    for path in [*sources, *sorted((ROOT / "csrc").glob("*.h"))]:
        digest.update(path.name.encode() + path.read_bytes())
    if module.exists() and stamp.exists() and stamp.read_text() == digest.hexdigest():
        return module

    def compile_one(source: Path) -> Path:
        obj = build_dir / (source.stem + ".o")
        subprocess.run([*common, "-c", str(source), "-o", str(obj)], check=True)
        return obj

    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs) as pool:
        objects = list(pool.map(compile_one, sources))
    temporary = module.with_suffix(".tmp")
    subprocess.run([_compiler(), "-shared", "-fopenmp", *SANITIZE, *map(str, objects), "-o", str(temporary)],
                   check=True)
    temporary.replace(module)  # a half-linked module is never picked up as built
    stamp.write_text(digest.hexdigest())
    return module


def _runtime(name: str) -> str:
    return subprocess.run([_compiler(), f"-print-file-name={name}"], capture_output=True, text=True,
                          check=True).stdout.strip()


def run_child(module: Path, examples: int, seed: int, timeout: int) -> int:
    env = dict(os.environ)
    env.update({
        # libstdc++ with it: ASan looks up the real __cxa_throw when it starts, and Python itself does
        # not link libstdc++ (without it the first C++ exception stops the run with a CHECK failure)
        "LD_PRELOAD": f"{_runtime('libasan.so')}:{_runtime('libstdc++.so')}",
        # Python's own allocations are never freed at exit: leak reports would be noise
        "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1:halt_on_error=1:allocator_may_return_null=0",
        "UBSAN_OPTIONS": "halt_on_error=1:print_stacktrace=1",
        "OMP_NUM_THREADS": "2",
        "PYTHONPATH": str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
    })
    command = [sys.executable, str(Path(__file__).resolve()), "--child", str(module), "--examples", str(examples),
               "--seed", str(seed)]
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    sys.stdout.write(result.stdout)
    reports = [line for line in result.stderr.splitlines() if any(m in line for m in REPORT_MARKERS)]
    if result.returncode != 0 or reports:
        sys.stderr.write(result.stderr[-20000:])
        print(f"sanitize_fuzz: FAILED (exit {result.returncode}, {len(reports)} sanitizer report lines)")
        return 1
    return 0


# ---------------------------------------------------------------------------------------------
# the child: runs under the sanitizers


def _load_sanitized(path: str):
    import importlib.machinery
    import importlib.util

    import fastcsi

    loader = importlib.machinery.ExtensionFileLoader("fastcsi._C", path)
    spec = importlib.util.spec_from_file_location("fastcsi._C", path, loader=loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    sys.modules["fastcsi._C"] = module
    fastcsi._C = module
    from fastcsi import _native

    assert _native.native is module, "fastcsi._native imported the installed extension first"
    return module


def _expect(outcomes, name, call, allowed):
    """Run ``call``; it must return or raise one of ``allowed`` (exception types)."""
    try:
        call()
        outcomes[name] = "ok"
    except allowed as exc:
        outcomes[name] = type(exc).__name__


def _direct_abuse(C) -> dict:
    """Every kernel entry point with inputs no wrapper would pass."""
    import numpy as np

    outcomes = {}
    rng = np.random.default_rng(0)
    eye = np.eye(3)[None].copy()
    pbc = np.ones((1, 3), bool)

    def radius(pos, cell=eye, periodic=pbc, ptr=None, cutoff=6.0, threads=2, single=False, budget=0):
        ptr = np.array([0, len(pos)], np.int64) if ptr is None else ptr
        return C.radius_batch(np.asarray(pos, float), cell, periodic, ptr, cutoff, threads, single, budget)

    errors = (ValueError, MemoryError)
    _expect(outcomes, "radius: empty batch", lambda: C.radius_batch(np.zeros((0, 3)), np.zeros((0, 3, 3)),
                                                                     np.zeros((0, 3), bool), np.array([0]), 6.0), errors)
    _expect(outcomes, "radius: bad ptr", lambda: radius(np.zeros((4, 3)), ptr=np.array([0, 9], np.int64)), errors)
    _expect(outcomes, "radius: decreasing ptr", lambda: C.radius_batch(
        np.zeros((4, 3)), np.repeat(eye, 2, 0), np.ones((2, 3), bool), np.array([0, 5, 4], np.int64), 6.0), errors)
    for cutoff in (0.0, -1.0, float("nan"), float("inf")):
        _expect(outcomes, f"radius: cutoff {cutoff}", lambda: radius(np.zeros((2, 3)), cutoff=cutoff), errors)
    _expect(outcomes, "radius: nan position", lambda: radius([[np.nan, 0, 0], [0, 0, 0]]), errors)
    _expect(outcomes, "radius: singular cell", lambda: radius(np.zeros((2, 3)), cell=np.zeros((1, 3, 3))), errors)
    _expect(outcomes, "radius: 10^6 threads", lambda: radius(rng.uniform(0, 3, (300, 3)), threads=10**6), errors)
    far = 2.0**32 * 6.000006
    chain = [[float(i), 0, 0] for i in range(58)] + [[far, 0, 0], [0, far, 0]]
    _expect(outcomes, "radius: issue-26 chain", lambda: radius(chain, periodic=np.zeros((1, 3), bool)), errors)
    # the budget raised inside worker threads (one big structure: threads over bins / targets)
    crowd = np.zeros((5000, 3)) + 1.0
    for threads in (1, 2, 8):
        for budget in (1 << 16, 1 << 24):
            _expect(outcomes, f"radius: 5000 coincident, {threads} threads, budget {budget}",
                    lambda: radius(crowd, periodic=np.zeros((1, 3), bool), threads=threads, budget=budget,
                                   cutoff=0.5), errors)
    lattice = rng.uniform(0, 30, (6000, 3))
    for threads in (2, 8):
        _expect(outcomes, f"radius: 6000-atom cell list, {threads} threads, tiny budget",
                lambda: radius(lattice, cell=eye * 30, threads=threads, budget=1 << 20), errors)
        _expect(outcomes, f"radius: 6000-atom cell list, {threads} threads",
                lambda: radius(lattice, cell=eye * 30, threads=threads, single=True), errors)

    # covariance
    for shape in ((0, 5), (5, 0), (1, 7), (2, 1), (300, 13)):
        x = rng.normal(size=shape)
        for kernel in ("auto", "portable"):
            _expect(outcomes, f"covariance {shape} {kernel}", lambda: C.covariance_moments(x, kernel=kernel), errors)
    x = rng.normal(size=(64, 40)).astype(np.float32)
    _expect(outcomes, "covariance: negative strides", lambda: C.covariance_moments(x[::-2, ::-3]), errors)
    _expect(outcomes, "covariance: 10^6 threads", lambda: C.covariance_moments(x, num_threads=10**6), errors)
    _expect(outcomes, "covariance: depth 1, block 1", lambda: C.covariance_moments(x, block_rows=1, depth=1), errors)
    _expect(outcomes, "covariance: depth 0", lambda: C.covariance_moments(x, depth=0), errors)
    _expect(outcomes, "covariance: nan", lambda: C.covariance_moments(np.full((9, 5), np.nan)), errors)
    _expect(outcomes, "covariance: 20000 features, small budget",
            lambda: C.covariance_moments(np.zeros((4, 20000), np.float32), max_bytes=1 << 24), errors)
    wide = np.zeros((2, 10**7), np.float32)  # 8 * 10^14 bytes of moments: refused, not attempted
    _expect(outcomes, "covariance: 10^7 features", lambda: C.covariance_moments(wide), errors)

    # SiLU
    for n in (0, 1, 7, 8, (1 << 15) + 3):
        x = rng.normal(size=n).astype(np.float32) * 100
        if n:
            x[0] = np.nan
        y = np.empty_like(x)
        for threads in (0, 1, 10**6):
            _expect(outcomes, f"silu forward {n} threads {threads}",
                    lambda: C.silu_forward(x, y, 1.0 / 0.6, threads), errors)
            _expect(outcomes, f"silu backward {n} threads {threads}",
                    lambda: C.silu_backward(x, x, y, 1.0 / 0.6, threads), errors)
    _expect(outcomes, "silu: size mismatch", lambda: C.silu_forward(np.zeros(4, np.float32),
                                                                      np.zeros(5, np.float32)), errors)
    _expect(outcomes, "silu: float64", lambda: C.silu_forward(np.zeros(4), np.zeros(4)), errors)
    return outcomes


def child(module_path: str, examples: int, seed: int) -> int:
    C = _load_sanitized(module_path)
    import torch
    from hypothesis import HealthCheck, given, settings
    from hypothesis import seed as hypothesis_seed
    from hypothesis import strategies as st

    sys.path.insert(0, str(ROOT / "tests" / "graph"))
    from hostile_geometries import check_against_reference, cutoffs, hostile_batches, refusal, repro_structure

    from fastcsi.data.batch import batch_from_atoms
    from fastcsi.errors import FastCSIError
    from fastcsi.graph.radius_cpu import search_cpu

    torch.set_num_threads(2)
    started = time.time()
    tally: dict = {}

    def count(key):
        tally[key] = tally.get(key, 0) + 1

    for dtype in (torch.float32, torch.float64):
        outcome = check_against_reference([repro_structure(), repro_structure()], 6.0, dtype)
        assert outcome == {"ref": "error", "cpu": "error"}, outcome
        count("issue-26 reproduction refused")

    @hypothesis_seed(seed)
    @settings(max_examples=examples, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(hostile_batches(), cutoffs, st.integers(10, 26), st.sampled_from([1, 2, 8]))
    def fuzz(structures, cutoff, budget_log2, threads):
        for dtype in (torch.float32, torch.float64):
            outcome = check_against_reference(structures, cutoff, dtype)
            count(f"{dtype}: ref {outcome['ref']}, cpu {outcome['cpu']}")
        # the same batch under a small budget and more threads: the default budget's outcome, or a
        # budget error where the default budget computed (the only change a smaller budget explains)
        batch = batch_from_atoms(structures, dtype=torch.float64)
        try:
            full = search_cpu(batch, cutoff, num_threads=threads)
        except FastCSIError as exc:
            full, full_outcome = None, refusal(exc)
        try:
            tight = search_cpu(batch, cutoff, num_threads=threads, max_bytes=1 << budget_log2)
        except FastCSIError as exc:
            tight_outcome = refusal(exc)
            if full is not None:
                assert tight_outcome == "budget error", f"a smaller budget raised a non-budget error: {exc}"
            else:
                # a refused input stays refused; a budget error may come first when the budget is small
                assert tight_outcome in (full_outcome, "budget error"), f"{full_outcome} became {exc}"
            count(f"budget: {'full ok' if full is not None else full_outcome}, tight {tight_outcome}")
            return
        assert full is not None, f"a smaller budget computed what the default budget refused ({full_outcome})"
        assert all((a == b).all() for a, b in zip(full, tight)), "a budgeted search changed the result"
        count("budget: same result")

    fuzz()
    abuse = _direct_abuse(C)
    for name, result in sorted(abuse.items()):
        count(f"direct: {result}")
    print(json.dumps({"seconds": round(time.time() - started, 1), "examples": examples, "seed": seed,
                      "outcomes": tally, "direct": abuse}, indent=1))
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=120, help="hypothesis examples (batches)")
    parser.add_argument("--seed", type=int, default=0, help="hypothesis seed (fixed: CI is reproducible)")
    parser.add_argument("--build-dir", type=Path, default=ROOT / "build" / "sanitize")
    parser.add_argument("--jobs", type=int, default=2, help="parallel compile jobs")
    parser.add_argument("--timeout", type=int, default=900, help="seconds the fuzz run may take")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        return child(args.child, args.examples, args.seed)
    started = time.time()
    module = build(args.build_dir, args.jobs)
    built = time.time()
    print(f"sanitize_fuzz: sanitized module {module} ({built - started:.0f} s)", flush=True)
    status = run_child(module, args.examples, args.seed, args.timeout)
    print(f"sanitize_fuzz: {'green' if status == 0 else 'RED'} in {time.time() - started:.0f} s "
          f"(build {built - started:.0f} s, fuzz {time.time() - built:.0f} s)")
    return status


if __name__ == "__main__":
    sys.exit(main())
