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


def test_usage_mistakes_are_one_line_with_exit_2():
    runner = CliRunner()
    for argv in (["nosuch"], ["select", "--batch-size", "x"], ["data", "info"]):
        result = runner.invoke(cli, argv)
        assert result.exit_code == 2, argv
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert len(lines) == 1 and lines[0].startswith("fastcsi: error:"), result.output


def test_help_states_the_defaults_that_apply():
    """select/demo --help give the demo's real sample count; pretrain --help the pretraining defaults
    (batch size, learning rate, layer-wise rates), not fine-tuning text."""
    import re

    from click.testing import CliRunner

    from fastcsi.cli.app import cli
    from fastcsi.pipeline.settings import DEMO_SAMPLES, PAPER_SAMPLES
    from fastcsi.train.config import PRETRAIN_DEFAULTS

    def help_of(*command):
        text = CliRunner().invoke(cli, [*command, "--help"], terminal_width=400).output
        return re.sub(r"\s+", " ", text)

    for command in ("select", "demo"):
        assert f"[default: {PAPER_SAMPLES}; demo: {DEMO_SAMPLES}]" in help_of(command)
    pretrain = help_of("pretrain")
    assert f"[default: pretrain {PRETRAIN_DEFAULTS.batch_size};" in pretrain
    assert f"[default: pretrain {PRETRAIN_DEFAULTS.lr:.0e}".replace("e-04", "e-4") + ";" in pretrain
    assert f"pretrain {PRETRAIN_DEFAULTS.layer_lr} (one rate for every layer)" in pretrain
