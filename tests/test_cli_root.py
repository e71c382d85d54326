import subprocess
import sys

from click.testing import CliRunner

import fastcsi
from fastcsi.cli import cli


def test_version():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    assert fastcsi.__version__ in result.output


def test_help_lists_commands():
    result = CliRunner().invoke(cli, ["--help"])
    assert result.exit_code == 0
    for name in cli.commands:
        assert name in result.output


def test_module_entry_point():
    out = subprocess.run([sys.executable, "-m", "fastcsi", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and fastcsi.__version__ in out.stdout


def test_native_extension_is_built():
    from fastcsi import _native

    assert _native.native is not None, _native.NATIVE_ERROR
