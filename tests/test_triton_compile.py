"""Every Triton kernel of the package compiled to sm_90 machine code (a cubin), no GPU needed.

The interpreter (TRITON_INTERPRET=1, what the other tests run) executes kernels as numpy and
forgives what the GPU compiler does not: types of loop-carried values, int64 scans, dot shapes and
dtypes, register pressure. So each kernel is compiled here for an H100 (``GPUTarget("cuda", 90,
32)``; Triton ships LLVM and ptxas) in a fresh process without TRITON_INTERPRET, in every
constexpr variant the package launches, with a private Triton cache so ptxas really runs. ptxas's
log (``TRITON_DUMP_PTXAS_LOG=1``) gives registers, stack and spill bytes per variant; the table is
printed through pytest's capture (it appears in the CI log).

What the compile cannot match exactly: at launch Triton also specialises integer arguments divisible
by 16 and pointers' alignment; here pointers are declared 16-byte aligned (as torch allocations are)
and strides equal to 1 are constexpr (as at run time), other integers are plain i32, so real
launches may use a few registers fewer. Run alone: ``python tests/test_triton_compile.py [--large]``
(``--large`` adds GemNet-OC-L's quadruplet shape).
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TARGET = ("cuda", 90, 32)  # sm_90 (H100/H200), 32-thread warps


def kernel_variants(with_large: bool = False):
    """(kernel object, label, signature by argument, constexprs, compile options) of the variants
    the package launches: every kernel, every dtype and constexpr branch, the interaction at
    GemNet-OC-S's shapes (``with_large`` adds GemNet-OC-L's quadruplet shape: ~7 s more, so by hand
    only). Imported lazily: must run in the fresh process."""
    from fastcsi.graph import radius_triton as pairs
    from fastcsi.graph import radius_triton_cells as cells
    from fastcsi.model.gemnet_oc import interaction_triton as fused
    from fastcsi.stats import covariance_triton as cov

    no_fma = {"enable_fp_fusion": False}  # the radius kernels are launched so (float64 reference rounding)
    out = []

    # radius: all-pairs mask kernel
    kernel = pairs._pair_mask_kernel
    types = ["*fp64"] + ["*i64"] * 8 + ["*fp64", "*i8", "*fp64"]
    out.append((kernel, f"BLOCK {pairs.BLOCK_I}x{pairs.BLOCK_J}", types,
                {"BLOCK_I": pairs.BLOCK_I, "BLOCK_J": pairs.BLOCK_J}, no_fma))

    # radius: cell-list kernel, count and write passes
    kernel = cells._cell_pairs_kernel
    types = ["*fp64", "*i64", "*i64", "*i64", "*i32", "*i32", "*i64", "*i64", "*i64", "*fp64", "*i32", "*i64",
             "*i32", "*i32", "*i32", "*fp64", "i32", "i32"]
    for write in (False, True):
        out.append((kernel, f"{'WRITE' if write else 'COUNT'} {cells.BLOCK_I}x{cells.BLOCK_J}", types,
                    {"WRITE": write, "BLOCK_I": cells.BLOCK_I, "BLOCK_J": cells.BLOCK_J},
                    {**no_fma, "num_warps": cells.NUM_WARPS}))

    # covariance: centred SYRK per input dtype (chunk_moments_triton's default tiles)
    kernel = cov._centred_syrk_kernel
    for dtype, precision in (("fp32", "ieee"), ("fp32", "tf32"), ("bf16", "ieee"), ("fp16", "ieee"),
                             ("fp64", "ieee")):
        out.append((kernel, f"x {dtype}, {precision}", [f"*{dtype}", "*fp64", "*fp64", "i32", "i32", "i32"],
                    {"BLOCK_K": 32, "BLOCK_D": 32, "INPUT_PRECISION": precision}, {}))

    # fused GemNet-OC interaction, forward and backward: the block shapes of gemnet-oc-s and -l
    # (d_interm, n_sph, d_in) -> powers of two >= 16; the edge -> atom form only for triplets
    shapes = [("triplet (S, L)", 16, 7, 64, False), ("triplet edge->atom (S, L)", 16, 7, 64, True),
              ("quadruplet S", 32, 49, 32, False)] + ([("quadruplet L", 64, 49, 64, False)] if with_large else [])
    strides_of = {
        "forward": ("stride_x", "stride_se", "stride_ss", "stride_sk", "stride_re", "stride_ri", "stride_rs"),
        "backward": ("stride_x", "stride_se", "stride_ss", "stride_sk", "stride_re", "stride_ri", "stride_rs",
                     "stride_gse", "stride_gss", "stride_gsk"),
    }
    unit_strides = {"stride_ss", "stride_rs", "stride_gss"}  # the basis is transposed (E, Kmax, n_sph) storage
    for direction, kernel, float_args in (("forward", fused._forward_kernel, 4), ("backward", fused._backward_kernel, 7)):
        for dtype in ("fp32", "fp64"):
            for name, d_interm, n_sph, d_in, agg2 in shapes:
                types = [f"*{dtype}"] * float_args + ["*i64"] * 5
                types += ["constexpr" if s in unit_strides else "i32" for s in strides_of[direction]]
                types += ["i32"] * 3
                constants = {s: 1 for s in unit_strides if s in strides_of[direction]}
                constants.update(HAS_AGG2=agg2, IEEE=dtype == "fp32", BLOCK_T=fused.BLOCK_T, B_IN=fused._block(d_in),
                                 B_SPH=fused._block(n_sph), B_INTERM=fused._block(d_interm))
                out.append((kernel, f"{dtype} {name}", types, constants, {"num_warps": fused.NUM_WARPS}))
    return out


def jit_kernels_in_package() -> set[str]:
    """Qualified names of every @triton.jit kernel in the fastcsi package (imports each module
    whose source mentions triton.jit). Kernels, the functions launched with ``kernel[grid](...)``,
    are named ``*_kernel``; other jit functions are device helpers inlined into them, compiled
    with the kernels that call them."""
    import importlib

    from triton.runtime.jit import JITFunction

    found = set()
    for path in sorted((ROOT / "fastcsi").rglob("*.py")):
        if "triton.jit" not in path.read_text():
            continue
        module = importlib.import_module(".".join(path.relative_to(ROOT).with_suffix("").parts))
        found |= {f"{module.__name__}.{name}" for name, value in vars(module).items()
                  if isinstance(value, JITFunction) and name.endswith("_kernel")}
    return found


PTXAS = {
    "registers": re.compile(r"Used (\d+) registers"),
    "stack_bytes": re.compile(r"(\d+) bytes stack frame"),
    "spill_store_bytes": re.compile(r"(\d+) bytes spill stores"),
    "spill_load_bytes": re.compile(r"(\d+) bytes spill loads"),
}


def compile_all(with_large: bool = False) -> list[dict]:
    """Compile every variant; one result dict per variant (an error is recorded, not raised)."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    results = []
    for kernel, label, types, constants, options in kernel_variants(with_large):
        names = kernel.arg_names
        arg_types = types + ["constexpr"] * (len(names) - len(types))
        signature = dict(zip(names, arg_types))
        aligned = {(i,): [["tt.divisibility", 16]] for i, t in enumerate(arg_types) if t.startswith("*")}
        entry = {"kernel": f"{kernel.fn.__module__}.{kernel.fn.__name__}", "variant": label}
        log = io.StringIO()
        start = time.perf_counter()
        try:
            with contextlib.redirect_stdout(log):
                compiled = triton.compile(ASTSource(kernel, signature, constants, aligned), target=GPUTarget(*TARGET),
                                          options=options)
            entry["seconds"] = round(time.perf_counter() - start, 2)
            entry["cubin_bytes"] = len(compiled.asm.get("cubin", b""))
            for key, pattern in PTXAS.items():
                match = pattern.search(log.getvalue())
                entry[key] = int(match.group(1)) if match else None
        except Exception as exc:  # a kernel that does not compile: report it with the compiler's message
            entry["error"] = f"{type(exc).__name__}: {str(exc)[-2000:]}"
        results.append(entry)
    return results


