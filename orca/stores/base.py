"""The store interface and the logic every store shares: buffering, flush order, dedup, schemas.

A store holds named tables (relative POSIX paths such as ``results/<fn>/<hash>``). Writes are
buffered and committed by :meth:`BufferedStore.flush` or when a threshold trips; reads see
committed data only. Keyed tables are append-only and deduplicated on read by a fixed rule,
see :func:`live_rows`.

Ordering: a buffer is committed table by table in the order the tables first got rows in it,
and buffers in the order they were sealed. Rows appended with ``refers_to=<table>`` (provenance
pointing at results) are never committed before rows appended earlier to that table: if their
own table got rows in the current buffer before that table did, the buffer is sealed first.

When a buffer is sealed, a store whose commits are slow I/O (``DeltaStore``) commits it on one
background thread while the caller goes on computing: a Delta write spends its time in native
code without the GIL, so on two cores it runs beside the Python work. That thread commits
sealed buffers strictly in the order they were sealed; ``flush()`` waits for it.
"""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import contextlib
import copy
import dataclasses
import datetime
import posixpath
import re
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

import polars as pl
import pyarrow as pa

from orca.errors import StoreError
from orca.hashing import hash_keys, keys_binary

INVALIDATED_AT = "__invalidated_at"
RUN_ID = "__run_id"
INVALIDATED_TYPE = pa.timestamp("us", tz="UTC")
COMMIT = "__orca_commit"  # (never stored) the version of the commit that first added a row
_QUEUED = 3  # sealed buffers that may wait for the background committer


@runtime_checkable
class Store(Protocol):
    """Where results, provenance, failures and runs live. See ``docs/stores.md``."""

    location: str

    def append(self, name: str, data: pa.Table, *, key: Sequence[str] | None = None,
               refers_to: str | None = None, evolve: bool = False) -> None: ...
    def flush(self, wait: bool = True) -> None: ...
    def scan(self, name: str, *, include_invalidated: bool = False) -> pl.LazyFrame | None: ...
    def keys(self, name: str) -> pl.Series | None: ...
    def lookup(self, name: str, keys: pl.Series | pa.Array, columns: Sequence[str] | None = None) -> pl.DataFrame: ...
    def invalidate(self, name: str, keys: pl.Series | pa.Array) -> int: ...
    def exists(self, name: str) -> bool: ...
    def tables(self, prefix: str = "") -> list[str]: ...
    def uri(self, name: str) -> str: ...
    def compact(self, name: str) -> None: ...
    def collect(self, name: str, frame: pl.LazyFrame) -> pl.DataFrame: ...
    def version(self, name: str) -> int | None: ...
    def table_id(self, name: str) -> str | None: ...
    def only_own_commits(self, name: str, since: int | None) -> bool: ...
    def unchanged_since(self, name: str, since: int | None, until: int | None = None) -> bool: ...
    def with_options(self, **options: object) -> Store: ...
    def sync_rows(self, name: str, key: str, rows: pa.Table, changed: pl.Series, *,
                  metadata: dict[str, str] | None = None, compare: Sequence[str] = (),
                  trust_since: int | None = None) -> int | None: ...
    def sync_staged(self, name: str, key: str, staged: Callable[[], pa.RecordBatchReader], staged_keys: pl.Series,
                    delete: pl.Series, *, since: int, metadata: dict[str, str] | None = None) -> int | None: ...
    def scan_version(self, name: str, *, version: int | None = None,
                     as_of: datetime.datetime | None = None) -> pl.LazyFrame | None: ...
    def history(self, name: str, limit: int | None = None) -> list[dict]: ...
    def ensure(self, name: str, schema: pa.Schema) -> None: ...
    def delete_rows(self, name: str, key: str, keys: pl.Series, *,
                    metadata: dict[str, str] | None = None) -> int: ...
    def upkeep(self, names: Sequence[str]) -> None: ...
    def claim(self, name: str, chunk: int, of: int, owner: str, lease_seconds: float) -> bool: ...
    def update_claim(self, name: str, chunk: int, of: int, owner: str, *, lease_seconds: float | None = None,
                     done: bool = False) -> bool: ...
    def claims(self, name: str, of: int) -> dict[int, str]: ...


