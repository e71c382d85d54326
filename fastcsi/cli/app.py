"""Root click group. Each command lives in its own module and is registered in ``_register``."""
from __future__ import annotations

import signal
import sys

import click

from fastcsi import __version__
from fastcsi.errors import FastCSIError, Interrupted


class UserError(click.ClickException):
    """A :class:`FastCSIError` on its way out: one line on stderr, exit status 2."""

    exit_code = 2

    def show(self, file=None):
        click.echo(f"fastcsi: error: {self.format_message()}", err=True)


class OneLineUsageError(click.UsageError):
    """click's usage errors print usage + hint + message; a user mistake gets one line here."""

    def show(self, file=None):
        where = self.ctx.command_path if self.ctx is not None else "fastcsi"
        click.echo(f"fastcsi: error: {self.format_message()} (see '{where} --help')", err=True)


class FastCSIGroup(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except FastCSIError as exc:
            raise UserError(str(exc)) from None
        except OSError as exc:
            # an output that cannot be written (no permission, disk full, file size limit) or an
            # input that vanished: the user's environment, told in one line
            if exc.filename is None and exc.errno is None:
                raise
            where = f"{exc.filename}: " if exc.filename else ""
            raise UserError(f"{where}{exc.strerror or exc}") from None
        except OneLineUsageError:
            raise
        except click.UsageError as exc:
            raise OneLineUsageError(exc.format_message(), ctx=exc.ctx) from None


@click.group(cls=FastCSIGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="fastcsi")
def cli():
    """fastcsi: pick pretraining data by Chemical Similarity Index, then pretrain and fine-tune
    GemNet-OC."""
    import warnings

    from fastcsi.utils import tune_allocator

    # a warning meant for the user is one line, like an error: no source line, no module path
    warnings.formatwarning = lambda message, category, *args, **kwargs: f"fastcsi: warning: {message}\n"
    tune_allocator()  # page faults of fresh activations cost 5-7% of a step (FASTCSI_MALLOC_TUNING=0: off)


def _register():
    # Imported lazily per module so that a command's heavy imports (torch, ase) load only when used.
    from fastcsi.cli import data as data_cmds

    cli.add_command(data_cmds.data)

    from fastcsi.cli import stats as stats_cmds

    cli.add_command(stats_cmds.stats)
    cli.add_command(stats_cmds.csi_cmd)

    from fastcsi.cli import select as select_cmds

    cli.add_command(select_cmds.select)
    cli.add_command(select_cmds.demo)
    stats_cmds.stats.add_command(select_cmds.compute)

    from fastcsi.cli import train as train_cmds

    cli.add_command(train_cmds.pretrain)
    cli.add_command(train_cmds.finetune)
    cli.add_command(train_cmds.report)

    from fastcsi.cli import inference as inference_cmds

    cli.add_command(inference_cmds.predict)
    cli.add_command(inference_cmds.evaluate)

    from fastcsi.cli import bench as bench_cmds

    cli.add_command(bench_cmds.bench)


_register()


def _raise_interrupted(signum, frame):
    raise Interrupted()


def main(argv=None):
    from fastcsi.threads import prefer_passive_omp_wait

    prefer_passive_omp_wait()  # the process is ours: idle OpenMP workers sleep, not spin (before torch loads)
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.default_int_handler:  # leave a handler the embedding program set alone
        signal.signal(signal.SIGINT, _raise_interrupted)
    try:
        cli.main(args=argv, prog_name="fastcsi")
    except (Interrupted, KeyboardInterrupt):
        click.echo("fastcsi: interrupted", err=True)
        sys.exit(130)
    finally:
        if previous is signal.default_int_handler:
            signal.signal(signal.SIGINT, previous)
