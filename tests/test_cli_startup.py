"""Start-up: ``fastcsi --version`` and every ``--help`` answer without importing torch (about 1 s idle,
many seconds under load); a command loads torch, numpy and the rest only when it runs."""
import subprocess
import sys

import click
import pytest

from fastcsi.cli.app import cli

HEAVY = ("torch", "numpy", "scipy", "ase", "h5py", "lmdb")

# runs the CLI in a fresh interpreter and reports the heavy modules it imported
PROBE = """
import sys
from fastcsi.cli.app import main
try:
    main(sys.argv[1:])
except SystemExit as exc:
    code = exc.code
else:
    code = 0
print("exit", code, "heavy", sorted(m for m in {heavy!r} if m in sys.modules), file=sys.stderr)
""".format(heavy=HEAVY)


def _command_paths(group=cli, prefix=()):
    paths = []
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        command = group.get_command(ctx, name)
        paths.append((*prefix, name))
        if isinstance(command, click.Group):
            paths += _command_paths(command, (*prefix, name))
    return paths


def _probe(args):
    result = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=120)
    return result.stdout, result.stderr.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [["--version"], ["--help"]], ids=["version", "help"])
def test_version_and_help_import_nothing_heavy(args):
    stdout, report = _probe(args)
    assert report == "exit 0 heavy []", report
    assert ("0." in stdout) if args == ["--version"] else ("pretrain" in stdout)


def test_every_command_help_imports_nothing_heavy():
    paths = _command_paths()
    assert ("stats", "compute") in paths and ("predict",) in paths
    loaded = {" ".join(path): report for path in paths
              for report in [_probe([*path, "--help"])[1]] if report != "exit 0 heavy []"}
    assert loaded == {}


def test_data_info_reads_a_file_without_torch(tmp_path):
    # counting and listing a dataset's structures needs the readers, not the batching code
    from ase.build import molecule
    from ase.io import write

    path = tmp_path / "water.extxyz"
    write(path, [molecule("H2O")] * 3)
    stdout, report = _probe(["data", "info", str(path)])
    assert "structures   3" in stdout
    assert report.startswith("exit 0 heavy [") and "torch" not in report, report
