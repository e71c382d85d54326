"""Units of the benchmark harness and suite: roofline arithmetic, ratios, the correctness gate,
timing, peaks, packaging."""
import math
from pathlib import Path

import pytest

from fastcsi._bench import harness as common
from fastcsi._bench import suite
from fastcsi._bench.harness import Case, Method

FAKE_PEAKS = {"device": "fake", "bandwidth_Bps": 100.0, "flops_float32": 1000.0, "flops_float64": 500.0,
              "method": {"bandwidth": "fake", "flops_float32": "fake", "flops_float64": "fake"}}


def test_roofline_compute_bound():
    # intensity 100 flop/B: the compute roof (1000 FLOP/s) applies; 2000 flops in 4 s = half of it
    roof = common.roofline(2000.0, 20.0, 4.0, FAKE_PEAKS, "float32")
    assert roof["bound"] == "compute"
    assert roof["intensity"] == pytest.approx(100.0)
    assert roof["attainable_flops"] == pytest.approx(1000.0)
    assert roof["fraction"] == pytest.approx(0.5)
    assert roof["bandwidth_fraction"] == pytest.approx(0.05)


def test_roofline_memory_bound_and_dtype_peak():
    # intensity 1 flop/B: attainable = 1 * 100 B/s = 100 FLOP/s, below both float peaks
    roof = common.roofline(100.0, 100.0, 4.0, FAKE_PEAKS, "float64")
    assert roof["bound"] == "memory"
    assert roof["peak_flops"] == 500.0
    assert roof["fraction"] == pytest.approx(25.0 / 100.0)
    # at intensity 10 the float64 roof (500) is lower than the bandwidth roof (1000)
    roof64 = common.roofline(1000.0, 100.0, 4.0, FAKE_PEAKS, "float64")
    assert roof64["bound"] == "compute" and roof64["fraction"] == pytest.approx(250.0 / 500.0)


def test_roofline_partial_models_and_nothing():
    assert common.roofline(None, 50.0, 1.0, FAKE_PEAKS)["fraction"] == pytest.approx(0.5)
    assert common.roofline(250.0, None, 1.0, FAKE_PEAKS)["fraction"] == pytest.approx(0.25)
    assert common.roofline(None, None, 1.0, FAKE_PEAKS) is None
    assert common.roofline(1.0, 1.0, 0.0, FAKE_PEAKS) is None
    assert common.roofline(1.0, 1.0, 1.0, {}) is None


def test_measured_cpu_peaks_are_positive():
    peaks = common.measure_peaks("cpu", quick=True)
    for key in ("bandwidth_Bps", "flops_float32", "flops_float64"):
        assert math.isfinite(peaks[key]) and peaks[key] > 0, key


def _row(method, role, seconds, size=1, status="ok"):
    return {"kernel": "k", "case": "c", "size": size, "size_unit": "n", "method": method, "role": role,
            "status": status, "seconds": seconds, "items": 10, "items_unit": "x", "flops": 100.0, "bytes": 10.0,
            "dtype": "float32"}


def test_ratios_only_against_baselines_of_the_same_case_and_size():
    rows = [_row("ours", "ours", 1.0), _row("base", "baseline", 4.0), _row("ctrl", "control", 2.0),
            _row("base", "baseline", 100.0, size=2), _row("broken", "baseline", None, status="failed")]
    common.finish_rows(rows, FAKE_PEAKS)
    assert rows[0]["ratios"] == {"base": 4.0}
    assert rows[2]["ratios"] == {"base": 2.0}
    assert rows[0]["throughput"] == 10.0
    assert rows[0]["roofline"]["fraction"] == pytest.approx(100.0 / 1000.0)
    assert rows[4]["ratios"] == {} and rows[4]["roofline"] is None


def _case(methods, repeats=2):
    """A case whose reference output is 0.0 and whose error is |output - 0| (nan stays nan)."""
    return Case("k", "c", 1, "n", 1, "x", lambda: {"inputs": True}, lambda inp: 0.0,
                lambda out, expected: abs(out - expected), methods, repeats=repeats)


