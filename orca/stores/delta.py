"""DeltaStore: a directory of Delta tables, safe for many concurrent writer processes.

Every commit is an append (never ``mode="overwrite"``) in a capped retry loop with randomised
exponential backoff; creation races are treated as "someone else created it". A table made by
orca carries ``orca.format`` and ``orca.key`` in its Delta table configuration.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import random
import time
from collections.abc import Callable
from typing import TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import (
    ColumnProperties,
    CommitProperties,
    DeltaTable,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError

from orca.errors import StoreError
from orca.stores.base import (
    INVALIDATED_AT,
    INVALIDATED_TYPE,
    BufferedStore,
    check_key,
    check_name,
    conform,
    key_frame,
    single_key,
)

FORMAT = "1"
_WRITER = "orca.writer"  # commit metadata: the id of the store object that appended
# Hash and per-row reference columns never repeat a value: dictionary-encoding them only costs
# time (half of a results or provenance table's write time) and makes reads slower.
_UNIQUE_COLUMNS = ("__packet_hash", "__record_id", "__entry_id", "__system_tags", "__duration_s")
_UNIQUE_PREFIXES = ("__source__", "__tag__")
# Columns orca fills with one value per commit (dictionary-encoded to almost nothing).
_CONSTANT_COLUMNS = ("__run_id", "__function_hash", "__recorded_at", "__computed_at", "__invalidated_at")
_BACKOFF_BASE = 0.05  # seconds; attempt n sleeps about base * 2**n, at most _BACKOFF_CAP
_BACKOFF_CAP = 2.0
T = TypeVar("T")


class _CreateRace(Exception):
    """Another process was creating the table at the same moment: reload and retry."""


_RETRYABLE = (CommitFailedError, _CreateRace)


@dataclasses.dataclass
class _KeyCache:
    version: int
    files: frozenset[str]
    keys: pl.Series


class DeltaStore(BufferedStore):
    """Tables under ``path``: table ``name`` lives at ``<path>/<name>``. No I/O until a commit.

    A full buffer is committed on a background thread (``background=False``: in the caller).

    >>> import tempfile, pyarrow as pa
    >>> store = DeltaStore(tempfile.mkdtemp() + "/store", max_rows=10)
    >>> store.append("runs", pa.table({"run": ["r1"]}))
    >>> store.flush()
    >>> store.scan("runs").collect()["run"].to_list()
    ['r1']
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        max_rows: int = 200_000,
        max_seconds: float = 30.0,
        max_retries: int = 10,
        background: bool = True,
    ) -> None:
        super().__init__(max_rows=max_rows, max_seconds=max_seconds, max_retries=max_retries,
                         background=background)
        self.location = os.fspath(path)
        # Reads and (background) commits keep separate handles, so that a read never waits for
        # a commit's hold on a handle (deltalake serialises calls on one DeltaTable).
        self._open_tables: dict[str, DeltaTable] = {}
        self._write_tables: dict[str, DeltaTable] = {}
        self._keys_of: dict[str, tuple[str, ...]] = {}
        self._key_caches: dict[str, _KeyCache] = {}

    def with_options(self, **options: object) -> DeltaStore:
        new = super().with_options(**options)
        new._open_tables, new._write_tables, new._key_caches = {}, {}, {}  # handles are per store
        return new

    def uri(self, name: str) -> str:
        """The table's path, readable directly with ``pl.scan_delta`` or DuckDB."""
        return os.path.join(self.location, check_name(name))

    # ---- opening and creating ------------------------------------------------------------
    def _state(self, name: str) -> str:
        """'absent', 'delta', 'namespace' (a folder of tables) or 'junk' (anything else)."""
        path = self.uri(name)
        blocker = self._file_in_the_way(name)
        if blocker is not None:
            raise StoreError(f"{path}: {blocker} is a file, not a directory of orca tables")
        if not os.path.exists(path):
            return "absent"
        if not os.path.isdir(path):
            return "junk"
        if DeltaTable.is_deltatable(path):
            return "delta"
        entries = [e for e in os.scandir(path) if e.name != "_delta_log"]
        if any(not e.is_dir() for e in entries):
            return "junk"
        return "namespace" if entries else "absent"

    def _file_in_the_way(self, name: str) -> str | None:
        """The store root or a folder on the way to ``name`` that exists as a file, if any."""
        path = self.location
        for part in ["", *check_name(name).split("/")[:-1]]:
            path = os.path.join(path, part) if part else path
            if os.path.exists(path) and not os.path.isdir(path):
                return path
        return None

    _slow_commits = True

    def _open(self, name: str, *, writing: bool = False) -> DeltaTable | None:
        """The table at ``name`` brought up to date, None if there is none; foreign -> error."""
        handles = self._write_tables if writing else self._open_tables
        table = handles.get(name)
        if table is not None:
            # A commit needs no fresh snapshot: deltalake commits an append over versions other
            # writers added meanwhile (and a real conflict reopens the table, see _retry).
            if not writing:
                table.update_incremental()
            return table
        state = self._state(name)
        if state == "junk":
            raise StoreError(f"{self.uri(name)}: holds files that are not a Delta table")
        if state != "delta":
            return None
        table = DeltaTable(self.uri(name))
        config = table.metadata().configuration
        if config.get("orca.format") != FORMAT or "orca.key" not in config:
            raise StoreError(f"{self.uri(name)}: holds a Delta table that orca did not create")
        self._keys_of[name] = tuple(json.loads(config["orca.key"]))
        handles[name] = table
        return table

    def _create(self, name: str, schema: pa.Schema, key: tuple[str, ...]) -> DeltaTable:
        if self._state(name) not in ("absent", "delta"):
            raise StoreError(f"{self.uri(name)}: cannot create a table over existing files")
        try:
            DeltaTable.create(
                self.uri(name),
                schema,
                mode="error",
                description="orca table",
                configuration={"orca.format": FORMAT, "orca.key": json.dumps(list(key))},
                raise_if_key_not_exists=False,
                commit_properties=self._mark(),
            )
        except DeltaError as exc:  # most likely another process created it first
            if self._state(name) != "delta":
                raise _CreateRace(str(exc)) from exc
        table = self._open(name, writing=True)
        if table is None:
            raise _CreateRace("table vanished after creation")
        return table

    def _known_key(self, name: str) -> tuple[str, ...] | None:
        return self._keys_of.get(name)

    def _retry(self, name: str, action: Callable[[], T], handles: dict[str, DeltaTable] | None = None) -> T:
        """Run ``action`` until it commits, reloading the table after each conflict."""
        last: Exception | None = None
        for attempt in range(self.options.max_retries):
            if attempt:
                pause = min(_BACKOFF_CAP, _BACKOFF_BASE * 2**attempt)
                time.sleep(pause * random.uniform(0.5, 1.5))
            try:
                return action()
            except _RETRYABLE as exc:
                last = exc
                (self._open_tables if handles is None else handles).pop(name, None)
        raise StoreError(
            f"{self.uri(name)}: commit failed after {self.options.max_retries} tries "
            f"(the rows stay pending; flush again later): {last}"
        )

    # ---- writes ------------------------------------------------------------------------------
    def _commit(self, name: str, data: pa.Table, key: tuple[str, ...]) -> None:
        def attempt() -> None:
            table = self._open(name, writing=True) or self._create(name, data.schema, key)
            check_key(self.uri(name), key, self._keys_of[name])
            rows = conform(data, pa.schema(table.schema().to_arrow()), self.uri(name))
            properties = _writer_properties(rows.schema, key, rows)
            write_deltalake(table, rows, mode="append", writer_properties=properties,
                            commit_properties=self._mark())

        try:
            self._retry(name, attempt, self._write_tables)
        except (DeltaError, OSError, pa.ArrowException) as exc:
            raise StoreError(f"{self.uri(name)}: write failed: {exc}") from exc

    def invalidate(self, name: str, keys: pl.Series | pa.Array) -> int:
        """Mark live rows whose key is in ``keys`` invalidated (one merge); return rows hit."""
        table = self._open(check_name(name))
        if table is None:
            return 0
        column = single_key(self.uri(name), self._keys_of[name])
        dtype = _dtype(table, column)
        now = datetime.datetime.now(datetime.UTC)
        source = key_frame(keys, column, dtype).to_arrow()
        if source.num_rows == 0:
            return 0
        source = source.append_column(
            "__orca_now", pa.array([now] * source.num_rows, INVALIDATED_TYPE)
        )

        def attempt() -> int:
            target = self._open(name)
            merger = target.merge(
                source,
                predicate=f't."{column}" = s."{column}"',
                source_alias="s",
                target_alias="t",
            ).when_matched_update(
                updates={f'"{INVALIDATED_AT}"': 's."__orca_now"'},
                predicate=f't."{INVALIDATED_AT}" IS NULL',
            )
            return int(merger.execute()["num_target_rows_updated"])

        return self._retry(name, attempt)

    def compact(self, name: str) -> None:
        """Rewrite small files into larger ones; every row (live or not) is kept."""
        if self._open(check_name(name)) is not None:
            def compact() -> None:
                table = self._open(name)
                schema = pa.schema(table.schema().to_arrow())
                table.optimize.compact(writer_properties=_writer_properties(schema, self._keys_of[name]))

            self._retry(name, compact)

    # ---- reads -------------------------------------------------------------------------------
    def _read(self, name: str) -> tuple[pl.LazyFrame, tuple[str, ...]] | None:
        table = self._open(name)
        if table is None:
            return None
        return pl.scan_delta(table), self._keys_of[name]

    def keys(self, name: str) -> pl.Series | None:
        """Distinct live keys, cached: only data files added since the last call are read."""
        table = self._open(check_name(name))
        if table is None:
            return None
        column = single_key(self.uri(name), self._keys_of[name])
        cache = self._key_caches.get(name)
        if cache is not None and cache.version == table.version():
            return cache.keys
        files = frozenset(table.file_uris())
        if cache is None or not cache.files <= files:  # files removed: rebuild from scratch
            cache = None
        keys = cache.keys if cache else pl.Series(column, [], _dtype(table, column))
        new = sorted(files - cache.files) if cache else sorted(files)
        if new:
            frame = pl.scan_parquet(new).select(column, INVALIDATED_AT)
            live = frame.filter(pl.col(INVALIDATED_AT).is_null()).select(column)
            keys = pl.concat([keys.to_frame().lazy(), live]).unique().collect().to_series()
        self._key_caches[name] = _KeyCache(table.version(), files, keys)
        return keys

    def exists(self, name: str) -> bool:
        return self._open(check_name(name)) is not None

    def _mark(self) -> CommitProperties:
        return CommitProperties(custom_metadata={_WRITER: self.writer_id})

    def version(self, name: str) -> int | None:
        table = self._open(check_name(name))
        return None if table is None else table.version()

    def only_own_commits(self, name: str, since: int | None) -> bool:
        """Reads the commit log after ``since``: orca marks its appends with the store object's id."""
        table = self._open(check_name(name))
        if table is None:
            return True
        first = 0 if since is None else since + 1
        newer = table.version() - first + 1
        if newer <= 0:
            return True
        commits = [c for c in table.history(newer) if c.get("version", -1) >= first]
        return len(commits) == newer and all(c.get(_WRITER) == self.writer_id for c in commits)

    def tables(self, prefix: str = "") -> list[str]:
        """Names of the Delta tables under the store whose name starts with ``prefix``."""
        found = []
        for folder, subfolders, _ in os.walk(self.location):
            if "_delta_log" in subfolders:
                subfolders.clear()
                found.append(os.path.relpath(folder, self.location).replace(os.sep, "/"))
        return sorted(n for n in found if n.startswith(prefix) and n != ".")


