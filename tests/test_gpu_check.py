"""tools/gpu_check.py: the dry run of the prepared GPU check (Triton interpreter and CPU stand-ins)
writes its JSON and Markdown reports, and a failing or crashing item is reported without stopping
the others."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT / "tools" / "gpu_check.py"
# kernel items against their references, the nccl stand-in and one CLI item: the quick plan minus
# the slow model item (it runs in the full dry run), inside the CI time budget
ITEMS = "machine,radius_pairs,covariance,frechet,interaction,nccl,select,train"


def run_tool(outdir: Path, *args, inject: str | None = None, timeout: int = 300):
    env = {k: v for k, v in os.environ.items() if k != "FASTCSI_GPU_CHECK_INJECT"}
    if inject:
        env["FASTCSI_GPU_CHECK_INJECT"] = inject
    return subprocess.run([sys.executable, str(TOOL), "-o", str(outdir), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=timeout)


@pytest.fixture(scope="module")
def injected_run(tmp_path_factory):
    """One quick dry run in which one item raises and another dies of SIGSEGV."""
    outdir = tmp_path_factory.mktemp("gpu_check")
    done = run_tool(outdir, "--dry-run", "--quick", "--only", ITEMS, inject="frechet:raise,nccl:crash")
    report = json.loads((outdir / "gpu_check.json").read_text())
    return done, report, outdir


def test_dry_run_reports_every_item(injected_run):
    done, report, outdir = injected_run
    items = {r["name"]: r for r in report["items"]}
    assert list(items) == ITEMS.split(",")  # the plan's order, every item reported
    assert report["format"] == "fastcsi-gpu-check/1" and report["dry_run"] and report["quick"]
    assert report["versions"]["torch"] and report["machine"]["versions"]["fastcsi"]
    for name in ("machine", "radius_pairs", "covariance", "interaction", "select"):
        assert items[name]["status"] == "pass", (name, items[name].get("error"), items[name].get("traceback"))
        assert items[name]["wall_s"] > 0 and (outdir / items[name]["log"]).exists()
    # the kernels really ran against their references (the interpreter, at tile edges)
    assert sum(items["radius_pairs"]["details"]["edges_per_case"].values()) > 0
    assert items["interaction"]["details"]["worst_relative_error"]["out float64"] <= 1e-12
    select = items["select"]["details"]["float32"]
    assert len(select["runs"]) == 2 and max(select["relative_difference"].values()) <= select["tolerance"]
    # --dry-run --quick lists the expensive CLI items instead of running their stand-ins
    assert items["train"]["status"] == "listed" and "gemnet-oc-s" in items["train"]["on_gpu"]
    md = (outdir / "gpu_check.md").read_text()
    assert "DRY RUN" in md and "on the GPU:" in md
    for name in ITEMS.split(","):
        assert f"| {name} |" in md


def test_failures_are_isolated_and_set_the_exit_status(injected_run):
    done, report, outdir = injected_run
    items = {r["name"]: r for r in report["items"]}
    assert items["frechet"]["status"] == "fail" and "injected failure" in items["frechet"]["error"]
    assert items["nccl"]["status"] == "fail" and "SIGSEGV" in items["nccl"]["error"]
    # the items after the crash still ran
    assert items["select"]["status"] == "pass"
    assert report["summary"]["fail"] == 2 and report["exit_status"] == 1 and done.returncode == 1
    assert "FAIL" in (outdir / "gpu_check.md").read_text()
    assert "nccl" in done.stderr and "SIGSEGV" in done.stderr


def test_a_hanging_item_times_out(tmp_path):
    sys.path.insert(0, str(TOOL.parent))  # the spawned child imports the tool by name too
    os.environ["FASTCSI_GPU_CHECK_INJECT"] = "machine:hang"
    try:
        import gpu_check

        ctx = gpu_check.Context(outdir=tmp_path, device="cpu", dry_run=True, quick=True)
        result = gpu_check.run_item("machine", ctx, timeout=3)
    finally:
        del os.environ["FASTCSI_GPU_CHECK_INJECT"]
        sys.path.remove(str(TOOL.parent))
    assert result["status"] == "fail" and "timed out" in result["error"]


def test_usage_errors(tmp_path):
    done = run_tool(tmp_path, "--dry-run", "--only", "radius,nope")
    assert done.returncode == 2 and "unknown item" in done.stderr
    done = run_tool(tmp_path, "--dry-run", "--quick", "--list")
    assert done.returncode == 0 and "bench" in done.stdout and "list" in done.stdout