def test_failed_check_is_not_timed_and_errors_are_reported():
    calls = []

    def wrong(inp):
        calls.append(1)
        return 1.0

    def boom(inp):
        raise ValueError("kernel exploded")

    case = _case([
        Method("wrong", "ours", wrong, tolerance=1e-12),
        Method("nan", "ours", lambda inp: float("nan"), tolerance=1e-12),
        Method("boom", "ours", boom, tolerance=1e-12),
        Method("absent", "baseline", skip="absent is not installed"),
        Method("fine", "baseline", lambda inp: 0.0, tolerance=1e-12),
    ])
    messages = []
    rows = {r["method"]: r for r in common.run_case(case, "cpu", log=lambda m, err=False: messages.append((m, err)))}
    assert len(calls) == 1  # the failed method ran once for the check and was never timed
    assert rows["wrong"]["status"] == "failed" and rows["wrong"]["seconds"] is None
    assert rows["wrong"]["correct"] is False and "FAILED" in rows["wrong"]["note"]
    assert rows["nan"]["status"] == "failed"
    assert rows["boom"]["status"] == "error" and "kernel exploded" in rows["boom"]["note"]
    assert rows["absent"]["status"] == "skipped" and rows["absent"]["note"] == "absent is not installed"
    assert rows["fine"]["status"] == "ok" and len(rows["fine"]["times"]) == 2 and rows["fine"]["correct"]
    assert sum(err for _, err in messages) == 3  # loud, on stderr: wrong, nan, boom


def test_a_wrong_baseline_is_failed_and_not_timed_and_ratios_skip_it():
    calls = {"ours": 0, "baseline": 0}

    def counted(name, value):
        def fn(inp):
            assert inp == {"inputs": True}  # the case's inputs, the same object for check and timing
            calls[name] += 1
            return value
        return fn

    case = _case([Method("ours", "ours", counted("ours", 0.0), tolerance=1e-12),
                  Method("baseline", "baseline", counted("baseline", 0.5), tolerance=1e-12)], repeats=3)
    rows = common.finish_rows(common.run_case(case, "cpu", log=lambda *a, **k: None), None)
    ours, baseline = rows
    assert baseline["status"] == "failed" and baseline["seconds"] is None and baseline["error"] == 0.5
    assert calls["baseline"] == 1  # the check only
    assert calls["ours"] == 1 + case.warmup + 3  # check, warm-up, timed repeats
    assert ours["status"] == "ok" and ours["ratios"] == {}  # no ratio against a row that failed


def test_dtype_tolerances_and_stated_ones():
    case = _case([])
    assert case.tolerance(Method("a", "ours", lambda inp: 0, "float32")) == common.TOLERANCES["float32"]
    assert case.tolerance(Method("b", "ours", lambda inp: 0, "float64")) == common.TOLERANCES["float64"]
    assert case.tolerance(Method("c", "ours", lambda inp: 0, "float32", 1e-3)) == 1e-3
    with pytest.raises(ValueError, match="role"):
        Method("d", "anchor", lambda inp: 0)  # no recorded-figure rows
    with pytest.raises(ValueError, match="nothing to run"):
        Method("e", "ours")


def test_measure_round_robin_order_and_resets():
    order = []
    timings = common.measure({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, "cpu", repeats=3,
                             warmup=1, resets={"b": lambda: order.append("reset b")})
    assert order == ["a", "reset b", "b"] + ["a", "reset b", "b"] * 3  # warm-up, then one call of each per round
    for timing in timings.values():
        assert len(timing["times"]) == len(timing["cpu_times"]) == timing["repeats"] == 3
        assert timing["seconds"] >= 0 and timing["cpu_seconds"] >= 0
    order.clear()
    common.measure({"a": lambda: order.append("a"), "b": lambda: order.append("b")}, "cpu", 2, 0, round_robin=False)
    assert order == ["a", "a", "b", "b"]
    single = common.measure(lambda: None, "cpu", repeats=2)
    assert len(single["times"]) == 2


def test_bench_scripts_ship_inside_the_package():
    """``pip install .`` (non-editable) finds bench/ as ``fastcsi._bench`` through the link."""
    import setuptools

    root = Path(suite.__file__).resolve().parents[1]
    assert (root / "fastcsi" / "_bench").resolve() == (root / "bench").resolve()
    packages = setuptools.find_packages(str(root), include=["fastcsi*"])
    assert "fastcsi._bench" in packages
    from fastcsi.cli.bench import KERNELS

    assert tuple(KERNELS) == suite.KERNELS == tuple(suite.MODULES)


def test_missing_scripts_give_a_clear_error(monkeypatch):
    import sys

    from fastcsi.cli.bench import load_suite
    from fastcsi.errors import FastCSIError

    monkeypatch.setitem(sys.modules, "fastcsi._bench", None)
    with pytest.raises(FastCSIError, match="source checkout"):
        load_suite()