def _writer_properties(schema: pa.Schema, key: tuple[str, ...], data: pa.Table | None = None) -> WriterProperties:
    """Parquet options for one commit (or, without ``data``, a compaction), chosen by measurement
    (see ``docs/stores.md``).

    Key, hash and reference columns never repeat a value and are random hex: dictionaries and
    min/max statistics on them cost write time and never prune a file, and Snappy does not
    shrink them. Tables of only such columns and fixed-width values (provenance, most results)
    are written uncompressed; a table with other text, binary or nested columns (user data)
    keeps Snappy. A column of ``data`` whose first values are mostly distinct is written without
    a dictionary too: trying one and falling back costs more than the rest of the column's write.
    """
    hashes = ColumnProperties(dictionary_enabled=False, statistics_enabled="NONE")
    plain = ColumnProperties(dictionary_enabled=False)
    options, compressible = {}, False
    for field in schema:
        name = field.name
        if name in key or name in _UNIQUE_COLUMNS or name.startswith(_UNIQUE_PREFIXES):
            options[name] = hashes
            continue
        if name not in _CONSTANT_COLUMNS and not (pa.types.is_primitive(field.type) or pa.types.is_null(field.type)):
            compressible = True
        if data is not None and _mostly_distinct(data.column(name)):
            options[name] = plain
    return WriterProperties(compression="SNAPPY" if compressible else "UNCOMPRESSED", column_properties=options)


def _mostly_distinct(column: pa.ChunkedArray, sample: int = 2048) -> bool:
    """Whether the first ``sample`` values of ``column`` are mostly distinct (cheap: a slice).

    Only asked of primitive, text and binary columns; any other type keeps the default.
    """
    t = column.type
    if len(column) < 2 or not (pa.types.is_primitive(t) or pa.types.is_string(t) or pa.types.is_large_string(t)
                               or pa.types.is_binary(t) or pa.types.is_large_binary(t)):
        return False
    head = column.slice(0, sample)
    try:
        return pc.count_distinct(head).as_py() > len(head) // 2
    except pa.ArrowNotImplementedError:
        return False


def _dtype(table: DeltaTable, column: str) -> pl.DataType:
    return pl.from_arrow(pa.schema(table.schema().to_arrow()).empty_table())[column].dtype


def default_store() -> DeltaStore:
    """The store at ``$ORCA_STORE``, or ``./.orca``."""
    return DeltaStore(os.environ.get("ORCA_STORE", ".orca"))
