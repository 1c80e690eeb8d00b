"""``orca ls`` and ``orca show``: what a store holds, read from Delta metadata and the runs log."""

from __future__ import annotations

from typing import Any

import click
import polars as pl

from orca.assets import read_asset
from orca.cli._common import (
    CliError,
    State,
    function_hashes,
    human_bytes,
    human_seconds,
    node_order,
    pipelines,
    require_node,
    require_pipeline,
    results_tables,
    run_events,
    table_info,
    table_text,
    tag_columns,
)
from orca.cli.history import run_summaries
from orca.names import (
    ENTRY_ID,
    FUNCTION_HASH,
    INVALIDATED_AT,
    PACKET_HASH,
    RECORD_ID,
    RECORDED_AT,
    RUN_ID,
    SYSTEM_PREFIX,
    asset_table,
    provenance_table,
)
from orca.stores import DeltaStore


@click.command()
@click.pass_obj
def ls(state: State) -> None:
    """List pipelines, their nodes, and every table with its rows and size."""
    store = state.store()
    infos = [table_info(store, name) for name in store.tables()]
    events = run_events(store)
    with_tables = pipelines(store)
    listing = []
    for p in sorted(set(with_tables) | set(events["pipeline"].drop_nulls().to_list())):
        mine = events.filter(pl.col("pipeline") == p)
        last = run_summaries(mine, limit=1)
        listing.append({"pipeline": p, "nodes": [n for n in node_order(store, p, mine) if n in with_tables.get(p, [])],
                        "runs": mine["run_id"].n_unique(), "last_run": last[0]["status"] if last else None})
    payload = {"store": store.location, "pipelines": listing, "tables": [i.as_dict() for i in infos]}
    if not infos:
        state.emit(payload, f"no tables in {store.location}")
        return
    rows = [{"table": i.name, "rows": i.rows, "live": i.live, "files": i.files, "size": human_bytes(i.bytes)}
            for i in infos]
    text = "\n".join([
        table_text([{**p, "nodes": ", ".join(p["nodes"]) or "-"} for p in listing]),
        "",
        table_text(rows, ["table", "rows", "live", "files", "size"]),
    ])
    state.emit(payload, text)


@click.command()
@click.argument("pipeline")
@click.argument("node", required=False)
@click.option("--limit", default=10, show_default=True, type=click.IntRange(min=0),
              help="Rows of NODE's output to show.")
@click.pass_obj
def show(state: State, pipeline: str, node: str | None, limit: int) -> None:
    """Show a pipeline's nodes with the counts of its last run; with NODE, also the head of that
    node's current output (its asset table; for a node never materialised, its latest recorded
    entries joined to their outputs)."""
    store = state.store()
    events = run_events(store, pipeline)
    nodes = require_pipeline(store, pipeline, events)
    last = run_summaries(events, limit=1)
    run = last[0] if last else None
    per_node = {n["node"]: n for n in run["nodes"]} if run else {}
    rows = []
    for label in nodes:
        name = provenance_table(pipeline, label)
        info = table_info(store, name) if store.exists(name) else None
        counts = per_node.get(label, {})
        rows.append({"node": label, "table": name if info else None, "rows": info.rows if info else None,
                     "live": info.live if info else None, "total": counts.get("total"),
                     "cached": counts.get("cached"), "computed": counts.get("computed"),
                     "failed": counts.get("failed"), "status": counts.get("status")})
    payload: dict[str, Any] = {"pipeline": pipeline, "last_run": run, "nodes": rows}
    header = (f"pipeline {pipeline}: last run {run['run_id']} {run['status']}, started "
              f"{run['started_at']:%Y-%m-%d %H:%M:%S}, took {human_seconds(run['duration_s'])}"
              if run else f"pipeline {pipeline}: no runs recorded")
    text = [header, "", table_text(rows)]
    if node is not None:
        if node not in nodes:
            raise CliError(f"pipeline {pipeline!r} has no node {node!r}; nodes: {', '.join(nodes)}")
        if store.exists(asset_table(pipeline, node)):
            frame, rows_in_asset = current_output(store, pipeline, node, limit)
            payload["current_output"] = frame.to_dicts()
            title = f"current output ({asset_table(pipeline, node)}: {rows_in_asset} rows; first {limit} by tags)"
        else:  # an older store, or a node never materialised: what provenance says, labelled as such
            frame = recorded_entries(store, pipeline, node, limit)
            payload["recorded_entries"] = frame.to_dicts()
            title = f"recorded entries (latest {limit}, newest first; recorded history, not the exact current output)"
        text += ["", f"{node}: {title}", _frame_text(frame)]
    state.emit(payload, "\n".join(text))


def recorded_entries(store: DeltaStore, pipeline: str, node: str, limit: int) -> pl.DataFrame:
    """The ``limit`` most recently recorded live provenance rows of a node, with their outputs.

    Tags, outputs, ``__recorded_at`` and ``__run_id``. An entry's result is found through the
    results table its row points to (see ``function_hashes``), by packet hash. This is history:
    entries recorded for an input the pipeline no longer reads stay live too.
    """
    table = require_node(store, pipeline, node)
    raw = store.scan(table, include_invalidated=True)
    tags = tag_columns(raw)
    latest = (raw.filter(pl.col(INVALIDATED_AT).is_null())
              .select(*tags, ENTRY_ID, PACKET_HASH, RECORD_ID, RECORDED_AT, RUN_ID)
              .top_k(limit, by=RECORDED_AT)
              # a duplicate row of one entry (two racing writers) shows once
              .unique(ENTRY_ID, keep="first", maintain_order=True))
    rows = function_hashes(latest)
    tables = results_tables(store)
    parts = []
    for (fh,), group in rows.group_by(FUNCTION_HASH, maintain_order=True):
        name = tables.get(fh)
        outputs = (store.lookup(name, group[PACKET_HASH]) if name else pl.DataFrame())
        keep = [c for c in outputs.columns if not c.startswith(SYSTEM_PREFIX) or c == PACKET_HASH]
        parts.append(group.join(outputs.select(keep), on=PACKET_HASH, how="left") if keep else group)
    frame = pl.concat(parts, how="diagonal") if parts else rows
    outputs = [c for c in frame.columns if c not in tags and not c.startswith(SYSTEM_PREFIX)]
    order = [*tags, *outputs, RECORDED_AT, RUN_ID]
    return frame.sort(RECORDED_AT, descending=True).select(order) if frame.height else frame.select(
        [c for c in order if c in frame.columns])


def current_output(store: DeltaStore, pipeline: str, node: str, limit: int) -> tuple[pl.DataFrame, int]:
    """The first ``limit`` rows (by tags) of a node's asset -- its exact current output -- as
    tags, outputs and ``__run_id`` (the run that wrote each row), and the asset's row count."""
    asset = read_asset(store, asset_table(pipeline, node))
    columns = asset.collect_schema().names()
    user = [c for c in columns if not c.startswith(SYSTEM_PREFIX)]
    tags = [c for c in user if c in tag_columns(store.scan(provenance_table(pipeline, node)))] \
        if store.exists(provenance_table(pipeline, node)) else []
    rows = asset.select(pl.len()).collect().item()
    head = asset.select(*user, RUN_ID)
    head = head.sort(tags, nulls_last=True) if tags else head
    return head.head(limit).collect(), rows


def _frame_text(frame: pl.DataFrame) -> str:
    return table_text(frame.to_dicts(), frame.columns) if frame.height else "(none)"
