"""``orca maintain``: compact small files, vacuum old ones, write checkpoints, and collect
results tables no live provenance row refers to.

Which results tables are referenced is read from the rows themselves: a provenance row's
``__record_id XOR __packet_hash`` is the function hash of the results table it points to, and
``__source__<col>`` values ``results/<fn>/<hash>#<record id>`` name the upstream results a
downstream node read. A results table nobody refers to may still be a cached pod's cache used
outside any pipeline, so removing one takes ``--gc-unreferenced``.
"""

from __future__ import annotations

import datetime
import json
import os
from typing import Any

import click
import polars as pl
from deltalake import DeltaTable

from orca.cli._common import (
    PIPELINES,
    RESULTS,
    State,
    TableInfo,
    distinct_function_hashes,
    drop_table,
    human_bytes,
    now,
    results_tables,
    table_info,
    table_text,
)
from orca.names import FUNCTION_HASH, INVALIDATED_AT, SOURCE_PREFIX
from orca.stores import DeltaStore
from orca.stores.delta import compactable

SMALL_FILE = 32 * 1024**2  # bytes: files under this are worth merging
MIN_SMALL_FILES = 4  # compact a table once it has this many small files
CHECKPOINT_EVERY = 10  # commits since the last checkpoint (Delta's own default is 100)
RETENTION_HOURS = 7 * 24


@click.command()
@click.option("--dry-run", is_flag=True, help="Print what would be done; change nothing.")
@click.option("--retention-hours", default=RETENTION_HOURS, show_default=True, type=click.IntRange(min=0),
              help="Keep removed files, and results tables written, for at least this long.")
@click.option("--gc-unreferenced", is_flag=True,
              help="Delete results tables no live provenance row refers to (e.g. a cached pod's own cache).")
@click.pass_obj
def maintain(state: State, dry_run: bool, retention_hours: int, gc_unreferenced: bool) -> None:
    """Compact, vacuum and checkpoint every table; collect unreferenced results tables."""
    store = state.store()
    actions: list[dict[str, Any]] = []
    for name in store.tables():
        info = table_info(store, name)
        actions += _compact(store, info, dry_run)
        actions += _vacuum(store, name, retention_hours, dry_run)
        actions += _checkpoint(store, name, dry_run)
    actions += _collect(store, retention_hours, remove=gc_unreferenced and not dry_run)
    freed = sum(a["bytes"] or 0 for a in actions if a["done"] or dry_run and a["action"] != "keep")
    verb = "would free" if dry_run else "freed"
    rows = [{"action": a["action"], "table": a["table"], "detail": a["detail"], "size": human_bytes(a["bytes"])}
            for a in actions]
    note = "" if gc_unreferenced or not any(a["action"] == "keep" for a in actions) else \
        "\nunreferenced results tables are kept: pass --gc-unreferenced to delete them"
    state.emit({"dry_run": dry_run, "actions": actions, "freed_bytes": freed},
               f"{table_text(rows)}\n{verb} {human_bytes(freed)}{note}")


def _action(action: str, table: str, detail: str, size: int | None, done: bool) -> dict[str, Any]:
    return {"action": action, "table": table, "detail": detail, "bytes": size, "done": done}


def _compact(store: DeltaStore, info: TableInfo, dry_run: bool) -> list[dict[str, Any]]:
    if not compactable(info.name):  # assets and claims: their own writes keep them few-filed
        return []
    table = DeltaTable(store.uri(info.name))
    sizes = pl.DataFrame(table.get_add_actions(flatten=True))["size_bytes"]
    small = int((sizes < SMALL_FILE).sum())
    if small < MIN_SMALL_FILES:
        return []
    if not dry_run:
        store.compact(info.name)
    return [_action("compact", info.name, f"{small} small files", None, not dry_run)]


def _vacuum(store: DeltaStore, name: str, retention_hours: int, dry_run: bool) -> list[dict[str, Any]]:
    """Delete files removed from the table (by compaction, invalidation) over the retention ago."""
    # A retention shorter than the table's own (7 days by default) must be allowed explicitly:
    # the user chose it with --retention-hours.
    options = dict(retention_hours=retention_hours, enforce_retention_duration=False)
    files = DeltaTable(store.uri(name)).vacuum(dry_run=True, **options)
    if not files:
        return []
    size = sum(_size(os.path.join(store.uri(name), f)) for f in files)
    if not dry_run:
        store.settle(name)  # the dedup rule reads replaced files to order duplicate rows: none left
        DeltaTable(store.uri(name)).vacuum(dry_run=False, **options)  # (opened after the settle's commit)
    return [_action("vacuum", name, f"{len(files)} old files", size, not dry_run)]


def _checkpoint(store: DeltaStore, name: str, dry_run: bool) -> list[dict[str, Any]]:
    """A checkpoint once ``CHECKPOINT_EVERY`` commits piled up since the last one: opening the
    table then reads one Parquet file instead of every JSON commit."""
    table = DeltaTable(store.uri(name))
    version = table.version()
    last = _last_checkpoint(store.uri(name))
    if version - (last if last is not None else -1) < CHECKPOINT_EVERY:
        return []
    if not dry_run:
        table.create_checkpoint()
    return [_action("checkpoint", name, f"version {version}", None, not dry_run)]


def _size(path: str) -> int:
    try:
        return os.path.getsize(path)
    except OSError:  # listed by vacuum but already gone (another maintain)
        return 0


def _last_checkpoint(path: str) -> int | None:
    try:
        with open(os.path.join(path, "_delta_log", "_last_checkpoint")) as f:
            return int(json.load(f)["version"])
    except (OSError, ValueError, KeyError):
        return None


def _collect(store: DeltaStore, retention_hours: int, remove: bool) -> list[dict[str, Any]]:
    """Results tables no live provenance row refers to: removed if ``remove``, else listed as kept.

    A table written to within the retention is never collected: a running pipeline commits its
    results before the provenance rows that point at them.
    """
    referenced = _referenced(store)
    cutoff = now() - datetime.timedelta(hours=retention_hours)
    actions = []
    for fh, name in results_tables(store).items():
        if fh in referenced or name in referenced:
            continue
        info = table_info(store, name)
        if info.last_write is not None and info.last_write > cutoff:
            actions.append(_action("keep", name, "unreferenced, written within the retention", info.bytes, False))
            continue
        if remove:
            drop_table(store, name)
        actions.append(_action("gc" if remove else "keep", name, f"unreferenced, {info.rows} rows",
                               info.bytes, remove))
    return actions


def _referenced(store: DeltaStore) -> set[str]:
    """Function hashes and results table names that live provenance rows point at."""
    found: set[str] = set()
    for name in store.tables(PIPELINES):
        live = store.scan(name, include_invalidated=True).filter(pl.col(INVALIDATED_AT).is_null())
        found |= set(distinct_function_hashes(live)[FUNCTION_HASH])
        sources = [c for c in live.collect_schema().names() if c.startswith(SOURCE_PREFIX)]
        if sources:
            refs = (live.select(pl.concat_list(sources).alias("ref")).explode("ref")
                    .filter(pl.col("ref").str.starts_with(RESULTS))
                    .select(pl.col("ref").str.extract(r"^([^#]+)#", 1)).unique().collect())
            found |= set(refs["ref"].drop_nulls())
    return found
