"""tools/performance_doc.py: a tiny fake bench.json rendered into the bench block of a document."""
import json
from pathlib import Path

import pytest

TOOLS = Path(__file__).resolve().parents[2] / "tools"


@pytest.fixture()
def performance_doc(monkeypatch):
    monkeypatch.syspath_prepend(str(TOOLS))
    import performance_doc

    return performance_doc


def _row(method, role, seconds, status="ok", size=1000):
    return {"kernel": "covariance", "case": "N x 4 float32", "size": size, "size_unit": "rows", "method": method,
            "role": role, "status": status, "error": 1e-15 if status == "ok" else 0.5, "tolerance": 1e-10,
            "seconds": seconds, "cpu_seconds": seconds, "throughput": 1000 / seconds if seconds else None,
            "items_unit": "rows"}


def _report():
    from fastcsi._bench.harness import finish_rows

    rows = finish_rows([_row("ours", "ours", 0.5), _row("np.cov", "baseline", 2.0),
                        _row("broken", "baseline", None, status="failed")], None)
    return {"schema": "fastcsi.bench/2", "date": "2026-12-03T08:00:00Z", "total_seconds": 12.0,
            "settings": {"device": "cpu", "quick": True, "only": ["covariance"]},
            "machine": {"cpu_model": "Fake CPU 9000", "cores": 2, "ram_gb": 8.0, "load_average": [3.5, 2.0, 1.0],
                        "gpu": None},
            "versions": {"fastcsi": "0.1", "torch": "2.13.0", "numpy": "2.0"},
            "kernels": {"covariance": {"title": "streaming covariance"}}, "rows": rows,
            "failed": ["covariance / N x 4 float32 / broken"]}


def test_render_and_replace_the_block(performance_doc, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_report()))
    doc = tmp_path / "performance.md"
    doc.write_text("# title\n\nbefore\n\n<!-- bench:begin -->\nold table\n<!-- bench:end -->\n\nafter\n")
    assert performance_doc.main([str(tmp_path), "--doc", str(doc), "--note", "shared machine, loaded"]) == 0
    text = doc.read_text()
    assert text.startswith("# title\n\nbefore\n\n<!-- bench:begin -->\n") and text.endswith("<!-- bench:end -->\n\nafter\n")
    assert "old table" not in text
    block = text.split("<!-- bench:begin -->")[1].split("<!-- bench:end -->")[0]
    assert "2026-12-03T08:00:00Z" in block and "Fake CPU 9000" in block and "load average 3.5" in block
    assert "torch 2.13.0" in block and "note: shared machine, loaded" in block and "--quick" in block
    assert "### covariance: streaming covariance" in block
    assert "| x vs np.cov |" in block and "x vs broken" not in block
    ours = next(line for line in block.splitlines() if line.startswith("| N x 4 float32 | 1000 rows | ours |"))
    assert "| 0.5 |" in ours and "| 4 |" in ours  # median seconds, and 2.0 / 0.5 from the same run
    assert "FAILED" in block and "broken" in block  # a failed row is shown, never used as a divisor
    assert not list(tmp_path.glob(".*.tmp"))
    # rendering again replaces the block instead of adding another one
    performance_doc.main([str(bench), "--doc", str(doc)])
    assert doc.read_text().count("### covariance") == 1 and "note:" not in doc.read_text()


def test_a_document_without_the_block_is_refused(performance_doc, tmp_path):
    bench = tmp_path / "bench.json"
    bench.write_text(json.dumps(_report()))
    doc = tmp_path / "performance.md"
    doc.write_text("# no markers\n")
    with pytest.raises(SystemExit, match="bench:begin"):
        performance_doc.main([str(bench), "--doc", str(doc)])
    assert doc.read_text() == "# no markers\n"
    bench.write_text(json.dumps({"schema": "something else"}))
    doc.write_text("<!-- bench:begin -->\n<!-- bench:end -->\n")
    with pytest.raises(SystemExit, match="not a fastcsi bench report"):
        performance_doc.main([str(bench), "--doc", str(doc)])
