"""``orca runs``, ``orca failures`` and ``orca history``: what runs did, from the ``runs`` and
``failures`` tables and the Delta history of the asset tables."""

from __future__ import annotations

import datetime
import json
from typing import Any

import click
import polars as pl

from orca.assets import asset_history
from orca.cli._common import (
    CliError,
    State,
    cell,
    human_seconds,
    now,
    require_pipeline,
    run_events,
    table_text,
)
from orca.names import (
    COMPUTED_AT,
    ENTRY_ID,
    FAILURES,
    PACKET_HASH,
    RECORDED_AT,
    asset_table,
    hex_ids,
    provenance_table,
    results_table,
)
from orca.runs import LOST_AFTER, run_status
from orca.stores import DeltaStore


def run_summaries(events: pl.DataFrame, *, limit: int, at: datetime.datetime | None = None,
                  lost_after: datetime.timedelta = LOST_AFTER) -> list[dict[str, Any]]:
    """The ``limit`` latest runs in ``events`` (rows of ``runs``), newest first, each with its
    status (:func:`orca.runs.run_status`), duration and per-node counts."""
    at = at or now()
    starts = events.group_by("run_id").agg(pl.col("started_at").min()).sort("started_at", descending=True)
    summaries = []
    for run_id in starts["run_id"].head(limit):
        run = events.filter(pl.col("run_id") == run_id).sort("seq")
        status = run_status(run, at, lost_after=lost_after)
        started = run["started_at"].min()
        finished = run.filter(pl.col("event") == "finished")
        heard = max((t for t in (run[c].max() for c in ("at", "heartbeat_at") if c in run.columns)
                     if t is not None), default=started)
        end = finished["at"][-1] if finished.height else (heard if status == "lost" else at)
        summary = {"run_id": run_id, "pipeline": run["pipeline"][0], "status": status, "started_at": started,
                   "duration_s": (end - started).total_seconds(), "nodes": _node_counts(run, status)}
        if "environment" in run.columns:  # a JSON object the engine may add
            env = run["environment"].drop_nulls()
            summary["environment"] = _json_or_text(env[0]) if env.len() else None
        summaries.append(summary)
    return summaries


def _node_counts(run: pl.DataFrame, status: str) -> list[dict[str, Any]]:
    """Per node of one run: total (when it started) and the counts it finished with."""
    nodes = []
    for label in dict.fromkeys(run.filter(pl.col("node").is_not_null())["node"].to_list()):
        rows = run.filter(pl.col("node") == label)
        started = rows.filter(pl.col("event") == "node_started")
        done = rows.filter(pl.col("event") == "node_finished")
        last = done if done.height else started
        node_status = done["status"][-1] if done.height else ("running" if status == "running" else status)
        nodes.append({
            "node": label, "status": node_status,
            "total": started["total"][-1] if started.height else None,
            **{k: (last[k][-1] if last.height and k in last.columns else None)
               for k in ("cached", "computed", "failed")},
        })
    return nodes


def environment_text(env: Any) -> str:
    """A run's environment in a few words: ``orca 0.1.0 py 3.12.3 on host (git 1a2b3c4+)``
    (``+``: uncommitted changes); ``-`` when not recorded."""
    if not isinstance(env, dict) or not env:
        return "-" if env is None else str(env)
    words = [f"orca {env['orca']}" if env.get("orca") else None,
             f"py {env['python']}" if env.get("python") else None,
             f"on {env['host']}" if env.get("host") else None]
    if env.get("git_commit"):
        words.append(f"(git {str(env['git_commit'])[:7]}{'+' if env.get('git_dirty') else ''})")
    return " ".join(w for w in words if w) or "-"


def _json_or_text(value: str) -> Any:
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return value


@click.command()
@click.argument("pipeline", required=False)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1), help="Runs to show.")
@click.option("--lost-after", default=LOST_AFTER.total_seconds() / 60, show_default=True,
              type=click.FloatRange(min=0), help="Minutes of silence after which a running run is 'lost'.")
@click.pass_obj
def runs(state: State, pipeline: str | None, limit: int, lost_after: float) -> None:
    """Recent runs (of PIPELINE), newest first: status, duration, environment and per-node counts."""
    store = state.store()
    events = run_events(store, pipeline)
    if pipeline is not None:
        require_pipeline(store, pipeline, events)
    summaries = run_summaries(events, limit=limit, lost_after=datetime.timedelta(minutes=lost_after))
    rows = []
    for s in summaries:
        run_cells = {"run": s["run_id"], "pipeline": s["pipeline"], "status": s["status"],
                     "started": cell(s["started_at"]), "duration": human_seconds(s["duration_s"]),
                     "environment": environment_text(s.get("environment"))}
        blank = dict.fromkeys(run_cells, "")
        for i, n in enumerate(s["nodes"] or [{}]):
            rows.append({**(blank if i else run_cells), "node": n.get("node"), "total": n.get("total"),
                         "cached": n.get("cached"), "computed": n.get("computed"), "failed": n.get("failed")})
    state.emit(summaries, table_text(rows))


@click.command()
@click.argument("pipeline", required=False)
@click.option("--open", "open_only", is_flag=True,
              help="Only failures not since succeeded (the latest per entry).")
