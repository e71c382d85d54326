"""Render a ``fastcsi bench`` report (bench.json) as the Markdown tables of docs/performance.md.

Per kernel one table: case, size, method, role, median time, median process CPU time, throughput,
the ratio against each named baseline of the SAME run (baseline seconds / seconds, > 1 = faster)
and the correctness check; above them the machine, load average, versions, settings and date, all
read from the JSON. The text between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` of the
document is replaced (atomic write); the rest of the document is left as it is.

    python tools/performance_doc.py BENCH_JSON [--doc docs/performance.md] [--note TEXT]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
VERSIONS = ("fastcsi", "torch", "numpy", "scipy", "triton", "numba", "vesin", "matscipy", "ase")


def render(report: dict, note: str | None = None) -> str:
    """The Markdown block (without the markers) for one bench.json report."""
    from fastcsi._bench.harness import by_kernel, kernel_table, machine_line, timing_caveat

    settings = report["settings"]
    versions = report.get("versions") or {}
    lines = [f"Run of {report.get('date') or 'an undated run'}: `fastcsi bench --device {settings['device']}"
             f"{' --quick' if settings.get('quick') else ''}`, {report['total_seconds']:.0f} s in all.", "",
             f"- machine: {machine_line(report)}",
             "- versions: " + ", ".join(f"{k} {versions[k]}" for k in VERSIONS if versions.get(k))]
    if note:
        lines.append(f"- note: {note}")
    lines += ["- ratios (`x vs B`) are baseline seconds / our seconds from this run only; every row was "
              "checked against the op's reference on the timed inputs before it was timed", ""]
    lines += timing_caveat(report)
    kernels = report.get("kernels") or {}
    for kernel, rows in by_kernel(report["rows"]).items():
        lines += [f"### {kernel}: {kernels.get(kernel, {}).get('title', kernel)}", "",
                  *kernel_table(rows, roofline_column=False), ""]
    if report.get("failed"):
        lines += [f"**Failed or raised:** {'; '.join(report['failed'])}", ""]
    return "\n".join(lines).rstrip() + "\n"


def replace_block(text: str, block: str) -> str:
    """``text`` with the part between the bench markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise SystemExit(f"performance_doc: the document has no {BEGIN} ... {END} block")
    return text[:start + len(BEGIN)] + "\n" + block + text[end:]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("bench_json", type=Path, help="bench.json written by fastcsi bench (or its folder)")
    parser.add_argument("--doc", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "performance.md")
    parser.add_argument("--note", default=None, help="one line of context printed with the run (e.g. the load)")
    args = parser.parse_args(argv)
    from fastcsi.utils import atomic_write, read_json

    path = args.bench_json / "bench.json" if args.bench_json.is_dir() else args.bench_json
    report = read_json(path, "bench report")
    if not str(report.get("schema", "")).startswith("fastcsi.bench/"):
        raise SystemExit(f"performance_doc: {path} is not a fastcsi bench report (schema {report.get('schema')!r})")
    text = replace_block(args.doc.read_text(), render(report, args.note))
    with atomic_write(args.doc) as handle:
        handle.write(text)
    print(f"rendered {path} into {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
