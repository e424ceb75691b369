"""The `headscope` command: one click group, one thin module per command group.

Each command parses its options, calls one API function and prints through `headscope.reports`. Every
user error is a `HeadscopeError`; `_Group.invoke` turns it into one `Error: ...` line and exit code 1, or
re-raises it with its traceback under `--debug`.

Launched by torchrun (`torchrun --nproc-per-node N -m headscope capture|classify|ablate --sweep ...`), every
process joins the process group, takes its shard of the work, and only rank 0 prints and writes files.
"""

from __future__ import annotations

import click

from headscope import __version__, distributed
from headscope.cli.ablate import ablate
from headscope.cli.capture import capture
from headscope.cli.classify import classify
from headscope.cli.flow import flow
from headscope.cli.models import models
from headscope.cli.patch import pairs, patch
from headscope.cli.pattern import pattern
from headscope.cli.report import report
from headscope.cli.train import train
from headscope.errors import HeadscopeError, InputError

_DEBUG = "headscope.debug"
_SHARDED_COMMANDS = ("capture", "classify", "ablate")  # what torchrun may launch; `ablate` only with --sweep


class _Group(click.Group):
    """The one place where library errors become command-line errors."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except HeadscopeError as err:
            if ctx.meta.get(_DEBUG):
                raise
            message = " ".join(str(err).splitlines()) or type(err).__name__
            message += _option_hint(ctx, err.parameter)
            if distributed.launched_by_torchrun():
                message = f"[rank {distributed.rank()}] {message}"
            raise click.ClickException(message) from err


def _option_hint(ctx: click.Context, parameter: str | None) -> str:
    """` (--seq-len)` when the failing command has an option for the API argument the error names."""
    command = ctx.command.get_command(ctx, ctx.invoked_subcommand) if ctx.invoked_subcommand else None
    for param in getattr(command, "params", []):
        if parameter and param.name == parameter and isinstance(param, click.Option):
            return f" ({param.opts[0]})"
    return ""


@click.group(cls=_Group)
@click.version_option(__version__, prog_name="headscope")
@click.option("--debug", is_flag=True, help="Show the full traceback of an error.")
@click.pass_context
def cli(ctx: click.Context, debug: bool) -> None:
    """Mechanistic interpretability of attention heads."""
    ctx.meta[_DEBUG] = debug
    if distributed.launched_by_torchrun():
        if ctx.invoked_subcommand not in _SHARDED_COMMANDS:
            raise InputError(f"`headscope {ctx.invoked_subcommand}` does not run across processes: run it without "
                             f"torchrun (torchrun can launch {', '.join(_SHARDED_COMMANDS)} --sweep)")
        distributed.init_from_environment()
        ctx.call_on_close(distributed.close)


for _command in (models, capture, classify, pattern, flow, ablate, patch, pairs, report, train):
    cli.add_command(_command)


def main() -> None:
    """The console script `headscope` and `python -m headscope`."""
    cli(prog_name="headscope")