@dataclasses.dataclass(frozen=True)
class StoreOptions:
    """When buffered rows are committed, and how often a conflicting commit is retried."""

    max_rows: int = 200_000
    max_seconds: float = 30.0
    max_retries: int = 10
    background: bool = True  # commit a full buffer on a background thread (stores with slow I/O)
    # Upkeep after a run (see DeltaStore.upkeep): a checkpoint of a table's log every this
    # many versions, and a compaction of a table's small files once it has this many files.
    checkpoint_every: int = 20
    compact_files: int = 32

    def __post_init__(self) -> None:
        if (self.max_rows < 1 or self.max_seconds < 0 or self.max_retries < 1 or self.checkpoint_every < 1
                or self.compact_files < 2):
            raise ValueError(f"invalid store options: {self}")


@dataclasses.dataclass
class _Pending:
    key: tuple[str, ...]
    batches: list[pa.Table]
    rows: int


class BufferedStore(abc.ABC):
    """Shared half of every store: buffers appends, commits them in append order (see module docs).

    Subclasses implement the I/O: ``_commit``, ``_read``, ``_known_key`` and the
    table-level methods (``invalidate``, ``exists``, ``tables``, ``uri``, ``compact``).
    A subclass sets ``_slow_commits = True`` when committing is I/O worth overlapping with
    computation; its ``_commit`` must then be safe to run on another thread than its reads.
    """

    location: str
    _slow_commits = False
    # What reading a damaged table raises (besides Rust panics), turned into StoreError.
    _read_errors: tuple[type[Exception], ...] = (OSError, pl.exceptions.PolarsError, pa.ArrowException)

    def __init__(
        self, *, max_rows: int = 200_000, max_seconds: float = 30.0, max_retries: int = 10,
        background: bool = True,
    ) -> None:
        self.options = StoreOptions(max_rows, max_seconds, max_retries, background)
        self._reset_buffer()

    def _reset_buffer(self) -> None:
        self._pending: dict[str, _Pending] = {}  # insertion order = commit order
        self._evolving: set[str] = set()  # tables that may gain columns (see append)
        self._oldest: float | None = None
        self._lock = threading.RLock()
        # Buffers sealed for commit, oldest first; each is committed table by table in order.
        self._sealed: collections.deque[dict[str, _Pending]] = collections.deque()
        self._commit_lock = threading.Lock()  # one committer at a time (background or caller)
        self._committer: concurrent.futures.ThreadPoolExecutor | None = None
        self._background: collections.deque[concurrent.futures.Future] = collections.deque()  # oldest first
        self._submit_lock = threading.Lock()  # guards _committer and _background
        self._sealed_count = self._committed_count = 0  # buffers ever sealed / committed
        self.writer_id = uuid.uuid4().hex  # marks this store object's commits (see only_own_commits)

    def with_options(self, **options: object) -> BufferedStore:
        """Return a new store over the same tables with other options and an empty buffer."""
        valid = [f.name for f in dataclasses.fields(StoreOptions)]
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise StoreError(f"unknown store option(s) {unknown}; valid: {valid}")
        new = copy.copy(self)
        new.options = dataclasses.replace(self.options, **options)
        new._reset_buffer()
        return new

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.location!r}, {self.options})"

    # ---- writes -------------------------------------------------------------------------
    def append(self, name: str, data: pa.Table, *, key: Sequence[str] | None = None,
               refers_to: str | None = None, evolve: bool = False) -> None:
        """Buffer ``data`` for table ``name``; commit everything pending when a threshold trips.

        ``refers_to``: a table these rows point at; they are committed after every row appended
        to it before this call. ``evolve``: the table may gain the nullable columns ``data`` has
        and it lacks (rows written before have nulls there; rows without them get nulls). If a
        commit fails here, the rows are already buffered: do not append them again, ``flush()``
        retries.
        """
        check_name(name)
        if evolve:
            self._evolving.add(name)
        declared = tuple(key or ())
        data = self._prepare(name, data, declared)
        if data.num_rows == 0:
            return
        with self._lock:
            pending = self._pending.get(name)
            order = list(self._pending)
            reordered = (pending is not None and refers_to in self._pending
                         and order.index(refers_to) > order.index(name))
            if reordered:
                # This table would be committed before rows of `refers_to` these rows point at:
                # they go in the next buffer instead.
                self._seal()
                pending = None
            if pending is None:
                self._pending[name] = _Pending(declared, [data], data.num_rows)
            else:
                check_key(self.uri(name), declared, pending.key)
                pending.batches.append(conform(data, pending.batches[0].schema, self.uri(name)))
                pending.rows += data.num_rows
            if self._oldest is None:
                self._oldest = time.monotonic()
            buffered = sum(p.rows for p in self._pending.values())
            full = (buffered >= self.options.max_rows
                    or time.monotonic() - self._oldest >= self.options.max_seconds)
            if full:
                self._seal()
        if full or reordered:
            self._commit_sealed()

    def flush(self, wait: bool = True) -> None:
        """Commit every pending table, one commit each, in the order they got rows.

        Waits for a background commit in progress first. If a commit fails, that table and
        every later one stay pending (a later ``flush`` tries them again) and StoreError is raised.
        ``wait=False`` hands the commit to the background thread (where the store has one) and
        returns at once; a failure then surfaces at a later ``append`` or ``flush``.
        """
        with self._lock:
            self._seal()
        if not wait:
            self._commit_sealed()
            return
        with self._submit_lock:
            self._wait_background()
        self._drain()

    def _seal(self) -> None:
        """Move the open buffer to the commit queue (caller holds ``_lock``)."""
        if self._pending:
            self._sealed.append(self._pending)
            self._pending = {}
            self._sealed_count += 1
        self._oldest = None

    def _commit_sealed(self) -> None:
        """Commit what is sealed: on the background thread if enabled, else here."""
        if not (self._slow_commits and self.options.background):
            self._drain()
            return
        # A few sealed buffers may wait for the committer (it falls behind in bursts) while the
        # next fills; beyond that the caller waits, so memory stays under (_QUEUED + 1) x
        # max_rows. A failed background commit surfaces here, where the caller's thread retries it.
        with self._submit_lock:
            ok = self._wait_background(keep=_QUEUED - 1)
            if ok:
                if self._committer is None:
                    self._committer = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="orca-commit")
                with self._lock:
                    upto = self._sealed_count
                self._background.append(self._committer.submit(self._drain, upto))
        if not ok:
            self._drain()

    def _wait_background(self, keep: int = 0) -> bool:
        """Wait for background commits, oldest first, until at most ``keep`` are outstanding;
        False if one failed (its rows stay sealed)."""
        ok = True  # (callers hold _submit_lock)
        while self._background and (len(self._background) > keep or self._background[0].done()):
            try:
                self._background.popleft().result()
            except Exception:  # noqa: BLE001 - its rows stay sealed; the caller's drain retries them
                ok = False
        return ok

    def _drain(self, upto: int | None = None) -> None:
        """Commit sealed buffers, oldest first: all of them, or those among the first ``upto``
        ever sealed (a background task stops at the buffers sealed when it was queued, so
        waiting for it never means waiting for later ones). On failure the rest stay sealed
        and it raises."""
        with self._commit_lock:
            while upto is None or self._committed_count < upto:
                with self._lock:
                    if not self._sealed:
                        return
                    batch = self._sealed[0]
                for name in list(batch):
                    pending = batch[name]
                    if len(pending.batches) > 1:
                        pending.batches = [pa.concat_tables(pending.batches)]
                    self._commit(name, pending.batches[0], pending.key)
                    del batch[name]
                with self._lock:
                    self._sealed.popleft()
                    self._committed_count += 1

    def _prepare(self, name: str, data: pa.Table, key: tuple[str, ...]) -> pa.Table:
        where = self.uri(name)
        if isinstance(data, pl.DataFrame):
            data = data.to_arrow()
        if not isinstance(data, pa.Table):
            raise StoreError(f"{where}: append expects a pyarrow.Table, got {type(data).__name__}")
        known = self._known_key(name)
        if known is not None:
            check_key(where, key, known)
        if not key:
            return data
        missing = [c for c in (*key, RUN_ID) if c not in data.column_names]
        if missing:
            raise StoreError(f"{where}: keyed table is missing columns {missing}")
        nulls = [c for c in key if data.column(c).null_count]
        if nulls:
            raise StoreError(f"{where}: key columns {nulls} contain nulls")
        if INVALIDATED_AT in data.column_names:
            return data
        return data.append_column(
            pa.field(INVALIDATED_AT, INVALIDATED_TYPE), pa.nulls(data.num_rows, INVALIDATED_TYPE)
        )

    # ---- reads ----------------------------------------------------------------------------
    def scan(self, name: str, *, include_invalidated: bool = False) -> pl.LazyFrame | None:
        """Committed rows of ``name`` (pending rows are not visible), or None if it is absent.

        Keyed tables give one live row per key (the dedup rule, see :func:`live_rows`) unless
        ``include_invalidated`` asks for the raw history (duplicates and invalidated rows
        included). A keyed table's key column is read here, so a damaged table fails here
        (StoreError); collect what this returns with :meth:`collect`.
        """
        found = self._read(check_name(name))
        if found is None:
            return None
        frame, key = found
        if include_invalidated or not key:
            return frame
        live = frame.filter(pl.col(INVALIDATED_AT).is_null())
        copies = self._copies(name, live, key)
        if copies is None or copies.is_empty():  # the common case: every key once, nothing to choose
            return live
        return live_rows(live, key, self._first_commits(name, copies).lazy())

    def _copies(self, name: str, live: pl.LazyFrame, key: tuple[str, ...]) -> pl.DataFrame | None:
        """Distinct key and ``__run_id`` values of the ``live`` rows whose key has several live
        rows (None or empty: none has)."""
        pairs = live.select(*key, RUN_ID)
        # (a group-by and a semi-join: 3x faster than is_duplicated on 1M hash strings)
        repeated = pairs.group_by(key).len("__orca_copies").filter(pl.col("__orca_copies") > 1).drop("__orca_copies")
        return self.collect(name, pairs.join(repeated, on=list(key), how="semi").unique())

    def keys(self, name: str) -> pl.Series | None:
        """Distinct live key values of keyed table ``name``, or None if it is absent."""
        found = self._read(check_name(name))
        if found is None:
            return None
        frame, key = found
        column = single_key(self.uri(name), key)
        live = frame.filter(pl.col(INVALIDATED_AT).is_null()).select(column).unique()
        return self.collect(name, live).to_series()

    def lookup(self, name: str, keys: pl.Series | pa.Array, columns: Sequence[str] | None = None) -> pl.DataFrame:
        """The live, deduplicated rows whose key is in ``keys`` (one vectorised semi-join);
        ``columns``: only these (and the key and the columns the dedup rule reads) -- a scan
        that reads fewer columns of every stored row."""
        found = self._read(check_name(name))
        if found is None:
            return pl.DataFrame()
        frame, key = found
        column = single_key(self.uri(name), key)
        wanted = key_frame(keys, column, frame.collect_schema()[column])
        if columns is not None:
            frame = frame.select(*dict.fromkeys([*key, *columns, RUN_ID, INVALIDATED_AT]))
        live = frame.join(wanted.lazy(), on=column, how="semi").filter(pl.col(INVALIDATED_AT).is_null())
        rows = self.collect(name, live)
        copies = rows.select(*key, RUN_ID).filter(_repeated(key))
        if copies.is_empty():
            return rows
        if columns is not None:  # the dedup rule breaks ties on every column: read those keys whole
            several = copies[column].unique()
            whole = self.lookup(name, several).select(rows.columns)
            return pl.concat([rows.filter(~pl.col(column).is_in(several.implode())), whole])
        return live_rows(rows.lazy(), key, self._first_commits(name, copies.unique()).lazy()).collect()

    def collect(self, name: str, frame: pl.LazyFrame) -> pl.DataFrame:
        """Collect ``frame`` (a query over table ``name``); a damaged table or a column it lacks
        raises StoreError naming the table instead of a Polars or Rust error."""
        with self._reading(name):
            return frame.collect()

    @contextlib.contextmanager
    def _reading(self, name: str):
        """Turn errors from reading table ``name`` into StoreError naming it."""
        where = self.uri(name)
        try:
            yield
        except StoreError:
            raise
        except pl.exceptions.ColumnNotFoundError as exc:
            raise StoreError(
                f"{where}: the table lacks a column its reader needs ({clean_message(exc)}): it was "
                f"written by other code or another version; remove it (or move it away) to start over"
            ) from None
        except self._read_errors as exc:
            raise StoreError(corrupt(where, exc)) from None
        except BaseException as exc:
            if not is_panic(exc):
                raise
            raise StoreError(corrupt(where, exc)) from None

    # ---- implemented by each store -------------------------------------------------------
    @abc.abstractmethod
    def uri(self, name: str) -> str:
        """Where table ``name`` lives (a path ``pl.scan_delta`` reads, or a label)."""

    @abc.abstractmethod
    def _known_key(self, name: str) -> tuple[str, ...] | None:
        """The committed table's key if known without I/O, else None."""

    @abc.abstractmethod
    def _commit(self, name: str, data: pa.Table, key: tuple[str, ...]) -> None:
        """Commit ``data`` to table ``name`` (created with ``key`` if absent), or raise."""

    @abc.abstractmethod
    def version(self, name: str) -> int | None:
        """The committed version of table ``name`` (it grows with every commit), None if absent."""

    @abc.abstractmethod
    def table_id(self, name: str) -> str | None:
        """An id of table ``name`` that a table made anew at the same name does not share (its
        versions start again from 0), None if absent."""

    @abc.abstractmethod
    def only_own_commits(self, name: str, since: int | None) -> bool:
        """Whether every commit to ``name`` after version ``since`` (None: ever) was an append
        by this store object; False when in doubt. Lets a caller trust what it just wrote."""

    @abc.abstractmethod
    def unchanged_since(self, name: str, since: int | None, until: int | None = None) -> bool:
        """Whether every commit to ``name`` after version ``since`` (up to ``until``, default the
        latest) left its rows as they were (a compaction rewrites files, not rows); False when in
        doubt. Lets a caller keep what it read at ``since``."""

    @abc.abstractmethod
    def _read(self, name: str) -> tuple[pl.LazyFrame, tuple[str, ...]] | None:
        """The committed rows of ``name`` (raw) and its key, or None if there is no table."""

    @abc.abstractmethod
    def _first_commits(self, name: str, pairs: pl.DataFrame) -> pl.DataFrame:
        """``pairs`` (distinct key and ``__run_id`` values of live rows of keyed table ``name``)
        plus ``__orca_commit``: the version of the latest append of a row with those values (the
        live one; null where that cannot be learned any more: such rows count as older than
        all others)."""


