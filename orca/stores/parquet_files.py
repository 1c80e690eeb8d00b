"""Parquet data files for a Delta table's appends: their layout, and writing them with pyarrow.

deltalake's writer (``write_deltalake``) spent about twice pyarrow's CPU on orca's appends
(0.6-0.9 against 0.3 CPU-s for 1M provenance rows, mostly unique binary and text columns; see
``docs/performance.md``). So a local store writes each appended file with pyarrow and commits
it with deltalake's ``create_write_transaction``: the same commit, with the same conflict
checks, app transactions and commit metadata as ``write_deltalake``'s.

The file's Delta statistics (``numRecords``; ``nullCount``, ``minValues`` and ``maxValues``
per column) come from the footer pyarrow wrote, in the formats deltalake writes them. Readers
skip files by them, so they must never be tighter than the values, and -- a deltalake quirk --
must not be missing either: ``DeltaTable.to_pyarrow_dataset()`` (what DuckDB is handed)
turns a column without bounds into ``col >= null``, which drops the file from every query that
filters on the column (binary and list columns excepted; a column of nulls only is known by its
null count). So every other column gets bounds: a timestamp maximum is rounded up to the
millisecond (deltalake cuts it), long text is bounded by a prefix (and the prefix bumped
above it). A file with a value that has no bound here gets no column statistics at all
(``numRecords`` only), which readers take as "read the file": among them NaN and the
infinities, as JSON has no infinity and a finite stand-in is wrong both ways -- pyarrow takes a
file's bounds as true of every row, and drops a filter they imply (``f <= 1.8e308`` over a file
bounded by the largest double returned its infinite row).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import decimal
import json
import math
import os
import sys
import uuid
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from deltalake import ColumnProperties, CommitProperties, DeltaTable, WriterProperties
from deltalake.exceptions import CommitFailedError
from deltalake.transaction import AddAction

_TEXT_BOUND = 256  # longer text is bounded by its first characters (the log stays small)


@dataclasses.dataclass(frozen=True)
class Layout:
    """How a commit's Parquet files are written: ``snappy`` or uncompressed; columns written
    without a dictionary (``plain``); columns also without Parquet statistics (``bare``: binary
    ids, for which no reader uses them)."""

    snappy: bool
    plain: frozenset[str] = frozenset()
    bare: frozenset[str] = frozenset()

    def writer_properties(self) -> WriterProperties:
        """The same layout for deltalake's own writers (merges, compactions, remote appends)."""
        options = {c: ColumnProperties(dictionary_enabled=False) for c in self.plain - self.bare}
        options |= {c: ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE") for c in self.bare}
        return WriterProperties(compression="SNAPPY" if self.snappy else "UNCOMPRESSED", column_properties=options)


def writable(table: DeltaTable) -> bool:
    """Whether ``table``'s appends may be written here: only under the plain protocol orca
    creates its tables with (writer version 2 at most: no column mapping, constraints,
    generated columns or table features) and without column invariants, all of which
    deltalake's writer applies and this module does not."""
    if table.protocol().min_writer_version > 2:
        return False
    return "delta.invariants" not in table.schema().to_json()


def append_file(table: DeltaTable, folder: str, rows: pa.Table, layout: Layout,
                properties: CommitProperties) -> int | None:
    """Write ``rows`` (already in ``table``'s schema) as one Parquet file in ``folder``, the
    table's local directory, and commit it to ``table`` as an append with ``properties``.

    The commit does not move ``table``; it is brought up to date afterwards (as
    ``write_deltalake`` leaves it). Returns the commit's version (other writers' commits may
    have landed before it), or None if, the commit made, the handle could not be brought up to
    date or the version found (e.g. another process trimmed the log meanwhile): the caller must
    then not use ``table`` again, nor commit the rows again.

    The file is removed if the write fails or the commit loses a conflict (it was never part of
    the table); after any other failure of the commit it stays, unreferenced, as after a failed
    ``write_deltalake``: the commit may have landed."""
    name = f"part-00000-{uuid.uuid4()}-c000{'.snappy' if layout.snappy else ''}.parquet"
    path = os.path.join(folder, name)
    try:
        pq.write_table(rows, path, compression="snappy" if layout.snappy else "none",
                       use_dictionary=[c for c in rows.column_names if c not in layout.plain | layout.bare],
                       write_statistics=[c for c in rows.column_names if c not in layout.bare])
        # (UTF-8, not \u escapes: deltalake 1.6 misreads an escaped pair of surrogates, e.g. U+20000
        # as U+10000, and the bound with it)
        stats = json.dumps(statistics(rows, pq.read_metadata(path)), ensure_ascii=False)
    except BaseException:
        with contextlib.suppress(OSError):
            os.remove(path)
        raise
    stat = os.stat(path)
    add = AddAction(name, stat.st_size, {}, stat.st_mtime_ns // 1_000_000, True, stats)
    before = table.version()
    try:
        table.create_write_transaction([add], mode="append", schema=table.schema(), commit_properties=properties)
    except CommitFailedError:  # (raised only before the commit file is written)
        os.remove(path)
        raise
    try:  # the commit landed: nothing below may make the caller commit the rows again
        table.update_incremental()
        return before + 1 if table.version() == before + 1 else _version_adding(folder, name, before + 1,
                                                                                  table.version())
    except Exception:  # noqa: BLE001 - see the docstring
        return None


def _version_adding(folder: str, file: str, first: int, last: int) -> int | None:
    """The version in ``first..last`` of the table in ``folder`` whose commit adds ``file``."""
    for version in range(first, last + 1):
        with open(os.path.join(folder, "_delta_log", f"{version:020d}.json"), encoding="utf-8") as commit:
            for line in commit:
                action = json.loads(line).get("add") if line.strip() else None
                if action is not None and action.get("path") == file:
                    return version
    return None


# -- statistics -----------------------------------------------------------------------------
class _Unbounded(Exception):
    """A column holds a value this module cannot bound in deltalake's formats."""


def statistics(rows: pa.Table, footer: pq.FileMetaData) -> dict[str, Any]:
    """Delta's file statistics for ``rows`` written with ``footer`` (see the module docs)."""
    try:
        least: dict[str, Any] = {}
        most: dict[str, Any] = {}
        nulls: dict[str, Any] = {}
        leaves = {footer.schema.column(j).path: j for j in range(footer.num_columns)}
        for field in rows.schema:
            _column_statistics(rows.column(field.name), field, (field.name,), footer, leaves, least, most, nulls)
    except (_Unbounded, pa.ArrowException, OverflowError, ValueError, TypeError, decimal.InvalidOperation):
        return {"numRecords": rows.num_rows}
    return {"numRecords": rows.num_rows, "minValues": least, "maxValues": most, "nullCount": nulls}


def _column_statistics(column: pa.ChunkedArray | pa.Array, field: pa.Field, path: tuple[str, ...],
                       footer: pq.FileMetaData, leaves: dict[str, int], least: dict, most: dict, nulls: dict) -> None:
    """Add ``column``'s statistics (a struct's, nested, field by field) under ``path``'s last
    name; ``leaves``: the footer's column index of each leaf path."""
    name, dtype = path[-1], field.type
    if pa.types.is_struct(dtype):
        inner: tuple[dict, dict, dict] = ({}, {}, {})
        chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
        fields = [c.flatten() for c in chunks]  # (flattened: a null struct's fields are null)
        for i, child in enumerate(dtype):
            values = pa.chunked_array([f[i] for f in fields], child.type)
            _column_statistics(values, child, (*path, child.name), footer, leaves, *inner)
        for into, part in zip((least, most, nulls), inner, strict=True):
            if part:
                into[name] = part
        return
    if pa.types.is_list(dtype) or pa.types.is_large_list(dtype) or pa.types.is_map(dtype):
        return  # (readers neither prune by them nor need them)
    nulls[name] = column.null_count
    if pa.types.is_binary(dtype) or pa.types.is_large_binary(dtype) or column.null_count == len(column):
        return  # (no bounds: binary columns are not pruned by them; an all-null one by its null count)
    low, high = _footer_bounds(footer, leaves.get(".".join(path)))
    if low is None or high is None:  # (statistics off for the column, or dropped for long values)
        low, high = pc.min_max(column).values()
        low, high = low.as_py(), high.as_py()
    least[name], most[name] = _bounds(column, dtype, low, high)


def _footer_bounds(footer: pq.FileMetaData, index: int | None) -> tuple[Any, Any]:
    """The least minimum and greatest maximum of the footer's leaf column ``index`` over the
    row groups; (None, None) if any row group with values has none (or there is no such leaf)."""
    low = high = None
    for g in range(footer.num_row_groups if index is not None else 0):
        chunk = footer.row_group(g).column(index)
        stats = chunk.statistics
        if stats is not None and stats.null_count == chunk.num_values:
            continue  # (all null: nothing to bound)
        if stats is None or not stats.has_min_max:
            return None, None
        low = stats.min if low is None or stats.min < low else low
        high = stats.max if high is None or stats.max > high else high
    return low, high


def _bounds(column: pa.ChunkedArray | pa.Array, dtype: pa.DataType, low: Any, high: Any) -> tuple[Any, Any]:
    """(minimum, maximum) of a column as deltalake writes them, never tighter than the values."""
    if pa.types.is_boolean(dtype) or pa.types.is_integer(dtype):
        return (bool(low), bool(high)) if pa.types.is_boolean(dtype) else (int(low), int(high))
    if pa.types.is_floating(dtype):
        # (Parquet's bounds and pc.min_max leave NaN out; JSON has no infinity: no bound is true)
        if low is None or high is None or not (math.isfinite(low) and math.isfinite(high)) or pc.any(pc.is_nan(column)).as_py():
            raise _Unbounded
        return float(low), float(high)
    if pa.types.is_decimal(dtype):
        if not (isinstance(low, decimal.Decimal) and isinstance(high, decimal.Decimal)):
            raise _Unbounded
        return _float_near(low, -math.inf), _float_near(high, math.inf)
    if pa.types.is_string(dtype) or pa.types.is_large_string(dtype):
        if not (isinstance(low, str) and isinstance(high, str)):
            raise _Unbounded
        return low[:_TEXT_BOUND], high if len(high) <= _TEXT_BOUND else _text_above(high)
    if pa.types.is_date32(dtype) or pa.types.is_date64(dtype):
        return _as_date(low).isoformat(), _as_date(high).isoformat()
    if pa.types.is_timestamp(dtype):
        return _timestamp_text(low, dtype, up=False), _timestamp_text(high, dtype, up=True)
    raise _Unbounded


def _float_near(value: decimal.Decimal, toward: float) -> float:
    """``value`` as the float deltalake writes (its shortest text is the decimal's, for up to
    15 digits), moved one step ``toward`` an infinity when it is not exact."""
    f = float(value)
    return f if decimal.Decimal(repr(f)) == value else math.nextafter(f, toward)


def _text_above(text: str) -> str:
    """A string above every string that starts with ``text[:_TEXT_BOUND]``: that prefix with its
    last character bumped (deltalake's way); ``text`` itself if no character can be bumped."""
    prefix = text[:_TEXT_BOUND]
    while prefix:
        code = ord(prefix[-1]) + 1
        code += 0x800 if 0xD800 <= code <= 0xDFFF else 0  # (surrogates are not characters)
        if code <= sys.maxunicode:
            return prefix[:-1] + chr(code)
        prefix = prefix[:-1]
    return text


def _as_date(value: Any) -> datetime.date:
    if isinstance(value, datetime.datetime):
        return value.date()
    if isinstance(value, datetime.date):
        return value
    raise _Unbounded


def _timestamp_text(value: Any, dtype: pa.TimestampType, *, up: bool) -> str:
    """deltalake's format: milliseconds, UTC with "Z" (``2026-12-03T12:49:04.164Z``) or, for a
    naive timestamp, without a zone and with a space (``2026-12-03 12:49:04.164``); cut down
    to the millisecond, or rounded up if ``up``."""
    if not isinstance(value, datetime.datetime):
        raise _Unbounded
    if dtype.tz is not None:
        value = value.astimezone(datetime.UTC) if value.tzinfo is not None else value
    if up and value.microsecond % 1000:
        value += datetime.timedelta(microseconds=1000 - value.microsecond % 1000)  # (OverflowError at 9999)
    millis = value.microsecond // 1000
    text = f"{value.year:04d}-{value:%m-%d}{'T' if dtype.tz is not None else ' '}{value:%H:%M:%S}"
    if dtype.tz is None:
        return f"{text}.{millis:03d}" if millis else text
    return f"{text}.{millis:03d}Z" if millis else f"{text}Z"
