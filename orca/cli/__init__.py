"""The ``orca`` command line: look into a store, invalidate entries, keep it tidy.

``orca [--store PATH] [--json] COMMAND ...``; see ``docs/cli.md``. Exit codes: 0 ok, 1 error
(one line on stderr: missing store, unknown pipeline or node, bad expression...), 2 usage
(a bad option or argument, reported by click).
"""

from __future__ import annotations

import importlib
import os

import click
import polars as pl
from deltalake.exceptions import DeltaError

from orca.cli._common import CliError, State
from orca.errors import OrcaError

__all__ = ["main"]

# Each command's module is imported only when the command runs, so that `orca ls` does not pay
# for importing the run engine (`orca plan` and `orca graph` load a user's pipeline and do).
_COMMANDS = {
    "ls": "orca.cli.catalog:ls", "show": "orca.cli.catalog:show", "runs": "orca.cli.history:runs",
    "failures": "orca.cli.history:failures", "history": "orca.cli.history:history",
    "plan": "orca.cli.script:plan", "graph": "orca.cli.script:graph", "invalidate": "orca.cli.edit:invalidate",
    "rm": "orca.cli.edit:rm", "maintain": "orca.cli.maintain:maintain", "lineage": "orca.cli.script:lineage",
}


class _Group(click.Group):
    """Loads commands lazily (click's documented pattern) and turns the library's and the table
    readers' errors into one-line user errors."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(_COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in _COMMANDS:
            return None
        module, attr = _COMMANDS[name].split(":")
        return getattr(importlib.import_module(module), attr)

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