@dataclasses.dataclass(frozen=True)
class SyncPlan:
    """What makes a table hold exactly some rows: the keys to ``delete``, the rows to ``upsert``
    (new keys, and keys asked to be written again) and how many of those exist (``updated``)."""

    delete: pl.Series
    upsert: pa.Table
    updated: int


def sync_plan(existing: pl.Series | pl.DataFrame, rows: pa.Table, key: str, changed: pl.Series) -> SyncPlan:
    """What makes a table whose ``key`` values are ``existing`` hold exactly ``rows`` (see
    :class:`SyncPlan`); ``changed``: keys to write again even where present. ``existing`` as a
    frame: the keys and some other columns, whose values are compared with ``rows``'s too (a
    present row that holds other values is written again, see :func:`differing_keys`).

    16-byte ids are compared as ``UInt128`` (several times faster than comparing bytes or text),
    and every membership test hashes the smaller side: a 10k-row asset replacing a 3M-row one
    costs a probe of 3M keys, not a set of them (~0.8 s).
    """
    if isinstance(existing, pl.DataFrame):
        stale = differing_keys(existing, rows, key)
        existing = existing[key]
        changed = comparable_keys(changed)
        changed = stale if changed.len() == 0 else pl.concat([changed, stale]) if stale.len() else changed
    if existing.len() == 0:  # a first materialisation: everything is new
        return SyncPlan(existing, rows, 0)
    wanted = comparable_keys(pl.Series(key, rows.column(key)))
    have, changed_ = comparable_keys(existing), comparable_keys(changed)
    if not (wanted.dtype == have.dtype == changed_.dtype or changed_.len() == 0):
        raise StoreError(f"{key}: cannot compare keys of types {wanted.dtype}, {have.dtype}, {changed_.dtype}")
    kept = member(have, wanted)
    present = member(wanted, have.filter(kept))  # (a set of at most len(wanted) keys)
    fresh = ~present
    if changed_.len():
        fresh = fresh | member(wanted, changed_)
    return SyncPlan(existing.filter(~kept), rows.filter(fresh.to_arrow()), int((fresh & present).sum()))


