"""The ``orca`` command line: look into a store, invalidate entries, keep it tidy.

``orca [--store PATH] [--json] COMMAND ...``; see ``docs/cli.md``. Exit codes: 0 ok, 1 error
(one line on stderr: missing store, unknown pipeline or node, bad expression...), 2 usage
(a bad option or argument, reported by click).
"""

from __future__ import annotations

import os

import click
import polars as pl
from deltalake.exceptions import DeltaError

from orca.cli._common import CliError, State
from orca.cli.catalog import ls, show
from orca.cli.edit import invalidate, rm
from orca.cli.history import failures, history, runs
from orca.cli.maintain import maintain
from orca.cli.script import graph, plan
from orca.errors import OrcaError

__all__ = ["main"]


class _Group(click.Group):
    """Turns the library's and the table readers' errors into one-line user errors."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (OrcaError, DeltaError, pl.exceptions.PolarsError, OSError) as exc:
            if os.environ.get("ORCA_DEBUG"):
                raise
            raise CliError(f"{type(exc).__name__}: {exc}".replace("\n", " ")) from exc


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--store", "store_path", envvar="ORCA_STORE", default=".orca", show_default=True,
              metavar="PATH", help="The store directory (default: $ORCA_STORE, else ./.orca).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.version_option(package_name="orca")
@click.pass_context
def main(ctx: click.Context, store_path: str, as_json: bool) -> None:
    """Inspect and maintain an orca store (a directory of Delta tables)."""
    ctx.obj = State(store_path, as_json)


for command in (ls, show, runs, failures, history, plan, graph, invalidate, rm, maintain):
    main.add_command(command)
