import json
import time

import torch

from fastcsi.profiling import Profiler, torch_trace


def test_stages_counts_and_reports(tmp_path):
    prof = Profiler()
    for _ in range(3):
        with prof.stage("read"):
            time.sleep(0.01)
    with prof.stage("model"):
        time.sleep(0.02)
    prof.count(structures=30, atoms=300)
    prof.stop()
    summary = prof.write(tmp_path, settings={"samples": 30})
    assert summary["stages"]["read"]["calls"] == 3
    assert summary["stages"]["read"]["total_s"] >= 0.03
    assert summary["stages"]["model"]["total_s"] >= 0.02
    assert summary["throughput"]["atoms_per_s"] > 0
    assert summary["memory"]["peak_host_rss_mib"] > 10
    on_disk = json.loads((tmp_path / "profile.json").read_text())
    assert on_disk["counters"] == {"structures": 30, "atoms": 300}
    md = (tmp_path / "profile.md").read_text()
    assert "| read |" in md and "atoms" in md


def test_stage_time_recorded_on_exception():
    prof = Profiler()
    try:
        with prof.stage("boom"):
            raise ValueError
    except ValueError:
        pass
    assert prof.stages["boom"]["calls"] == 1


def test_disabled_profiler_records_nothing():
    prof = Profiler(enabled=False)
    with prof.stage("x"):
        pass
    assert prof.summary()["stages"] == {}


def test_torch_trace_writes_chrome_trace(tmp_path):
    with torch_trace(tmp_path, wait=0, warmup=1, active=1) as tracer:
        for _ in range(3):
            torch.ones(4) @ torch.ones(4)
            tracer.step()
    trace = json.loads((tmp_path / "trace.json").read_text())
    assert "traceEvents" in trace