def differing_keys(existing: pl.DataFrame, rows: pa.Table, key: str) -> pl.Series:
    """The keys (as :func:`comparable_keys`) of the ``existing`` rows whose other columns hold
    other values than the ``rows`` with the same key (one join; nulls compare equal). Columns
    that do not compare (another type) count as differing in every row."""
    columns = [c for c in existing.columns if c != key]
    have = existing.with_columns(comparable_keys(existing[key]).alias(key))
    if not columns or have.height == 0:
        return have[key].clear()
    missing = [c for c in columns if c not in rows.column_names]
    if missing:
        return have[key]
    wanted = pl.from_arrow(rows.select([key, *columns]))
    assert isinstance(wanted, pl.DataFrame)
    wanted = wanted.with_columns(comparable_keys(wanted[key]).alias(key))
    try:
        both = have.join(wanted, on=key, suffix=_WANTED)
        return both.filter(pl.any_horizontal(pl.col(c).ne_missing(pl.col(c + _WANTED)) for c in columns))[key]
    except pl.exceptions.PolarsError:
        return have[key]


_WANTED = "__wanted"


def member(values: pl.Series, of: pl.Series) -> pl.Series:
    """``values.is_in(of)``, hashing whichever side is smaller (a set of ``of`` costs ~10x a
    probe of it)."""
    if of.len() <= values.len():
        return values.is_in(of.implode())
    return values.is_in(of.filter(of.is_in(values.implode())).implode())


