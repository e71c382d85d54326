"""``fastcsi bench``: the kernel benchmark suite (bench/suite.py, shipped as ``fastcsi._bench``)."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from fastcsi.errors import FastCSIError

# the suite's kernels (bench/suite.py MODULES): one per op family, then the model-level rows
KERNELS = ("radius", "gemnet_indices", "covariance", "frechet", "activation", "interaction", "gemnet", "train")


def load_suite():
    """The suite module; a clear error when this install does not carry the bench scripts."""
    try:
        from fastcsi._bench import suite
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("fastcsi._bench"):
            raise FastCSIError(
                "fastcsi bench: the benchmark scripts are not part of this installation; install fastcsi from a "
                "source checkout (pip install -e '.[bench]') to run them"
            ) from None
        raise
    return suite


def parse_only(text: str | None) -> list[str]:
    if not text:
        return list(KERNELS)
    names = [name.strip() for name in text.split(",") if name.strip()]
    unknown = [name for name in names if name not in KERNELS]
    if unknown or not names:
        raise FastCSIError(f"fastcsi bench: unknown kernel(s) {', '.join(unknown) or repr(text)} in --only; "
                           f"choose from {', '.join(KERNELS)}")
    return list(dict.fromkeys(names))


@click.command("bench")
@click.option("--device", default="cpu", show_default=True, help="cpu, cuda or cuda:N")
@click.option("--only", default=None, help=f"comma-separated subset of {','.join(KERNELS)}")
@click.option("--quick", is_flag=True, help="small sizes and models: the whole suite in under a minute")
@click.option("-o", "--outdir", type=click.Path(file_okay=False, path_type=Path), default=Path("bench_out"),
              show_default=True, help="where bench.json, bench.md and the PNGs go")
def bench(device, only, quick, outdir):
    """Time every hot path against its named baselines (correctness first) and write bench.json,
    bench.md and one time-vs-size PNG per kernel."""
    kernels = parse_only(only)
    if not (device == "cpu" or device.startswith("cuda")):
        raise FastCSIError(f"fastcsi bench: --device must be cpu or cuda[:N], got {device!r}")
    if device.startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise FastCSIError("fastcsi bench: --device cuda was asked for but torch sees no CUDA device here")
    suite = load_suite()

    def log(message, err=False):
        click.echo(message, err=err)

    report = suite.run_suite(device, kernels, quick, log=log)
    from fastcsi._bench.harness import write_report

    files = write_report(report, outdir)
    click.echo(f"wrote {', '.join(str(outdir / name) for name in files.values())} in {report['total_seconds']:.1f} s")
    for note in report["skipped"]:
        click.echo(f"skipped: {note}")
    if report["failed"]:
        click.echo(f"fastcsi bench: {len(report['failed'])} row(s) FAILED their correctness check or raised: "
                   + "; ".join(report["failed"]), err=True)
        sys.exit(1)
