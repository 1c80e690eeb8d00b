"""What every ``orca`` command shares: the store it reads, its errors, how it prints, and the
store facts read from Delta metadata (row counts, sizes) without scanning data.

Several helpers here are library functions the store does not offer yet (table statistics
from metadata, dropping a table, the results table a provenance row points to); they belong
in ``orca.stores`` eventually.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import shutil
import sys
from collections.abc import Sequence
from typing import Any

import click
import polars as pl
from deltalake import DeltaTable

from orca.names import (
    FUNCTION_HASH,
    INVALIDATED_AT,
    PACKET_HASH,
    RECORD_ID,
    RUNS,
    SYSTEM_PREFIX,
    provenance_table,
    results_table,
)
from orca.stores import DeltaStore

PIPELINES = provenance_table("p", "n").split("/")[0] + "/"  # the folder of provenance tables
RESULTS = results_table("f", "h").split("/")[0] + "/"


class CliError(click.ClickException):
    """A user error: printed as one line ``orca: <message>`` on stderr, exit code 1."""

    def show(self, file: Any = None) -> None:
        # Third-party messages (Polars) may add lines of plan detail: the first line says it.
        first = self.format_message().strip().splitlines()[0]
        click.echo(f"orca: {first}", err=True, file=file)


@dataclasses.dataclass
class State:
    """The global options, handed to every command (``click.pass_obj``)."""

    store_path: str
    as_json: bool
    _store: DeltaStore | None = None

    def store(self) -> DeltaStore:
        """The store at ``--store``; a missing path (or a file) is an error. A URL
        (``s3://``, ``az://``, ``gs://``...) is reached with the environment's credentials."""
        if self._store is None:
            store = DeltaStore(self.store_path)
            if not store.remote and not os.path.isdir(self.store_path):
                raise CliError(f"no orca store at {self.store_path}")
            self._store = store
        return self._store

    def emit(self, payload: Any, text: str) -> None:
        """Print ``payload`` as JSON with ``--json``, else ``text``."""
        if self.as_json:
            click.echo(json.dumps(payload, indent=2, default=_json_value))
        elif text:
            click.echo(text.rstrip("\n"))


# ---- output ------------------------------------------------------------------------------------
def table_text(rows: Sequence[dict[str, Any]], columns: Sequence[str] | None = None) -> str:
    """``rows`` as aligned plain-text columns (numbers right-aligned); ``(none)`` if empty."""
    if not rows:
        return "(none)"
    columns = list(columns or rows[0])
    cells = [[cell(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(_is_number(r.get(c)) for r in rows) and any(r.get(c) is not None for r in rows)
               for c in columns]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(columns), *(line(r) for r in cells)])


def _is_number(value: Any) -> bool:
    return value is None or isinstance(value, int | float) and not isinstance(value, bool)


def cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime.datetime):
        return value.astimezone(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
    if isinstance(value, float):
        return f"{value:.3g}"
    return str(value)


def human_bytes(n: int | None) -> str:
    """``1536`` -> ``'1.5 KiB'``."""
    if n is None:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{int(size)} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 60:
        return f"{s:.2f} s"
    minutes, seconds = divmod(round(s), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{seconds:02d}s" if hours else f"{minutes}m{seconds:02d}s"


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime.datetime | datetime.date):
        return value.isoformat()
    if isinstance(value, datetime.timedelta):
        return value.total_seconds()
    return str(value)


# ---- store facts from Delta metadata -------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class TableInfo:
    """A table's size from its Delta log only (no data file is read).

    ``rows`` counts every stored row; ``live`` those not invalidated (from the per-file null
    count of ``__invalidated_at``; a duplicate key written by two racing processes counts
    twice), None when a file lacks that statistic.
    """

    name: str
    rows: int
    live: int | None
    files: int
    bytes: int
    version: int
    last_write: datetime.datetime | None

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def table_info(store: DeltaStore, name: str) -> TableInfo:
    table = DeltaTable(store.uri(name), storage_options=store.storage_options)
    actions = pl.DataFrame(table.get_add_actions(flatten=True))
    nulls = f"null_count.{INVALIDATED_AT}"
    live = None
    if nulls in actions.columns and actions[nulls].null_count() == 0:
        live = int(actions[nulls].sum())
    elif INVALIDATED_AT not in table.schema().to_arrow().names:  # unkeyed: nothing is invalidated
        live = int(actions["num_records"].sum())
    last = actions["modification_time"].max() if actions.height else None
    if isinstance(last, int):  # milliseconds since the epoch in some deltalake versions
        last = datetime.datetime.fromtimestamp(last / 1000, datetime.UTC)
    return TableInfo(name=name, rows=int(actions["num_records"].sum()), live=live, files=actions.height,
                     bytes=int(actions["size_bytes"].sum()), version=table.version(), last_write=last)


def pipelines(store: DeltaStore) -> dict[str, list[str]]:
    """Pipeline name -> the node labels that have a provenance table (alphabetical)."""
    found: dict[str, list[str]] = {}
    for name in store.tables(PIPELINES):
        _, pipeline, node = name.split("/", 2)
        found.setdefault(pipeline, []).append(node)
    return found


def run_events(store: DeltaStore, pipeline: str | None = None) -> pl.DataFrame:
    """Rows of ``runs`` (of one pipeline), every column the table has; empty if none."""
    runs = store.scan(RUNS)
    if runs is None:
        return pl.DataFrame(schema={"run_id": pl.String, "pipeline": pl.String, "seq": pl.Int64,
                                    "event": pl.String, "status": pl.String, "node": pl.String,
                                    "started_at": pl.Datetime("us", "UTC"), "at": pl.Datetime("us", "UTC")})
    if pipeline is not None:
        runs = runs.filter(pl.col("pipeline") == pipeline)
    return runs.collect()


def node_order(store: DeltaStore, pipeline: str, events: pl.DataFrame) -> list[str]:
    """The pipeline's nodes: in the order its latest run started them, then the others."""
    started = events.filter(pl.col("event") == "node_started").sort("started_at", "seq", descending=[True, False])
    ordered = list(dict.fromkeys(started["node"].to_list()))  # latest run first, its seq order
    latest: list[str] = []
    if started.height:
        last_run = started["run_id"][0]
        latest = started.filter(pl.col("run_id") == last_run)["node"].to_list()
    known = pipelines(store).get(pipeline, [])
    return list(dict.fromkeys([*latest, *ordered, *known]))


def require_pipeline(store: DeltaStore, pipeline: str, events: pl.DataFrame) -> list[str]:
    """The pipeline's node labels; CliError naming the known pipelines if it has none."""
    nodes = node_order(store, pipeline, events)
    if not nodes and events.height == 0:
        known = sorted(set(pipelines(store)) | set(run_events(store)["pipeline"].drop_nulls().to_list()))
        raise CliError(f"unknown pipeline {pipeline!r} in {store.location}"
                       + (f"; pipelines: {', '.join(known)}" if known else " (no pipelines)"))
    return nodes


def require_node(store: DeltaStore, pipeline: str, node: str) -> str:
    """The node's provenance table name; CliError naming the nodes that have one otherwise."""
    name = provenance_table(pipeline, node)
    if not store.exists(name):
        nodes = pipelines(store).get(pipeline, [])
        raise CliError(f"pipeline {pipeline!r} has no node {node!r} with recorded entries"
                       + (f"; nodes: {', '.join(nodes)}" if nodes else ""))
    return name


def function_hash_expr() -> list[pl.Expr]:
    """Each provenance row's function hash, as two UInt64 halves ``__fh_hi``, ``__fh_lo``.

    A result's record id is function hash XOR packet hash (``orca.pods.result_record_ids``), so
    ``__record_id XOR __packet_hash`` names the results table a provenance row points to,
    exactly, from the row itself.
    """
    def half(column: str, start: int) -> pl.Expr:  # (ids are read as 16 bytes, see orca.names)
        return pl.col(column).bin.encode("hex").str.slice(start, 16).str.to_integer(base=16, dtype=pl.UInt64)

    return [(half(RECORD_ID, 0) ^ half(PACKET_HASH, 0)).alias("__fh_hi"),
            (half(RECORD_ID, 16) ^ half(PACKET_HASH, 16)).alias("__fh_lo")]


def distinct_function_hashes(frame: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """The distinct function hashes ``frame``'s rows point at: ``__fh_hi``, ``__fh_lo``,
    ``__function_hash`` (hex)."""
    pairs = frame.lazy().select(function_hash_expr()).unique().collect()
    hexes = [f"{hi:016x}{lo:016x}" for hi, lo in pairs.iter_rows()]
    return pairs.with_columns(pl.Series(FUNCTION_HASH, hexes, dtype=pl.String))


def function_hashes(frame: pl.LazyFrame | pl.DataFrame) -> pl.DataFrame:
    """``frame`` (with ``__record_id`` and ``__packet_hash``) plus ``__function_hash`` (hex)."""
    frame = frame.lazy().collect()
    with_halves = frame.with_columns(function_hash_expr())
    hexes = distinct_function_hashes(frame)
    return (with_halves.join(hexes, on=["__fh_hi", "__fh_lo"], how="left", maintain_order="left")
            .drop("__fh_hi", "__fh_lo"))


def results_tables(store: DeltaStore) -> dict[str, str]:
    """Function hash -> its results table (``results/<function>/<hash>``)."""
    return {name.rsplit("/", 1)[-1]: name for name in store.tables(RESULTS)}


def tag_columns(frame: pl.LazyFrame) -> list[str]:
    """The user (tag) columns of a provenance table: those not starting with ``__``."""
    return [c for c in frame.collect_schema().names() if not c.startswith(SYSTEM_PREFIX)]


def drop_table(store: DeltaStore, name: str) -> None:
    """Delete a table's directory, then the folders above it left empty (up to the store)."""
    path = store.uri(name)
    shutil.rmtree(path)
    parent = os.path.dirname(path)
    root = os.path.abspath(store.location)
    while os.path.abspath(parent) != root and os.path.isdir(parent) and not os.listdir(parent):
        os.rmdir(parent)
        parent = os.path.dirname(parent)


def now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def is_interactive() -> bool:
    return sys.stdin is not None and sys.stdin.isatty()