def comparable_keys(keys: pl.Series) -> pl.Series:
    """Keys in the form compared fastest: ``UInt128`` for 16-byte ids, else text."""
    if keys.dtype == pl.UInt128:  # ids as orca holds them in memory already
        return keys
    if keys.dtype == pl.Binary:
        try:
            return hash_keys(keys)
        except ValueError:  # not all 16 bytes: compared as they are
            return keys
    return keys.cast(pl.String)


def live_rows(frame: pl.LazyFrame, key: Sequence[str], commits: pl.LazyFrame | None = None) -> pl.LazyFrame:
    """Apply the fixed dedup rule: one live row per key, **the one committed first**.

    ``commits`` holds, for rows whose key has several live rows, the key, ``__run_id`` and
    ``__orca_commit`` (the version of the commit that appended such a row; null = unknown,
    counted as older than any known one). A store passes it (see ``docs/stores.md``); without
    it every commit is unknown. Remaining ties (same commit, or unknown) are broken by the
    smallest values of the other non-nested columns in schema order, then ``__run_id``, so the
    choice never depends on file order or on a clock.

    >>> frame = pl.LazyFrame({"k": ["a", "a", "b"], "__run_id": ["r2", "r1", "r1"],
    ...                       "v": [2, 1, 3], "__invalidated_at": [None, None, None]})
    >>> commits = pl.LazyFrame({"k": ["a", "a"], "__run_id": ["r2", "r1"], "__orca_commit": [1, 2]})
    >>> live_rows(frame, ["k"], commits).sort("k").collect()["v"].to_list()
    [2, 3]
    """
    schema = frame.collect_schema()
    skip = {*key, RUN_ID, INVALIDATED_AT, COMMIT}
    tiebreak = [c for c, dtype in schema.items() if c not in skip and not dtype.is_nested()]
    copies = "__orca_copies"
    live = frame.filter(pl.col(INVALIDATED_AT).is_null())
    live = live.with_columns(pl.len().over(list(key)).alias(copies))
    single = live.filter(pl.col(copies) == 1)  # the common case skips the sort
    several = live.filter(pl.col(copies) > 1)
    if commits is None:
        several = several.with_columns(pl.lit(None, pl.Int64).alias(COMMIT))
    else:
        several = several.join(commits.select(*key, RUN_ID, pl.col(COMMIT).cast(pl.Int64)),
                               on=[*key, RUN_ID], how="left", nulls_equal=True)
    several = several.sort([*key, COMMIT, *tiebreak, RUN_ID], nulls_last=False)
    several = several.unique(subset=list(key), keep="first", maintain_order=True).drop(COMMIT)
    return pl.concat([single, several]).drop(copies)