@click.option("--traceback", "with_traceback", is_flag=True, help="Print each failure's traceback.")
@click.option("--limit", default=50, show_default=True, type=click.IntRange(min=1), help="Failures to show.")
@click.pass_obj
def failures(state: State, pipeline: str | None, open_only: bool, with_traceback: bool, limit: int) -> None:
    """Failed entries (of PIPELINE), newest first."""
    store = state.store()
    events = run_events(store)
    if pipeline is not None:
        require_pipeline(store, pipeline, events.filter(pl.col("pipeline") == pipeline))
    frame = _failures(store, events)
    if pipeline is not None:
        frame = frame.filter(pl.col("pipeline") == pipeline)
    if open_only:
        frame = _open_failures(store, frame)
    frame = frame.sort("failed_at", descending=True).head(limit)
    columns = ["failed_at", "pipeline", "node", "function", "tag", "error_type", "message", "attempts", "run_id",
               "entry_id", "packet_hash", *(["traceback"] if with_traceback else [])]
    records = frame.select(columns).to_dicts()
    rows = [{"failed": cell(r["failed_at"]), "pipeline": r["pipeline"], "node": r["node"] or r["function"],
             "tag": r["tag"], "error": f"{r['error_type']}: {r['message']}", "attempts": r["attempts"],
             "run": r["run_id"]} for r in records]
    text = table_text(rows)
    if with_traceback:
        for r in records:
            text += f"\n\n--- {r['node'] or r['function']} {r['tag']} ({cell(r['failed_at'])})\n{r['traceback'].rstrip()}"
    state.emit(records, text)


@click.command()
@click.argument("pipeline")
@click.argument("node")
@click.pass_obj
def history(state: State, pipeline: str, node: str) -> None:
    """Materialisations of NODE's asset (``assets/PIPELINE/NODE``), oldest first: Delta version,
    time, the run that made it, rows inserted, updated and deleted."""
    store = state.store()
    table = asset_table(pipeline, node)
    if not store.exists(table):
        nodes = require_pipeline(store, pipeline, run_events(store, pipeline))
        with_assets = [n for n in nodes if store.exists(asset_table(pipeline, n))]
        raise CliError(f"pipeline {pipeline!r} has no asset table for node {node!r}"
                       + (f"; nodes with assets: {', '.join(with_assets)}" if with_assets else
                          " (no node has been materialised: run the pipeline)"))
    frame = asset_history(store, table)
    records = frame.to_dicts()
    rows = [{**r, "at": cell(r["at"])} for r in records]
    count = f"{frame.height} materialisation{'' if frame.height == 1 else 's'}"
    state.emit(records, f"{table}: {count}\n\n" + table_text(rows, frame.columns))


def _failures(store: DeltaStore, events: pl.DataFrame) -> pl.DataFrame:
    """Every failure row with the pipeline of its run (null for a cached pod run on its own)."""
    scan = store.scan(FAILURES)
    if scan is None:
        return pl.DataFrame(schema={"failed_at": pl.Datetime("us", "UTC"), "pipeline": pl.String, "node": pl.String,
                                    "function": pl.String, "function_hash": pl.String, "tag": pl.String,
                                    "error_type": pl.String, "message": pl.String, "traceback": pl.String,
                                    "attempts": pl.Int64, "run_id": pl.String, "entry_id": pl.String,
                                    "packet_hash": pl.String})
    owners = events.select("run_id", "pipeline").unique("run_id")
    return hex_ids(scan.collect()).join(owners, on="run_id", how="left")


def _open_failures(store: DeltaStore, frame: pl.DataFrame) -> pl.DataFrame:
    """The latest failure per entry whose entry has no live row recorded since it failed.

    An entry is (pipeline, node, entry id) -- its provenance row -- or, for a cached pod run on
    its own, (function hash, packet hash) -- its result row.
    """
    frame = frame.with_columns(
        pl.when(pl.col("node").is_not_null())
        .then(pl.concat_str(pl.col("pipeline").fill_null("?"), "node", "entry_id", separator="/"))
        .otherwise(pl.concat_str("function_hash", "packet_hash", separator="/")).alias("__entry"))
    latest = frame.sort("failed_at").unique("__entry", keep="last")
    kept = []
    for (pipeline, node, fn, fh), group in latest.group_by("pipeline", "node", "function", "function_hash"):
        if node is not None and pipeline is not None:
            table, key, column, time = provenance_table(pipeline, node), "entry_id", ENTRY_ID, RECORDED_AT
        elif node is None:
            table, key, column, time = results_table(fn, fh), "packet_hash", PACKET_HASH, COMPUTED_AT
        else:  # a pipeline node whose run left no event: nothing to compare with
            kept.append(group)
            continue
        live = hex_ids(store.lookup(table, group[key])) if store.exists(table) else pl.DataFrame(
            schema={column: pl.String, time: pl.Datetime("us", "UTC")})
        since = group.join(live.select(pl.col(column).alias(key), pl.col(time).alias("__since")), on=key, how="left")
        kept.append(since.filter(pl.col("__since").is_null() | (pl.col("__since") < pl.col("failed_at")))
                    .drop("__since"))
    if not kept:
        return frame.drop("__entry").clear()
    return pl.concat(kept).drop("__entry")

