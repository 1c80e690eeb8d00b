"""``orca plan`` and ``orca graph``: a pipeline defined by a Python script, planned or drawn.

``SCRIPT[:NAME]`` names a script and, optionally, the variable holding the pipeline. The script
runs as a module named ``__orca_plan__`` (:func:`runpy.run_path`), so code guarded by
``if __name__ == "__main__":`` -- the usual ``pipeline.run()`` -- does not run. The pipeline
carries its own store (``--store`` is not used). Neither command computes or writes anything:
``plan`` hashes the inputs and reads the store, ``graph`` reads the latest run's counts.
"""

from __future__ import annotations

import contextlib
import os
import runpy
import sys
from collections.abc import Iterator
from typing import Any

import click
import polars as pl

from orca.cli._common import CliError, State, table_text
from orca.pipeline import Pipeline

RUN_NAME = "__orca_plan__"


@contextlib.contextmanager
def _script_path(folder: str) -> Iterator[None]:
    """Put the script's folder first on ``sys.path`` (as ``python script.py`` does) while it runs."""
    sys.path.insert(0, folder)
    try:
        yield
    finally:
        with contextlib.suppress(ValueError):
            sys.path.remove(folder)


def load_pipeline(target: str) -> Pipeline:
    """The pipeline ``SCRIPT[:NAME]`` defines: the variable ``NAME``, or the only pipeline."""
    path, _, name = target.rpartition(":") if ":" in target and not os.path.exists(target) else (target, "", "")
    if not os.path.isfile(path):
        raise CliError(f"no script {path!r}")
    try:
        with _script_path(os.path.dirname(os.path.abspath(path))):
            found = runpy.run_path(path, run_name=RUN_NAME)
    except SystemExit as exc:
        raise CliError(f"script {path} exited (code {exc.code}) while loading") from None
    except Exception as exc:  # noqa: BLE001 - the user's script may raise anything: say where, in one line
        raise CliError(f"script {path} raised {type(exc).__name__}: {exc}") from None
    defined = {k: v for k, v in found.items() if isinstance(v, Pipeline) and not k.startswith("__")}
    if name:
        if name not in found:
            raise CliError(f"script {path} defines no {name!r}"
                           + (f"; pipelines: {', '.join(defined)}" if defined else ""))
        if not isinstance(found[name], Pipeline):
            raise CliError(f"{name!r} in {path} is a {type(found[name]).__name__}, not an orca.Pipeline")
        return found[name]
    if not defined:
        raise CliError(f"script {path} defines no orca.Pipeline at module level "
                       "(build it outside functions, or give SCRIPT:NAME)")
    if len(defined) > 1:
        raise CliError(f"script {path} defines several pipelines ({', '.join(defined)}): give SCRIPT:NAME")
    return next(iter(defined.values()))


@click.command()
@click.argument("script", metavar="SCRIPT[:PIPELINE]")
@click.pass_obj
def plan(state: State, script: str) -> None:
    """What the next run of a script's pipeline would serve from the store, compute, and why.

    Runs SCRIPT's top level (not its ``__main__`` block); computes and writes nothing.
    """
    pipeline = load_pipeline(script)
    planned = pipeline.plan()
    nodes = [{"node": p.label, "total": p.total, "cached": p.cached, "done": p.done, "hits": p.hits,
              "to_compute": p.to_compute, "pending": p.pending, "reasons": p.reasons,
              "function_hash": p.function_hash, "old_function_hashes": list(p.old_function_hashes)}
             for p in planned.values()]
    for node, p in zip(nodes, planned.values(), strict=True):
        node["identity_changes"] = [f"{kind} {name}" for kind, name in p.identity_changes]
    payload: dict[str, Any] = {"pipeline": pipeline.name, "store": pipeline.store.location, "nodes": nodes}
    rows = [{**{k: n[k] for k in ("node", "total", "cached", "to_compute", "pending")},
             "reasons": ", ".join(f"{k}: {v}" for k, v in sorted(n["reasons"].items())) or "-",
             "code changed": ", ".join(n["identity_changes"]) or "-"} for n in nodes]
    todo = sum(n["to_compute"] for n in nodes)
    header = (f"pipeline {pipeline.name} (store {pipeline.store.location}): "
              + (f"{todo} entries to compute" if todo else "up to date")
              + (", more pending upstream" if any(n["pending"] for n in nodes) else ""))
    state.emit(payload, "\n".join([header, "", table_text(rows)]))


@click.command()
@click.argument("script", metavar="SCRIPT[:PIPELINE]")
@click.option("--format", "fmt", type=click.Choice(["svg", "dot", "mermaid"]), default="mermaid",
              show_default=True, help="What to draw.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, writable=True), default=None,
              help="Write to FILE instead of stdout.")
def graph(script: str, fmt: str, output: str | None) -> None:
    """Draw a script's pipeline (sources, operators, function nodes) with its latest run's counts."""
    drawn = load_pipeline(script).graph()
    text = {"svg": drawn.to_svg, "dot": drawn.to_dot, "mermaid": drawn.to_mermaid}[fmt]()
    if output is None:
        click.echo(text)
        return
    with open(output, "w", encoding="utf-8") as f:
        f.write(text + "\n")
    click.echo(f"wrote {fmt} of pipeline {drawn.pipeline} to {output}", err=True)


@click.command()
@click.argument("script", metavar="SCRIPT[:PIPELINE]")
@click.argument("node")
@click.option("--where", "where", default=None, metavar="EXPR",
              help="Which output rows: a SQL condition over the node's asset columns, e.g. \"name = 'b'\".")
@click.pass_obj
def lineage(state: State, script: str, node: str, where: str | None) -> None:
    """Trace a node's output rows back to their source rows and files (``pipeline.lineage``).

    Runs SCRIPT's top level (not its ``__main__`` block) to know the pipeline; reads the store.
    """
    pipeline = load_pipeline(script)
    if node not in pipeline.function_nodes:
        raise CliError(f"pipeline {pipeline.name!r} has no function node {node!r}; "
                       f"its function nodes are {sorted(pipeline.function_nodes)}")
    try:
        expression = pl.sql_expr(where) if where else None
    except (pl.exceptions.PolarsError, ValueError) as exc:
        raise CliError(f"--where {where!r} is not a SQL condition: {exc}") from exc
    steps = pipeline.lineage(node, expression)
    state.emit({"pipeline": pipeline.name, "node": node, "steps": steps.to_dicts()},
               table_text(steps.with_columns(pl.col(pl.String).str.slice(0, 16)).to_dicts()) if steps.height
               else f"no rows of {node} match")
