"""Parquet data files for a Delta table's appends: their layout, and writing them with pyarrow.

deltalake's writer (``write_deltalake``) spent about twice pyarrow's CPU on orca's appends
(0.6-0.9 against 0.3 CPU-s for 1M provenance rows, mostly unique binary and text
columns; see ``docs/performance.md``). So a local store writes each appended file with
pyarrow and commits it with deltalake's ``create_write_transaction``: the same commit, with
the same conflict checks, app transactions and commit metadata as ``write_deltalake``'s.

The file's Delta statistics -- ``numRecords``, and ``nullCount``, ``minValues`` and
``maxValues`` of the columns that keep statistics -- come from the footer pyarrow wrote, in
the formats deltalake writes them. A value with no such format here (binary, decimal, nested,
naive timestamps, NaN) is left out: statistics are optional, and a reader that finds none for
a column reads the file.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import os
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from deltalake import ColumnProperties, CommitProperties, DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction

from orca.errors import StoreError

_LONGEST_TEXT_STAT = 64  # longer text minima / maxima are left out (they only bloat the log)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a commit's Parquet files are written: ``snappy`` or uncompressed; columns written
    without a dictionary (``plain``); columns also without statistics (``bare``)."""

    snappy: bool
    plain: frozenset[str] = frozenset()
    bare: frozenset[str] = frozenset()

    def writer_properties(self) -> WriterProperties:
        """The same layout for deltalake's own writers (merges, compactions, remote appends)."""
        options = {c: ColumnProperties(dictionary_enabled=False) for c in self.plain - self.bare}
        options |= {c: ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE") for c in self.bare}
        return WriterProperties(compression="SNAPPY" if self.snappy else "UNCOMPRESSED", column_properties=options)


def writable(table: DeltaTable) -> bool:
    """Whether ``table``'s appends may be written here: not when its columns are mapped to other
    physical names or it has constraints (deltalake's writer applies those)."""
    configuration = table.metadata().configuration
    return (configuration.get("delta.columnMapping.mode", "none") == "none"
            and not any(k.startswith("delta.constraints.") for k in configuration))


def append_file(table: DeltaTable, folder: str, rows: pa.Table, layout: Layout,
                properties: CommitProperties) -> int:
    """Write ``rows`` (already in ``table``'s schema) as one Parquet file in ``folder``, the
    table's local directory, commit it to ``table`` as an append with ``properties``, and
    return the version of that commit. ``table`` is brought up to date after it (as
    ``write_deltalake`` leaves it), so that its next commit starts from there.

    A commit that fails on a conflict removes its file (it was never part of the table); after
    any other failure the file stays, unreferenced, as after a failed ``write_deltalake``: the
    commit may have landed."""
    name = f"part-00000-{uuid.uuid4()}-c000{'.snappy' if layout.snappy else ''}.parquet"
    path = os.path.join(folder, name)
    summarised = [c for c in rows.column_names if c not in layout.bare]
    footer: list[pq.FileMetaData] = []
    pq.write_table(rows, path, compression="snappy" if layout.snappy else "none",
                   use_dictionary=[c for c in rows.column_names if c not in layout.plain and c not in layout.bare],
                   write_statistics=summarised, metadata_collector=footer)
    stat = os.stat(path)
    add = AddAction(name, stat.st_size, {}, stat.st_mtime_ns // 1_000_000, True,
                    json.dumps(_statistics(rows, footer[0], set(summarised))))
    before = table.version()
    try:
        table.create_write_transaction([add], mode="append", schema=table.schema(), commit_properties=properties)
    except CommitFailedError:
        os.remove(path)
        raise
    # (the handle is not moved by the commit; other writers' commits may have landed around it)
    table.update_incremental()
    if table.version() == before + 1:
        return before + 1
    return _version_adding(folder, name, before + 1, table.version())


def _version_adding(folder: str, file: str, first: int, last: int) -> int:
    """The version in ``first..last`` of the table in ``folder`` whose commit adds ``file``."""
    for version in range(first, last + 1):
        with open(os.path.join(folder, "_delta_log", f"{version:020d}.json"), encoding="utf-8") as commit:
            for line in commit:
                action = json.loads(line).get("add") if line.strip() else None
                if action is not None and action.get("path") == file:
                    return version
    raise StoreError(f"{folder}: no commit in versions {first}..{last} adds {file}, which was just committed")


def _statistics(rows: pa.Table, footer: pq.FileMetaData, summarised: set[str]) -> dict[str, Any]:
    """Delta's file statistics for ``rows``, written with ``footer``: ``summarised`` columns'
    null counts (from ``rows``) and their minima and maxima (from the footer), where kept."""
    least: dict[str, Any] = {}
    most: dict[str, Any] = {}
    nulls: dict[str, int] = {}
    for j in range(footer.num_columns):
        column = footer.row_group(0).column(j) if footer.num_row_groups else None
        name = column.path_in_schema if column is not None else None
        if name is None or name not in summarised:
            continue  # (a nested column's leaves have dotted paths: no top-level statistics)
        field = rows.schema.field(name)
        nulls[name] = rows.column(name).null_count
        low, high = _bounds(footer, j)
        low, high = _stat_value(low, field.type), _stat_value(high, field.type)
        if low is not None and high is not None:
            least[name], most[name] = low, high
    return {"numRecords": rows.num_rows, "minValues": least, "maxValues": most, "nullCount": nulls}


def _bounds(footer: pq.FileMetaData, column: int) -> tuple[Any, Any]:
    """The least minimum and greatest maximum of ``column`` over the row groups (None, None if
    a row group has values but no minimum and maximum)."""
    low = high = None
    for g in range(footer.num_row_groups):
        chunk = footer.row_group(g).column(column)
        stats = chunk.statistics
        if stats is None:
            return None, None
        if not stats.has_min_max:
            if stats.null_count == chunk.num_values:  # all null: nothing to bound
                continue
            return None, None
        low = stats.min if low is None or stats.min < low else low
        high = stats.max if high is None or stats.max > high else high
    return low, high


def _stat_value(value: Any, dtype: pa.DataType) -> Any:
    """``value`` (a Parquet statistic of a column of ``dtype``) as deltalake writes it in a
    statistic, or None where it has no format here."""
    if value is None:
        return None
    if pa.types.is_boolean(dtype):
        return bool(value)
    if pa.types.is_integer(dtype):
        return int(value)
    if pa.types.is_floating(dtype):
        return float(value) if math.isfinite(value) else None
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        return value if isinstance(value, str) and len(value) <= _LONGEST_TEXT_STAT else None
    if pa.types.is_date32(dtype) and isinstance(value, datetime.date):
        return value.isoformat()
    if pa.types.is_timestamp(dtype) and dtype.tz is not None and isinstance(value, datetime.datetime):
        # deltalake's format: UTC, milliseconds (truncated), "Z"; e.g. 2026-12-03T12:49:04.164Z
        utc = value.astimezone(datetime.UTC) if value.tzinfo is not None else value
        text = utc.strftime("%Y-%m-%dT%H:%M:%S")
        return f"{text}.{utc.microsecond // 1000:03d}Z" if utc.microsecond // 1000 else f"{text}Z"
    return None