def _repeated(key: Sequence[str]) -> pl.Expr:
    """Rows whose key occurs more than once."""
    return (pl.col(key[0]) if len(key) == 1 else pl.struct(*key)).is_duplicated()


# ---- error messages ---------------------------------------------------------------------
_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
_FRAME = re.compile(r"^\s*(\d+: |at \S+:\d+|stack backtrace:|note: Some details are omitted)", re.I)


def clean_message(exc: BaseException) -> str:
    """``exc``'s message on one line without ANSI colour codes or Rust backtrace frames."""
    lines = _ANSI.sub("", str(exc)).splitlines()
    return " ".join(line.strip() for line in lines if line.strip() and not _FRAME.match(line))


def is_panic(exc: BaseException) -> bool:
    """Whether ``exc`` is a Rust panic surfaced by pyo3 (``pyo3_runtime.PanicException``, a
    BaseException that cannot be imported by name, so it is matched by its class name)."""
    return type(exc).__name__ == "PanicException"


def corrupt(where: str, exc: BaseException) -> str:
    """The message for a table that cannot be read."""
    return (f"{where}: the table is damaged and cannot be read ({clean_message(exc)}); restore it "
            f"from a backup, or remove it (orca recomputes what it held)")


def check_name(name: str) -> str:
    """A table name is a non-empty relative POSIX path without ``.``/``..`` parts."""
    parts = name.split("/") if isinstance(name, str) else [""]
    if not name or name.startswith("/") or any(p in ("", ".", "..") for p in parts):
        raise StoreError(f"invalid table name {name!r}: use a relative path like 'results/f/h'")
    return posixpath.normpath(name)