def format_table(results: list[dict]) -> str:
    lines = [f"Triton kernels compiled for sm_{TARGET[1]} (ptxas -v)",
             f"{'kernel':<50} {'variant':<34} {'regs':>4} {'spill st/ld B':>13} {'stack B':>7} {'s':>5}"]
    for r in results:
        if "error" in r:
            lines.append(f"{r['kernel'].removeprefix('fastcsi.'):<50} {r['variant']:<34} FAILED: {r['error'][:200]}")
            continue
        spills = f"{r['spill_store_bytes']}/{r['spill_load_bytes']}"
        lines.append(f"{r['kernel'].removeprefix('fastcsi.'):<50} {r['variant']:<34} {r['registers']!s:>4} "
                     f"{spills:>13} {r['stack_bytes']!s:>7} {r['seconds']:>5.1f}")
    return "\n".join(lines)


def run_fresh_process(cache_dir: Path, timeout: int = 600) -> tuple[dict, str]:
    """Run this file as a script in a new interpreter without TRITON_INTERPRET; returns its JSON
    report and stderr."""
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(TRITON_DUMP_PTXAS_LOG="1", TRITON_CACHE_DIR=str(cache_dir), TRITON_DEFAULT_FP_FUSION="0")
    done = subprocess.run([sys.executable, __file__, "--json"], env=env, capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)
    if done.returncode and "ptxas" in done.stderr and "not found" in done.stderr.lower():
        pytest.skip("Triton's bundled ptxas is missing here")
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_every_triton_kernel_compiles_for_sm90(tmp_path, capsys):
    pytest.importorskip("triton")
    report, _ = run_fresh_process(tmp_path / "triton_cache")
    results = report["results"]
    with capsys.disabled():  # the register table belongs in the CI log, not in pytest's capture
        print("\n" + format_table(results))
    failed = [f"{r['kernel']} [{r['variant']}]: {r['error']}" for r in results if "error" in r]
    assert not failed, "\n".join(failed)
    # every @triton.jit kernel of the package is covered (a new kernel needs its variants above)
    assert set(report["package_kernels"]) == {r["kernel"] for r in results}
    for r in results:
        assert r["cubin_bytes"] > 0 and r["registers"] is not None, r  # ptxas ran and reported
        assert r["registers"] <= 255


if __name__ == "__main__":
    if "--json" not in sys.argv:  # run by hand: the same settings as the test's fresh process
        os.environ.pop("TRITON_INTERPRET", None)
        os.environ.update(TRITON_DUMP_PTXAS_LOG="1", TRITON_CACHE_DIR=tempfile.mkdtemp(prefix="triton_sm90_"),
                          TRITON_DEFAULT_FP_FUSION="0")
    results = compile_all(with_large="--large" in sys.argv)
    if "--json" in sys.argv:
        print(json.dumps({"results": results, "package_kernels": sorted(jit_kernels_in_package())}))
    else:
        print(format_table(results))
        sys.exit(1 if any("error" in r for r in results) else 0)
