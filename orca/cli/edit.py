"""``orca invalidate`` and ``orca rm``: the commands that change what a store holds."""

from __future__ import annotations

import click
import polars as pl

from orca.cli._common import (
    CliError,
    State,
    drop_table,
    function_hashes,
    human_bytes,
    is_interactive,
    pipelines,
    require_node,
    results_tables,
    table_info,
    table_text,
    tag_columns,
)
from orca.names import (
    ENTRY_ID,
    FUNCTION_HASH,
    INVALIDATED_AT,
    PACKET_HASH,
    RECORD_ID,
    asset_table,
    provenance_table,
)


def parse_where(text: str, tags: list[str], where: str) -> pl.Expr:
    """``text`` -- a SQL ``WHERE`` condition over tag columns -- as a Polars expression.

    Parsed by Polars' SQL parser (``pl.sql_expr``): nothing is evaluated as Python. Every column
    it names must be one of ``tags``; CliError (naming ``where``) otherwise.
    """
    try:
        expr = pl.sql_expr(text)
        names = expr.meta.root_names()
    except pl.exceptions.PolarsError as exc:
        raise CliError(f"bad --where expression {text!r}: {exc}") from exc
    unknown = sorted(set(names) - set(tags))
    if unknown:
        raise CliError(f"bad --where expression {text!r}: {', '.join(map(repr, unknown))} "
                       f"{'is' if len(unknown) == 1 else 'are'} not a tag column of {where} "
                       f"(tags: {', '.join(tags) or 'none'})")
    return expr


@click.command()
@click.argument("pipeline")
@click.argument("node")
@click.option("--where", "where_text", required=True, metavar="EXPR",
              help="SQL condition over the node's tag columns, e.g. \"k > 2 AND grp = 'b'\".")
@click.option("--dry-run", is_flag=True, help="Count what would be invalidated; change nothing.")
@click.pass_obj
def invalidate(state: State, pipeline: str, node: str, where_text: str, dry_run: bool) -> None:
    """Mark the node's entries matching EXPR, and their results, for recomputation."""
    store = state.store()
    table = require_node(store, pipeline, node)
    raw = store.scan(table, include_invalidated=True)
    where = parse_where(where_text, tag_columns(raw), table)
    try:
        matched = function_hashes(raw.filter(pl.col(INVALIDATED_AT).is_null() & where)
                                  .select(ENTRY_ID, PACKET_HASH, RECORD_ID))
    except pl.exceptions.PolarsError as exc:  # e.g. comparing a number column with text
        raise CliError(f"bad --where expression {where_text!r} for {table}: {exc}") from exc
    entries = matched[ENTRY_ID].unique()
    tables = results_tables(store)
    per_results = {}
    for (fh,), group in matched.group_by(FUNCTION_HASH):
        name = tables.get(fh)
        if name is not None:  # results already removed (orca maintain --gc-unreferenced): nothing to mark
            per_results[name] = group[PACKET_HASH].unique()
    if dry_run:
        counts = {"entries": entries.len(), "results": {k: v.len() for k, v in per_results.items()}}
        verb = "would invalidate"
    else:
        # Results first: an entry whose result is invalidated is recomputed even if marking the
        # entry itself failed; the reverse order could leave a live entry on a stale result.
        results = {name: store.invalidate(name, keys) for name, keys in per_results.items()}
        counts = {"entries": store.invalidate(table, entries), "results": results}
        # As pipeline.invalidate does: the entries leave the node's asset at once.
        store.delete_rows(asset_table(pipeline, node), ENTRY_ID, entries)
        verb = "invalidated"
    payload = {"pipeline": pipeline, "node": node, "where": where_text, "dry_run": dry_run, **counts}
    lines = [f"{verb} {counts['entries']} entries of {table}"]
    lines += [f"{verb} {n} results of {name}" for name, n in counts["results"].items()]
    state.emit(payload, "\n".join(lines))


@click.command()
@click.argument("pipeline")
@click.option("--yes", is_flag=True, help="Do not ask; required when stdin is not a terminal.")
@click.pass_obj
def rm(state: State, pipeline: str, yes: bool) -> None:
    """Delete a pipeline's provenance tables (its results, runs and failures stay)."""
    store = state.store()
    nodes = pipelines(store).get(pipeline)
    if not nodes:
        known = ", ".join(pipelines(store)) or "none"
        raise CliError(f"no provenance tables for pipeline {pipeline!r} in {store.location} (pipelines: {known})")
    names = [provenance_table(pipeline, n) for n in nodes]
    infos = [table_info(store, n) for n in names]
    size = sum(i.bytes for i in infos)
    if not yes:
        if not is_interactive():
            raise CliError(f"refusing to delete pipeline {pipeline!r} without --yes (stdin is not a terminal)")
        click.echo(table_text([{"table": i.name, "rows": i.rows, "size": human_bytes(i.bytes)} for i in infos]),
                   err=True)
        click.confirm(f"Delete these {len(names)} tables?", abort=True, err=True)
    for name in names:
        drop_table(store, name)
    state.emit({"pipeline": pipeline, "removed": names, "bytes": size},
               f"removed {len(names)} tables of pipeline {pipeline} ({human_bytes(size)})")