def check_key(where: str, declared: tuple[str, ...], actual: tuple[str, ...]) -> None:
    if declared != actual:
        raise StoreError(
            f"{where}: appended with key {list(declared)} but the table's key is {list(actual)}"
        )


def single_key(where: str, key: tuple[str, ...]) -> str:
    if len(key) != 1:
        raise StoreError(f"{where}: needs a table keyed by one column, its key is {list(key)}")
    return key[0]


def key_frame(keys: pl.Series | pa.Array, column: str, dtype: pl.DataType) -> pl.DataFrame:
    """Distinct ``keys`` as a one-column frame of the table's key type (ids given as ``UInt128``
    keys or hex text are made the 16 bytes a binary key column holds)."""
    series = keys if isinstance(keys, pl.Series) else pl.Series(column, keys)
    if dtype == pl.Binary and series.dtype in (pl.UInt128, pl.String):
        try:
            series = pl.Series(column, keys_binary(hash_keys(series)))
        except ValueError:
            raise StoreError(f"{column}: expected ids of 32 hex digits, got e.g. {series.head(1).to_list()}") from None
    return series.alias(column).cast(dtype).drop_nulls().unique().to_frame()


def _family(dtype: pa.DataType) -> object:
    """Types in one family convert losslessly or fail loudly (``safe=True`` casts)."""
    if pa.types.is_dictionary(dtype):
        return _family(dtype.value_type)
    t = pa.types
    families = {
        "string": (t.is_string, t.is_large_string, t.is_string_view),
        "binary": (t.is_binary, t.is_large_binary, t.is_binary_view),
        "int": (t.is_integer,),
        "float": (t.is_floating,),
    }
    for family, tests in families.items():
        if any(test(dtype) for test in tests):
            return family
    if t.is_timestamp(dtype):
        return ("timestamp", dtype.tz is not None)
    if t.is_list(dtype) or t.is_large_list(dtype) or t.is_list_view(dtype):
        return ("list", _family(dtype.value_type))
    if t.is_struct(dtype):
        return ("struct", tuple((f.name, _family(f.type)) for f in dtype))
    return str(dtype)


