"""The suite end to end in quick mode on restricted sizes, and the ``fastcsi bench`` command."""
import json
import math

import pytest
from click.testing import CliRunner

from fastcsi._bench import harness as common
from fastcsi._bench import suite
from fastcsi.cli import cli

FAKE_PEAKS = {"device": "cpu", "bandwidth_Bps": 1e9, "flops_float32": 1e10, "flops_float64": 5e9,
              "method": {"bandwidth": "fake", "flops_float32": "fake", "flops_float64": "fake"}}
SIZES = {"radius": (2,), "gemnet_indices": (1,), "covariance": (512, 1024), "frechet": (16, 32),
         "activation": (64, 288), "interaction": (1,), "gemnet": (1,), "train": (1,)}


@pytest.fixture(scope="module")
def quick_report(tmp_path_factory):
    report = suite.run_suite("cpu", list(SIZES), quick=True, sizes=SIZES, peaks=FAKE_PEAKS, progress=False,
                             log=lambda *a, **k: None)
    outdir = tmp_path_factory.mktemp("bench")
    files = common.write_report(report, outdir)
    return report, outdir, files


def test_quick_suite_writes_every_output(quick_report):
    report, outdir, files = quick_report
    assert (outdir / "bench.json").is_file() and (outdir / "bench.md").is_file()
    for kernel in SIZES:
        png = outdir / f"bench_{kernel}.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", kernel
    assert not list(outdir.glob(".*.tmp"))  # atomic writes left no temp files


def test_json_schema_and_correctness(quick_report):
    _, outdir, _ = quick_report
    data = json.loads((outdir / "bench.json").read_text())
    assert data["schema"] == "fastcsi.bench/2"
    assert data["settings"]["only"] == list(SIZES)
    for key in ("cpu_model", "cores", "ram_gb"):
        assert data["machine"][key], key
    assert data["versions"]["torch"] and data["versions"]["fastcsi"]
    assert data["failed"] == []
    for kernel, sizes in SIZES.items():
        rows = [r for r in data["rows"] if r["kernel"] == kernel]
        assert len({r["size"] for r in rows if r["role"] == "ours"}) == len(sizes), kernel  # one case per size
        assert any(r["role"] == "baseline" for r in rows), kernel
        for row in rows:
            if row["status"] == "skipped":
                assert "not installed" in row["note"]
                continue
            assert row["status"] == "ok" and row["correct"] is True, (kernel, row["method"], row.get("note"))
            assert row["error"] <= row["tolerance"]
            assert math.isfinite(row["seconds"]) and row["seconds"] > 0 and len(row["times"]) == row["repeats"]
            assert math.isfinite(row["throughput"]) and row["throughput"] > 0
        for row in rows:
            if row["role"] == "ours":
                assert row["ratios"], (kernel, row["method"])
                assert all(math.isfinite(v) and v > 0 for v in row["ratios"].values())
    covariance = [r for r in data["rows"] if r["kernel"] == "covariance" and r["role"] == "ours"]
    assert all(0 < r["roofline"]["fraction"] for r in covariance)
    gemnet = [r for r in data["rows"] if r["kernel"] == "gemnet"]
    assert all(r["flops"] and r["flops"] > 0 for r in gemnet)  # counted by FlopCounterMode


def test_markdown_has_a_table_per_kernel(quick_report):
    _, outdir, _ = quick_report
    text = (outdir / "bench.md").read_text()
    for kernel in SIZES:
        assert f"## {kernel}" in text
    assert "x vs np.cov" in text and "x vs scipy sqrtm (pytorch-fid)" in text and "x vs ase" in text
    assert "FAILED" not in text


def test_cli_user_errors_are_one_line():
    runner = CliRunner()
    result = runner.invoke(cli, ["bench", "--only", "neighbours,frechet"])
    assert result.exit_code == 2
    assert "unknown kernel(s) neighbours" in result.output
    assert "Traceback" not in result.output
    result = runner.invoke(cli, ["bench", "--device", "tpu"])
    assert result.exit_code == 2 and "--device" in result.output


def test_cli_runs_the_suite(tmp_path, monkeypatch):
    calls = {}
    real = suite.run_suite

    def small(device, kernels, quick, log):  # the CLI path, on the smallest inputs
        calls.update(device=device, kernels=kernels, quick=quick)
        return real(device, kernels, quick, sizes={"frechet": (16,)}, peaks=FAKE_PEAKS, log=log, progress=False)

    monkeypatch.setattr(suite, "run_suite", small)
    result = CliRunner().invoke(cli, ["bench", "--quick", "--only", "frechet", "-o", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert calls == {"device": "cpu", "kernels": ["frechet"], "quick": True}
    data = json.loads((tmp_path / "bench.json").read_text())
    assert {r["size"] for r in data["rows"]} == {16} and len(data["rows"]) >= 3  # only the size asked for
    assert (tmp_path / "bench_frechet.png").is_file()