def conform(data: pa.Table, schema: pa.Schema, where: str, *, evolve: bool = False) -> pa.Table:
    """Cast ``data`` to ``schema`` (same column names, compatible types) or raise StoreError.

    ``string`` vs ``large_string``, ``int32`` vs ``int64`` and the like are normalised; missing,
    extra or incompatible columns are errors naming ``where`` and the columns. With ``evolve``,
    missing columns are filled with nulls and extra columns are kept, after the table's.
    """
    if data.schema.equals(schema):
        return data
    if evolve:
        extra = [data.schema.field(n) for n in data.column_names if n not in schema.names]
        filled = [data.column(f.name) if f.name in data.column_names else pa.nulls(data.num_rows, f.type)
                  for f in schema]
        base = conform(pa.Table.from_arrays(filled, schema=pa.schema([
            data.schema.field(f.name) if f.name in data.column_names else f for f in schema])), schema, where)
        return pa.Table.from_arrays([*base.columns, *(data.column(f.name) for f in extra)],
                                    schema=pa.schema([*schema, *extra]))
    names = set(data.column_names)
    missing = [n for n in schema.names if n not in names]
    extra = [n for n in data.column_names if n not in set(schema.names)]
    clash = [
        f"{f.name} ({data.schema.field(f.name).type} vs {f.type})"
        for f in schema
        if f.name in names
        and not pa.types.is_null(data.schema.field(f.name).type)
        and _family(data.schema.field(f.name).type) != _family(f.type)
    ]
    if missing or extra or clash:
        raise StoreError(
            f"{where}: schema does not match the table: missing columns {missing}, "
            f"extra columns {extra}, incompatible columns {clash}"
        )
    try:
        columns = [data.column(f.name).cast(f.type, safe=True) for f in schema]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        raise StoreError(f"{where}: cannot convert columns to the table's types: {exc}") from exc
    return pa.Table.from_arrays(columns, schema=schema)
