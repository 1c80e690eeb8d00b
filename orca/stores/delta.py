"""DeltaStore: a directory of Delta tables, safe for many concurrent writer processes.

The directory is local, or a URL on object storage (``s3://``, ``az://``/``abfss://``,
``gs://``) read and written through deltalake's own object-store support; an S3 store refuses
to commit unless deltalake makes concurrent commits safe there (see ``docs/scaling.md``).

Every commit is an append (never ``mode="overwrite"``) in a capped retry loop with randomised
exponential backoff; creation races are treated as "someone else created it". A table made by
orca carries ``orca.format`` and ``orca.key`` in its Delta table configuration; the store's
root holds a marker file (``.orca-store``) written with its first commit.

Damage is reported, never silently read around: a commit log orca cannot load, a commit file
that is empty or skipped, a data file that is missing or not the size its commit recorded —
each is a StoreError naming the table, raised at the first read (before any work is done).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import json
import os
import random
import re
import time
import urllib.parse
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import TypeVar

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
from deltalake import (
    CommitProperties,
    DeltaTable,
    Transaction,
    WriterProperties,
    write_deltalake,
)
from deltalake.exceptions import CommitFailedError, DeltaError
from deltalake.fs import DeltaStorageHandler
from pyarrow.fs import FileSelector, FileType

from orca.errors import StoreError
from orca.hashing import keys_binary, keys_hex
from orca.names import ID_COLUMNS, MAINTENANCE, has_ids
from orca.stores.base import (
    COMMIT,
    INVALIDATED_AT,
    INVALIDATED_TYPE,
    RUN_ID,
    BufferedStore,
    check_key,
    check_name,
    clean_message,
    conform,
    is_panic,
    key_frame,
    live_rows,
    single_key,
    sync_plan,
)
from orca.stores.parquet_files import Layout, append_file, writable

FORMAT = "2"  # written into every table's configuration and the store marker
# Formats this orca reads: "1" stored ids (packet hashes, entry and record ids) as hex text,
# "2" as 16 bytes (see _legacy_ids).
_FORMATS = ("1", "2")
_WRITER = "orca.writer"  # commit metadata: the id of the store object that appended
# Hash and per-row reference columns never repeat a value: dictionary-encoding them only costs
# time (half of a results or provenance table's write time) and makes reads slower.
_UNIQUE_COLUMNS = ("__packet_hash", "__record_id", "__entry_id", "__system_tags", "__duration_s")
_UNIQUE_PREFIXES = ("__source__", "__tag__")
# Commits that rewrite files but leave every row as it was.
# (Not vacuum: it removes the compacted-away files the dedup rule learns commit order from.)
_NO_DATA_CHANGE = frozenset({"OPTIMIZE"})
# Columns orca fills with one value per commit (dictionary-encoded to almost nothing).
_CONSTANT_COLUMNS = ("__run_id", "__function_hash", "__recorded_at", "__computed_at", "__invalidated_at")
_BACKOFF_BASE = 0.05  # seconds; attempt n sleeps about base * 2**n, at most _BACKOFF_CAP
_BACKOFF_CAP = 2.0
# The maintenance lease (see DeltaStore._maintenance): held for at most this long without renewal
# (a compaction of one table takes seconds), waited for this long by an invalidation, polled so often.
_LEASE_SECONDS = 300.0
_LEASE_WAIT = 330.0
_LEASE_POLL = 0.25
# How long the commit files of claims and the maintenance lease (see short_log) are kept after a
# checkpoint covers them: deltalake 1.6 reads a table's whole commit-log folder on every commit,
# so a log kept for Delta's default 30 days made each commit slower run after run (#31).
_SHORT_LOG = "interval 1 hour"
MARKER = ".orca-store"  # at the store root: says "this directory is an orca store"
# Store-wide tables every run appends to: checked at the store's first I/O, so that damage to
# them is reported before any work, not when the run finally records its failures.
_CHECKED_FIRST = ("failures", "runs")
_LOG_FILE = re.compile(r"^(\d{20})\.json$")
_READ_ONLY = (errno.EROFS, errno.EACCES, errno.EPERM)
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
# S3 has no put-if-absent unless the client asks for conditional writes: without it two writers
# committing the same version both succeed and one commit is lost silently.
_S3_SCHEMES = ("s3", "s3a")
_CONDITIONAL_PUT = ("aws_conditional_put", "conditional_put")
_MANY_FILES = 64  # more unchecked data files than this: one listing beats a request per file
_SECRET_KEY = re.compile(r"secret|key|token|password|sas|credential|signature", re.I)
T = TypeVar("T")


class _CreateRace(Exception):
    """Another process was creating the table at the same moment: reload and retry."""


_RETRYABLE = (CommitFailedError, _CreateRace)
_CHECKED = "__orca_checked"  # (see DeltaStore._first_commits)
_SYNC = "orca.sync"  # the app transaction every sync of an unkeyed table (an asset) commits (see _synced)
# What deltalake 1.6 says when a handle's commit files were trimmed under it (see
# DeltaStore._trim): the table is fine, the handle must be reopened.
_TRIMMED = ("Invalid table version", "No files in log segment")
_TRIM_TRIES, _TRIM_PAUSE = 3, 0.05  # loads that meet a concurrent trim: tries, seconds between
# What _trim removes before a checkpoint: commit files, their checksums, older checkpoints.
_LOGGED = re.compile(r"^(\d{20})\.(?:json|crc|checkpoint(?:\.\d+\.\d+)?\.parquet)$")


@dataclasses.dataclass
class _KeyCache:
    version: int
    files: frozenset[str]
    keys: pl.Series
    rows: int  # live rows: more than len(keys) when some key has several


@dataclasses.dataclass
class _Added:
    """What the commit log says about a table's data files: the version that added each."""

    parsed: int = -1  # commit files up to this version are read
    versions: dict[str, int] = dataclasses.field(default_factory=dict)  # relative path -> version


class DeltaStore(BufferedStore):
    """Tables under ``path``: table ``name`` lives at ``<path>/<name>``. No I/O until a commit.

    ``path`` is made absolute at construction (a later ``os.chdir`` does not move the store).
    At the first I/O the store refuses an empty path and an existing non-empty directory that
    is not an orca store (see ``docs/stores.md``).

    ``path`` may be an object-storage URL (``s3://bucket/prefix``, ``az://container/prefix``,
    ``abfss://...``, ``gs://bucket/prefix``): ``storage_options`` (deltalake's keys, e.g.
    ``AWS_ENDPOINT_URL``, ``azure_storage_account_key``) are handed to deltalake and Polars;
    without them both read the standard environment variables. They never appear in messages
    or in ``repr``. An S3 store commits only with conditional writes
    (``aws_conditional_put="etag"``, in the options or as ``AWS_CONDITIONAL_PUT``): otherwise
    its first commit raises ``StoreError`` (see ``docs/scaling.md``).

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
        storage_options: dict[str, str] | None = None,
        max_rows: int = 200_000,
        max_seconds: float = 30.0,
        max_retries: int = 10,
        background: bool = True,
    ) -> None:
        super().__init__(max_rows=max_rows, max_seconds=max_seconds, max_retries=max_retries,
                         background=background)
        given = os.fspath(path)
        self._empty_path = given == ""  # refused at the first I/O (construction does none)
        scheme = _URL.match(given)
        self._scheme = scheme[1].lower() if scheme and scheme[1].lower() != "file" else None
        if self._scheme is None:
            if storage_options:
                raise StoreError(f"{given}: storage_options apply to object-storage URLs "
                                 f"(s3://, az://, abfss://, gs://), not to a local path")
            self.location = os.path.abspath(given[len("file://"):] if scheme else given)
        else:
            self.location = given.rstrip("/")
        self._options = {str(k): str(v) for k, v in (storage_options or {}).items()}
        if self._scheme in _S3_SCHEMES and _option(self._options, _CONDITIONAL_PUT) is None:
            # Taken from the environment into the options, so that deltalake surely uses what
            # the safety check saw (a read handle opened before a commit commits too).
            from_env = _option(dict(os.environ), _CONDITIONAL_PUT)
            if from_env is not None:
                self._options["aws_conditional_put"] = from_env
        self._fs: DeltaStorageHandler | None = None  # opened at the first listing
        self._root_checked = self._marked = False
        # Reads and (background) commits keep separate handles, so that a read never waits for
        # a commit's hold on a handle (deltalake serialises calls on one DeltaTable).
        self._open_tables: dict[str, DeltaTable] = {}
        self._write_tables: dict[str, DeltaTable] = {}
        # Tables whose read handle was brought up to date since the last upkeep (see _upkeep_view).
        self._read_lately: set[str] = set()
        self._keys_of: dict[str, tuple[str, ...]] = {}
        self._key_caches: dict[str, _KeyCache] = {}
        self._checked_files: dict[str, set[str]] = {}  # data files found whole, per table
        self._log_checked: dict[str, int] = {}  # commit files found non-empty up to this version
        self._read_version: dict[str, int] = {}  # the version the last _read of a table gave
        self._added: dict[str, _Added] = {}
        # Per table: resolved (key, run id) -> the commit of its latest append, and the last
        # version of the log read to know it (_CHECKED).
        self._commit_order: dict[str, pl.DataFrame] = {}

    _read_errors = (*BufferedStore._read_errors, DeltaError, json.JSONDecodeError)

    def with_options(self, **options: object) -> DeltaStore:
        new = super().with_options(**options)
        new._open_tables, new._write_tables, new._key_caches = {}, {}, {}  # handles are per store
        new._checked_files, new._added, new._commit_order, new._log_checked = {}, {}, {}, {}
        new._read_version, new._read_lately = {}, set()
        return new

    @property
    def remote(self) -> bool:
        """Whether the store lives on object storage (a URL), not in a local directory."""
        return self._scheme is not None

    @property
    def storage_options(self) -> dict[str, str] | None:
        """What deltalake and Polars are given to reach the store (None for a local one): the
        options passed in, plus ``aws_conditional_put`` when it came from the environment.
        Pass them to ``pl.scan_delta(store.uri(name), storage_options=...)``."""
        return dict(self._options) if self.remote else None

    def uri(self, name: str) -> str:
        """The table's path or URL, readable directly with ``pl.scan_delta`` or DuckDB."""
        if self.remote:
            return f"{self.location}/{check_name(name)}"
        return os.path.join(self.location, check_name(name))

    def _delta(self, name: str) -> DeltaTable:
        return DeltaTable(self.uri(name), storage_options=self.storage_options)

    # ---- the store's files: local calls, or deltalake's object-store file system ------------
    # Local paths keep their direct os calls (fast); on object storage a "folder" is a key prefix.
    def _clean(self, exc: BaseException) -> str:
        """``exc``'s message on one line, with the values of secret storage options (keys,
        tokens, passwords; and any signature in a URL) masked: a secret never reaches a
        message or a log."""
        return self._scrub(clean_message(exc))

    def _scrub(self, text: str) -> str:
        for key, value in self._options.items():
            if _SECRET_KEY.search(key) and value:
                text = text.replace(value, "***")
        return re.sub(r"(sig|signature|token)=[^&\s]+", r"\1=***", text, flags=re.I)

    @contextlib.contextmanager
    def _reading(self, name: str) -> Iterator[None]:
        try:
            with super()._reading(name):
                yield
        except StoreError as exc:
            if not self._options:
                raise
            raise StoreError(self._scrub(str(exc))) from None

    def _call(self, action: Callable[[], T]) -> T:
        """An object-store call; its errors become a StoreError naming the store (not the key)."""
        try:
            return action()
        except StoreError:
            raise
        except Exception as exc:  # noqa: BLE001 - any transport or auth error, reported as ours
            raise StoreError(f"{self.location}: cannot reach the store ({_gist(self._clean(exc))}); "
                             f"check the URL, the network and the credentials") from None

    def _handler(self) -> DeltaStorageHandler:
        if self._fs is None:
            self._fs = DeltaStorageHandler(self.location, self._options or None)
        return self._fs

    def _key(self, path: str) -> str:
        """``path`` (the store root or under it) as the object store names it: relative to the root."""
        return path[len(self.location):].lstrip("/")

    def _kind(self, path: str) -> str | None:
        """'file', 'dir' or None (nothing there)."""
        if not self.remote:
            return "dir" if os.path.isdir(path) else "file" if os.path.exists(path) else None
        info = self._call(lambda: self._handler().get_file_info([self._key(path)])[0])
        return {FileType.File: "file", FileType.Directory: "dir"}.get(info.type)

    def _entries(self, path: str) -> dict[str, bool] | None:
        """What folder ``path`` holds: name -> is a folder; None if it is no folder (on object
        storage: no key starts with it)."""
        if not self.remote:
            try:
                with os.scandir(path) as entries:
                    return {e.name: e.is_dir() for e in entries}
            except (FileNotFoundError, NotADirectoryError):
                return None
        found = self._call(lambda: self._handler().get_file_info_selector(
            FileSelector(self._key(path), allow_not_found=True, recursive=False)))
        return {i.path.rsplit("/", 1)[-1]: i.type == FileType.Directory for i in found} or None

    def _sizes(self, paths: list[str], folder: str | None = None) -> list[int | None]:
        """Each file's size in bytes, None if it is not there. On object storage, many files
        under ``folder`` are sized by listing it (a request per thousand) instead of one
        request each."""
        if not self.remote:
            sizes: list[int | None] = []
            for path in paths:
                try:
                    sizes.append(os.path.getsize(path))
                except FileNotFoundError:
                    sizes.append(None)
            return sizes
        if folder is not None and len(paths) > _MANY_FILES:
            listed = self._call(lambda: self._handler().get_file_info_selector(
                FileSelector(self._key(folder), allow_not_found=True, recursive=True)))
            known = {i.path: i.size for i in listed if i.type == FileType.File}
            return [known.get(self._key(p)) for p in paths]
        infos = self._call(lambda: self._handler().get_file_info([self._key(p) for p in paths]))
        return [i.size if i.type == FileType.File else None for i in infos]

    def _read_text(self, path: str) -> str:
        if not self.remote:
            with open(path, encoding="utf-8") as file:
                return file.read()
        return self._call(lambda: self._handler().open_input_stream(self._key(path)).read()).decode()

    def _join(self, *parts: str) -> str:
        return "/".join(parts) if self.remote else os.path.join(*parts)

    # ---- opening and creating ------------------------------------------------------------
    def _state(self, name: str) -> str:
        """'absent', 'delta', 'namespace' (a folder of tables) or 'junk' (anything else)."""
        path = self.uri(name)
        blocker = self._file_in_the_way(name)
        if blocker is not None:
            raise StoreError(f"{path}: {blocker} is a file, not a directory of orca tables")
        kind = self._kind(path)
        if kind is None:
            return "absent"
        if kind == "file":
            return "junk"
        if self._call(lambda: DeltaTable.is_deltatable(path, storage_options=self.storage_options)):
            return "delta"
        entries = {n: d for n, d in (self._entries(path) or {}).items() if n != "_delta_log"}
        if not all(entries.values()):
            return "junk"
        return "namespace" if entries else "absent"

    def _file_in_the_way(self, name: str) -> str | None:
        """The store root or a folder on the way to ``name`` that exists as a file, if any. (On
        object storage a key never stands in the way of keys under it.)"""
        if self.remote:
            return None
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
                with self._reading(name):
                    table = handles[name] = self._refreshed(name, table)
                self._check_log(name, table)
                self._read_lately.add(name)
            return table
        self._check_root()
        # On object storage every probe is a request: a table is opened first, and only what
        # does not open is looked at more closely (absent, a folder of tables, or junk).
        table = self._open_remote(name) if self.remote else None
        state = "delta" if table is not None else self._state(name)
        if state == "junk":  # (or mid-trim by another process, for a moment: look again)
            time.sleep(_TRIM_PAUSE)
            state = self._state(name)
        if state == "junk":
            if self._kind(self._join(self.uri(name), "_delta_log")) == "dir":
                raise StoreError(f"{self.uri(name)}: the commit log has no readable first commit "
                                 f"(version 0) nor a checkpoint; restore the table from a backup, or remove it")
            raise StoreError(f"{self.uri(name)}: holds files that are not a Delta table")
        if state != "delta":
            return None
        with self._reading(name):
            table = table or self._loaded(name)
            config = table.metadata().configuration
            schema = pa.schema(table.schema().to_arrow())
        if config.get("orca.format") not in _FORMATS or "orca.key" not in config:
            raise StoreError(f"{self.uri(name)}: holds a Delta table that orca did not create")
        key = tuple(json.loads(config["orca.key"]))
        needed = [*key, RUN_ID, INVALIDATED_AT] if key else []
        missing = [c for c in needed if c not in schema.names]
        if missing:
            raise StoreError(f"{self.uri(name)}: orca table keyed by {list(key)} lacks the columns "
                             f"{missing}; it was not written by this orca: remove it or move it away")
        self._check_log(name, table)
        if writing:  # (reads check the files of every new snapshot, see _read)
            self._check_files(name, table)
        self._keys_of[name] = key
        handles[name] = table
        if not writing:
            self._read_lately.add(name)
        return table

    def _refreshed(self, name: str, table: DeltaTable) -> DeltaTable:
        """``table`` brought up to date, or loaded again if another process trimmed its log under
        it (deltalake then misses a commit file it had just listed)."""
        try:
            table.update_incremental()
            return table
        except DeltaError as exc:
            if not _log_trimmed(exc):
                raise
        return self._loaded(name)

    def _loaded(self, name: str) -> DeltaTable:
        """Table ``name`` loaded; a load that meets another process's trim is tried again."""
        for attempt in range(_TRIM_TRIES):
            try:
                return self._delta(name)
            except DeltaError as exc:
                if attempt == _TRIM_TRIES - 1 or not _log_trimmed(exc):
                    raise
                time.sleep(_TRIM_PAUSE * (attempt + 1))
        raise AssertionError("unreachable")

    def _open_remote(self, name: str) -> DeltaTable | None:
        try:
            return self._delta(name)
        except Exception:  # noqa: BLE001 - absent or damaged: _state and _reading tell which
            return None

    def _check_root(self) -> None:
        """At the first I/O: refuse a store path that would mix orca's tables with other files."""
        if self._root_checked:
            return
        if self._empty_path:
            raise StoreError(f"the store path is empty: orca would write its tables into the "
                             f"current directory ({self.location}); give a directory, e.g. '.orca'")
        root = self.location
        entries = self._entries(root)
        if entries and MARKER not in entries:
            if not self._holds_orca_tables():
                raise StoreError(
                    f"{root}: is a non-empty directory that is not an orca store (no {MARKER} "
                    f"file, no orca tables); orca will not write beside other files: choose a new "
                    f"or empty directory"
                )
        self._root_checked = True
        for shared in _CHECKED_FIRST:
            self._open(shared)

    def _holds_orca_tables(self) -> bool:
        """Whether the root holds a table orca made (a store written before the marker existed).

        Looks at most three folders deep (``results/<fn>/<hash>``), never into a table."""
        for folder in self._table_folders(depth=3):
            try:
                config = DeltaTable(folder, storage_options=self.storage_options).metadata().configuration
            except Exception:  # noqa: BLE001 - unreadable: not evidence of an orca store
                config = {}
            if config.get("orca.format") in _FORMATS:
                return True
        return False

    def _table_folders(self, depth: int | None = None) -> Iterator[str]:
        """The folders under the root that hold a ``_delta_log`` folder (never looking into
        them), at most ``depth`` folders deep."""
        pending = [(self.location, 0)]
        while pending:
            folder, level = pending.pop()
            entries = self._entries(folder) or {}
            if entries.get("_delta_log"):
                yield folder
            elif depth is None or level < depth:
                pending.extend((self._join(folder, n), level + 1) for n, d in entries.items() if d)

    def _write_marker(self) -> None:
        """Make the root and mark it an orca store (before this store object's first commit); a
        read-only or forbidden location fails here at once, not after retries."""
        self._check_safe()
        marker = self._join(self.location, MARKER)
        if self._marked or self._kind(marker) == "file":
            self._marked = True
            return
        self._check_root()  # never mark a directory that is not a store
        if self.remote:
            # (no folders to make; a marker written twice by racing writers says the same thing)
            frame = pl.LazyFrame({"orca.format": [FORMAT]})
            try:
                frame.sink_ndjson(marker, storage_options=self.storage_options, check_extension=False)
            except Exception as exc:  # noqa: BLE001 - any transport or auth error
                if _is_unwritable(exc):
                    raise StoreError(self._unwritable(exc)) from None
                raise StoreError(f"{self.location}: cannot write the store marker {MARKER} "
                                 f"({self._clean(exc)})") from None
            self._marked = True
            return
        try:
            os.makedirs(self.location, exist_ok=True)
            with open(marker, "x") as file:
                file.write(json.dumps({"orca.format": FORMAT}) + "\n")
        except FileExistsError:
            pass  # another process marked it first
        except OSError as exc:
            raise StoreError(self._unwritable(exc)) from None
        self._marked = True

    def _check_safe(self) -> None:
        """Refuse to commit to S3 without conditional writes: deltalake would then commit by
        overwriting, and of two writers committing the same version one commit would vanish."""
        if self._scheme not in _S3_SCHEMES:
            return
        mode = _option(self._options, _CONDITIONAL_PUT)
        if mode is None or mode.lower() != "etag":
            raise StoreError(
                f"{self.location}: orca commits to S3 only with conditional writes, so that two "
                f"writers can never overwrite each other's commit; set the storage option "
                f"aws_conditional_put='etag' (or the environment variable AWS_CONDITIONAL_PUT=etag; "
                f"AWS S3, MinIO and Cloudflare R2 support it). Reads work without it"
                + (f" (aws_conditional_put is {mode!r})" if mode is not None else ""))

    def _unwritable(self, exc: BaseException) -> str:
        return (f"{self.location}: cannot write to the store ({self._clean(exc)}); it is "
                f"read-only or not yours: reads still work, use a writable path to compute")

    def _check_log(self, name: str, table: DeltaTable) -> None:
        """Refuse a table with an empty commit file: deltalake reads it as a commit that did
        nothing (or stops before it), so its rows would vanish silently. Each commit file is
        checked once (a stat) per store object. (A commit file with bad content makes the load
        itself fail.) On object storage, where each check is a request, the file after the
        latest version is checked once per version, not at every read."""
        log = self._join(self.uri(name), "_delta_log")
        # (commits are written atomically: an empty file is never one being written)
        following = self._join(log, f"{table.version() + 1:020d}.json")
        # (on a first look, from the latest checkpoint: deltalake reads no commit file before it,
        # and a trimmed log holds none)
        checked = self._log_checked.get(name)
        versions = range((self._checkpointed(name) if checked is None else checked) + 1, table.version() + 1)
        paths = [self._join(log, f"{v:020d}.json") for v in versions]
        if not (self.remote and self._log_checked.get(name) == table.version()):
            paths.append(following)
        if not paths:
            return
        for path, size in zip(paths, self._sizes(paths), strict=True):
            if size == 0:  # (None: no next commit, or one cleaned up after a checkpoint)
                self._damaged_commit(name, path)
        self._log_checked[name] = table.version()

    def _damaged_commit(self, name: str, path: str) -> None:
        raise StoreError(
            f"{self.uri(name)}: commit file {path} is empty, so the rows it committed would be lost; "
            f"restore it from a backup, or remove the table (orca recomputes what it held)"
        )

    def _create(self, name: str, schema: pa.Schema, key: tuple[str, ...]) -> DeltaTable:
        if self._state(name) not in ("absent", "delta"):
            raise StoreError(f"{self.uri(name)}: cannot create a table over existing files")
        try:
            DeltaTable.create(
                self.uri(name),
                schema,
                storage_options=self.storage_options,
                mode="error",
                description="orca table",
                configuration={"orca.format": FORMAT, "orca.key": json.dumps(list(key)),
                               **({"delta.logRetentionDuration": _SHORT_LOG} if short_log(name) else {})},
                raise_if_key_not_exists=False,
                commit_properties=self._mark(),
            )
        except (DeltaError, OSError) as exc:  # most likely another process created it first
            if _is_unwritable(exc):
                raise StoreError(self._unwritable(exc)) from None
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
        self._check_safe()
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
            except DeltaError as exc:
                if not _log_trimmed(exc):
                    raise
                last = exc
                (self._open_tables if handles is None else handles).pop(name, None)
        raise StoreError(
            f"{self.uri(name)}: commit failed after {self.options.max_retries} tries "
            f"(the rows stay pending; flush again later): {self._clean(last) if last else ''}"
        )

    def _write(self, name: str, attempt: Callable[[], T]) -> T:
        """:meth:`_retry` a write to ``name``; a failure (a Rust panic included) raises StoreError
        naming the table."""
        try:
            return self._retry(name, attempt, self._write_tables)
        except (DeltaError, OSError, pa.ArrowException) as exc:
            if _is_unwritable(exc):
                raise StoreError(self._unwritable(exc)) from None
            raise StoreError(f"{self.uri(name)}: write failed: {self._clean(exc)}") from None
        except BaseException as exc:
            if not is_panic(exc):
                raise
            raise StoreError(f"{self.uri(name)}: write failed: {self._clean(exc)}") from None

    # ---- writes ------------------------------------------------------------------------------
    def _commit(self, name: str, data: pa.Table, key: tuple[str, ...]) -> None:
        self._write_marker()

        def attempt() -> None:
            table = self._open(name, writing=True) or self._create(name, data.schema, key)
            if trims_log(name):  # a handle older than the log's last trim could not commit (#31)
                table.update_incremental()
            check_key(self.uri(name), key, self._keys_of[name])
            schema = pa.schema(table.schema().to_arrow())
            rows = conform(_as_stored(data, _legacy_ids(name, table)), schema, self.uri(name),
                           evolve=name in self._evolving)
            self._append(table, name, rows, _layout(rows.schema, key, rows), self._mark(),
                         evolve=len(rows.schema) > len(schema))

        self._write(name, attempt)

    def _append(self, table: DeltaTable, name: str, rows: pa.Table, layout: Layout, properties: CommitProperties,
                *, evolve: bool = False) -> int | None:
        """Commit ``rows`` (in ``table``'s schema, or adding columns to it if ``evolve``) to
        ``table`` as one appended file, and return the commit's version: written by pyarrow in
        a local table that allows it (:mod:`orca.stores.parquet_files`), else by deltalake. None
        if the commit was made but its version could not be read back (the handle is dropped)."""
        if self.remote or evolve or not writable(table):
            write_deltalake(table, rows, mode="append", writer_properties=layout.writer_properties(),
                            commit_properties=properties, schema_mode="merge" if evolve else None)
            return table.version()
        version = append_file(table, self.uri(name), rows, layout, properties)
        if version is None:
            self._write_tables.pop(name, None)
        return version

    def invalidate(self, name: str, keys: pl.Series | pa.Array) -> int:
        """Mark live rows whose key is in ``keys`` invalidated (one merge); return rows hit.

        Holds the store's maintenance lease (see :meth:`upkeep`): a compaction rewriting the
        same files at the same time would bring the invalidated rows back to life."""
        if self._open(check_name(name)) is None:
            return 0
        with self._maintenance(wait=_LEASE_WAIT) as held:
            if not held:
                raise StoreError(f"{self.uri(name)}: cannot invalidate: another process has held the store's "
                                 f"maintenance lease (compacting) for over {_LEASE_WAIT:.0f} s; try again")
            return self._invalidate(name, keys)

    def _invalidate(self, name: str, keys: pl.Series | pa.Array) -> int:
        table = self._open(name)
        column = single_key(self.uri(name), self._keys_of[name])
        legacy = _legacy_ids(name, table)
        dtype = pl.Binary if column in legacy else _dtype(table, column)
        now = datetime.datetime.now(datetime.UTC)
        source = _as_stored(key_frame(keys, column, dtype).to_arrow(), legacy)
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
        """Rewrite small files into larger ones; every row (live or not) is kept. Holds the
        store's maintenance lease (waiting for it if another process compacts). Asset and claims
        tables are left alone (see :func:`compactable`): their own writes keep them few-filed."""
        if compactable(name) and self._open(check_name(name)) is not None:
            with self._maintenance(wait=_LEASE_WAIT) as held:
                if not held:
                    raise StoreError(f"{self.uri(name)}: cannot compact: another process has held the store's "
                                     f"maintenance lease for over {_LEASE_WAIT:.0f} s; try again")
                self._compact(name)

    def settle(self, name: str) -> int:
        """Delete the live rows of keyed table ``name`` that reads pass over -- of a key's several
        live rows, all but the first committed (see ``docs/stores.md``) -- and return how many.
        Holds the store's maintenance lease. Upkeep does it before trimming a log; do it before a
        ``vacuum``, which removes the replaced files the dedup rule reads to order such rows (a
        compaction or an invalidation leaves them, so they need none)."""
        if self._open(check_name(name)) is None or not self._keys_of.get(name):
            return 0
        with self._maintenance(wait=_LEASE_WAIT) as held:
            if not held:
                raise StoreError(f"{self.uri(name)}: cannot settle: another process has held the store's "
                                 f"maintenance lease for over {_LEASE_WAIT:.0f} s; try again")
            return self._settle(name)

    def _compact(self, name: str) -> None:
        def compact() -> None:
            table = self._open(name)
            schema = pa.schema(table.schema().to_arrow())
            table.optimize.compact(writer_properties=_writer_properties(schema, self._keys_of[name]))

        self._retry(name, compact)

    @contextlib.contextmanager
    def _maintenance(self, wait: float) -> Iterator[bool]:
        """Hold the store's maintenance lease (yields False if another holder kept it ``wait`` s).

        deltalake 1.6 commits an ``optimize`` over a concurrent commit that removed the same files
        (``tests/test_upkeep.py``): two compactions, or a compaction and an invalidation, would
        both commit and rows would come back (twice, or un-invalidated). Only compaction and
        invalidation remove files of the tables compaction touches, so they take this lease: a
        claim in the ``maintenance`` table, decided by a Delta merge. Appends never conflict with
        a compaction. A holder that dies frees it when its lease expires."""
        owner = f"{self.writer_id}-{uuid.uuid4().hex[:8]}"
        deadline = time.monotonic() + wait
        while not self.claim(MAINTENANCE, 0, 1, owner, _LEASE_SECONDS):
            if time.monotonic() >= deadline:
                yield False
                return
            time.sleep(_LEASE_POLL)
        try:
            yield True
        finally:
            self.update_claim(MAINTENANCE, 0, 1, owner, lease_seconds=0)  # expired now: free

    # ---- reads -------------------------------------------------------------------------------
    def _read(self, name: str) -> tuple[pl.LazyFrame, tuple[str, ...]] | None:
        table = self._open(name)
        if table is None:
            return None
        self._check_files(name, table)
        self._read_version[name] = table.version()
        with self._reading(name):
            return _as_read(pl.scan_delta(table), _legacy_ids(name, table)), \
                self._keys_of[name]

    def _check_files(self, name: str, table: DeltaTable) -> None:
        """Every data file of the snapshot exists with the size its commit recorded (checked
        once per file: a stat each). A truncated file would otherwise crash the reader."""
        checked = self._checked_files.setdefault(name, set())
        with self._reading(name):
            adds = pa.table(table.get_add_actions(flatten=True)).select(["path", "size_bytes"])
        root = self.uri(name)
        todo = [(p, s) for p, s in zip(adds["path"].to_pylist(), adds["size_bytes"].to_pylist(), strict=True)
                if p not in checked]
        fulls = [self._join(root, urllib.parse.unquote(p)) for p, _ in todo]
        for (path, size), full, actual in zip(todo, fulls, self._sizes(fulls, root), strict=True):
            if actual is None:
                raise StoreError(f"{root}: data file {full} is missing; restore it from a backup, "
                                 f"or remove the table (orca recomputes what it held)") from None
            if actual != size:
                raise StoreError(f"{root}: data file {full} is {actual} bytes, its commit recorded "
                                 f"{size} (truncated or overwritten); restore it from a backup, or "
                                 f"remove the table") from None
            checked.add(path)

    def _first_commits(self, name: str, pairs: pl.DataFrame) -> pl.DataFrame:
        """Learns each pair's commit from the data files that appends added (read from the
        commit log; files later rewritten by compaction or invalidation stay on disk until
        ``orca maintain`` vacuums them -- after that their rows count as older than every known
        one). Paid only when a key has several live rows; results are remembered per store
        object: a pair's commit changes only when it is appended again, which only the log read
        since it was looked up can show."""
        key = list(self._keys_of[name])
        on = [*key, RUN_ID]
        known = self._commit_order.get(name)
        appended = self._appended_files(name)  # (one listing for both searches, and the stamp below)
        parsed = self._added[name].parsed
        todo = pairs if known is None else pairs.join(known, on=on, how="anti", nulls_equal=True)
        found = [self._find_commits(name, todo, on, appended).filter(pl.col(COMMIT).is_not_null())
                 ] if not todo.is_empty() else []
        if known is not None:
            # A pair known already may have been appended again since it was looked up (its row
            # invalidated, then the same run appending the key again): its latest append is the
            # live row's commit, so the log read since is searched for it.
            again = known.join(pairs, on=on, how="semi", nulls_equal=True)
            if not again.is_empty():  # (null: not appended again; the max below keeps the known commit)
                found.append(self._find_commits(name, again.select(on), on, appended,
                                                after=int(again[_CHECKED].min())))
        if found:
            added = pl.concat(found).with_columns(pl.lit(parsed, pl.Int64).alias(_CHECKED))
            known = added if known is None else pl.concat([known, added], how="vertical_relaxed").group_by(on).agg(
                pl.col(COMMIT).max(), pl.col(_CHECKED).max())
            self._commit_order[name] = known
        commits = pairs.join(known.drop(_CHECKED), on=on, how="left", nulls_equal=True)
        if commits[COMMIT].null_count():  # (rare: only keys with several live rows get here)
            return self._as_settled(name, commits, on)
        return commits

    def _as_settled(self, name: str, commits: pl.DataFrame, on: list[str]) -> pl.DataFrame:
        """``commits`` (some unknown) corrected by what the table holds now. A read whose snapshot
        predates another process's settle and trim cannot learn the commits the trim removed
        (a commit file may even vanish as it reads); the settle left, of each key's rows, the
        first committed live and deleted the rest. So for a key of which some rows are still live
        now and some are gone, the gone ones rank last; every other key keeps what the log said
        (if nothing moved, the result is exactly the log's). Read through a handle of its own:
        the caller's frame is bound to the shared one and must stay at its snapshot."""
        key = on[:-1]
        with self._reading(name):
            fresh = self._loaded(name)
            now = _as_read(pl.scan_delta(fresh), _legacy_ids(name, fresh))
            live = (now.filter(pl.col(INVALIDATED_AT).is_null())
                    .join(commits.lazy().select(*key).unique(), on=key, how="semi", nulls_equal=True)
                    .select(*on).unique().collect())
        marked = commits.join(live.with_columns(pl.lit(True).alias("__orca_live")), on=on, how="left",
                              nulls_equal=True).with_columns(pl.col("__orca_live").fill_null(False))
        settled = pl.col("__orca_live").any().over(key) & (~pl.col("__orca_live")).any().over(key)
        return marked.with_columns(
            pl.when(settled & ~pl.col("__orca_live")).then(pl.lit(2**62, pl.Int64))
            .otherwise(pl.col(COMMIT).cast(pl.Int64)).alias(COMMIT)
        ).drop("__orca_live")

    def _find_commits(self, name: str, pairs: pl.DataFrame, on: list[str], appended: dict[str, int],
                      after: int = -1) -> pl.DataFrame:
        """``pairs`` with the version of the latest append (after version ``after``) that added
        each, null if none; ``appended``: :meth:`_appended_files`."""
        root = self.uri(name)
        appended = {self._join(root, p): v for p, v in appended.items() if v > after}
        sizes = self._sizes(list(appended), root)
        files = {p: v for (p, v), size in zip(appended.items(), sizes, strict=True) if size is not None}
        if not files:
            return pairs.with_columns(pl.lit(None, pl.Int64).alias(COMMIT))
        versions = pl.DataFrame({"__orca_file": list(files), COMMIT: list(files.values())},
                                schema={"__orca_file": pl.String, COMMIT: pl.Int64})
        rows = pl.scan_parquet(list(files), include_file_paths="__orca_file",
                               storage_options=self.storage_options).select(*on, "__orca_file")
        rows = _as_read(rows, tuple(c for c in on if pairs.schema[c] == pl.Binary
                                    and rows.collect_schema()[c] == pl.String))
        rows = rows.join(pairs.lazy(), on=on, how="semi", nulls_equal=True).join(versions.lazy(), on="__orca_file")
        # The latest append of a pair: an earlier one was invalidated before it was appended
        # again (the driver never appends a live row's key twice in one run).
        latest = self.collect(name, rows.group_by(on).agg(pl.col(COMMIT).max()))
        return pairs.join(latest, on=on, how="left", nulls_equal=True)

    def _appended_files(self, name: str) -> dict[str, int]:
        """Data file (relative path) -> version of the append (``WRITE``) commit that added it,
        from every commit file still in ``_delta_log`` (each read once). Files that compaction
        or invalidation wrote hold rows appended earlier and are left out. Appends whose commit
        file is gone (trimmed after a checkpoint, see _trim) are unknown: their rows
        count as older than every known one."""
        added = self._added.setdefault(name, _Added())
        log = self._join(self.uri(name), "_delta_log")
        new = sorted(int(m[1]) for e in self._entries(log) or {} if (m := _LOG_FILE.match(e)) and int(m[1]) > added.parsed)
        with self._reading(name):
            for version in new:
                text = self._read_commit(self._join(log, f"{version:020d}.json"))
                if text is None:  # trimmed since the listing (see _trim): its rows count as older
                    added.parsed = version
                    continue
                actions = [json.loads(line) for line in text.splitlines() if line.strip()]
                if any(a.get("commitInfo", {}).get("operation") == "WRITE" for a in actions):
                    for action in actions:
                        if "add" in action:
                            added.versions[urllib.parse.unquote(action["add"]["path"])] = version
                added.parsed = version
        return added.versions

    def _read_commit(self, path: str) -> str | None:
        """The text of commit file ``path``, None if it is gone."""
        try:
            return self._read_text(path)
        except (FileNotFoundError, StoreError):
            if self._kind(path) is not None:
                raise
            return None

    def keys(self, name: str) -> pl.Series | None:
        """Distinct live keys, cached: only data files added since the last call are read."""
        table = self._open(check_name(name))
        if table is None:
            return None
        column = single_key(self.uri(name), self._keys_of[name])
        cache = self._key_caches.get(name)
        if cache is not None and cache.version == table.version():
            return cache.keys
        self._check_files(name, table)
        files = frozenset(table.file_uris())
        if cache is None or not cache.files <= files:  # files removed: rebuild from scratch
            cache = None
        legacy = _legacy_ids(name, table)
        keys = cache.keys if cache else pl.Series(column, [], pl.Binary if column in legacy else _dtype(table, column))
        rows = cache.rows if cache else 0
        new = sorted(files - cache.files) if cache else sorted(files)
        if new:
            frame = _as_read(pl.scan_parquet(new, storage_options=self.storage_options).select(column, INVALIDATED_AT),
                             tuple(c for c in legacy if c == column))
            live = self.collect(name, frame.filter(pl.col(INVALIDATED_AT).is_null()).select(column))
            rows += live.height
            keys = pl.concat([keys.to_frame(), live]).unique().to_series()
        self._key_caches[name] = _KeyCache(table.version(), files, keys, rows)
        return keys

    def _copies(self, name: str, live: pl.LazyFrame, key: tuple[str, ...]) -> pl.DataFrame | None:
        """Asks the key cache first: as many live rows as distinct keys means no copies (then a
        repeated scan costs nothing extra; the first costs what ``keys()`` does)."""
        if len(key) == 1:
            keys = self.keys(name)
            cache = self._key_caches.get(name)
            if cache is not None and cache.version == self._read_version.get(name) and cache.rows == len(keys):
                return None
        return super()._copies(name, live, key)

    def exists(self, name: str) -> bool:
        return self._open(check_name(name)) is not None

    def upkeep(self, names: Sequence[str]) -> None:
        """Keep the cost of a run bounded as runs accumulate: compact a table once it has
        ``compact_files`` files (reading a table costs per file), then checkpoint its log every
        ``checkpoint_every`` versions (opening it replays a bounded log) and remove the commit
        files the checkpoint covers (:meth:`_trim`; every table but assets, see :func:`trims_log`):
        deltalake reads a table's whole commit-log folder on every commit.

        Compaction holds the store's maintenance lease (:meth:`_maintenance`), as invalidation
        does, so the two never overlap: deltalake 1.6's ``optimize`` does not detect a concurrent
        commit that removed the same files. A table with duplicate rows is settled
        (:meth:`_settle`) under the lease before its log is trimmed. If another process holds the
        lease, these wait for a later run. Asset and claims tables are never compacted here
        (their merges do not take the lease). Best effort: a failure is a warning, the next run
        tries again.
        """
        due, checkpoints = [], []
        for name in names:
            try:
                table = self._upkeep_view(check_name(name))
                if table is None:
                    continue
                if compactable(name) and len(table.file_uris()) >= self.options.compact_files:
                    due.append(name)
                if table.version() - self._checkpointed(name) >= self.options.checkpoint_every:
                    checkpoints.append(name)
            except (DeltaError, OSError) as exc:  # upkeep is best effort: the next run tries again
                warnings.warn(f"{self.uri(name)}: upkeep skipped: {clean_message(exc)}", stacklevel=2)
        self._read_lately.clear()  # (the next upkeep trusts only what is read after this one)
        if due:
            with self._maintenance(wait=0) as held:  # another process compacts: next time
                for name in due if held else ():
                    try:
                        self._compact(name)
                    except StoreError as exc:
                        warnings.warn(f"{self.uri(name)}: compaction skipped: {exc}", stacklevel=2)
        trim = []
        for name in [n for n in names if n in checkpoints or n in due]:  # (a compaction is a version)
            table = self._open(name, writing=True)
            if table is None:
                continue
            try:
                table.update_incremental()
                previous = self._checkpointed(name)
                if table.version() - previous >= self.options.checkpoint_every:
                    table.create_checkpoint()
                    if trims_log(name):
                        trim.append((name, table.version(), previous))
            except (DeltaError, OSError) as exc:
                warnings.warn(f"{self.uri(name)}: upkeep skipped: {clean_message(exc)}", stacklevel=2)
        # Only a table holding duplicate rows is settled first, under the lease (if another process
        # holds it, the next checkpoint trims what this one covers; see _trim_or_warn).
        unsettled = []
        for name, checkpoint, previous in trim:
            try:
                copies = self._has_copies(name)
            except StoreError as exc:
                warnings.warn(f"{self.uri(name)}: commit log not trimmed: {exc}", stacklevel=2)
                continue
            if copies:
                unsettled.append((name, checkpoint, previous))
            else:
                self._trim_or_warn(name, checkpoint)
        if unsettled:
            with self._maintenance(wait=0) as held:
                for name, checkpoint, previous in unsettled if held else ():
                    self._trim_or_warn(name, checkpoint, settle_before=previous)

    def _upkeep_view(self, name: str) -> DeltaTable | None:
        """The handle :meth:`upkeep` decides on: this store object's write handle brought up to
        date, or, for a table it only read since the last upkeep (in this run), its read handle
        as read -- loading a write handle for each costs ~10-25 ms a table, most of a no-change
        rerun's upkeep; a commit another process made since is that process's to upkeep (or the
        next run's) -- else a write handle loaded now. What is due is done on a write handle
        brought up to date."""
        table = self._write_tables.get(name)
        if table is None and name in self._read_lately and name in self._open_tables:
            return self._open_tables[name]
        table = table or self._open(name, writing=True)
        if table is not None:
            table.update_incremental()
        return table

    def _has_copies(self, name: str) -> bool:
        """Whether keyed table ``name`` has a key with several live rows (the key cache answers)."""
        return bool(self._keys_of.get(name)) and self._live_copies(name) is not None

    def _live_copies(self, name: str) -> tuple[pl.LazyFrame, tuple[str, ...], pl.DataFrame] | None:
        """The live rows of keyed table ``name``, its key and the (key, ``__run_id``) pairs of keys
        with several live rows; None if there are none."""
        found = self._read(name)
        if found is None:
            return None
        frame, key = found
        live = frame.filter(pl.col(INVALIDATED_AT).is_null())
        copies = self._copies(name, live, key)
        return None if copies is None or copies.is_empty() else (live, key, copies)

    def _trim_or_warn(self, name: str, checkpoint: int, *, settle_before: int | None = None) -> None:
        """Trim ``name``'s log before ``checkpoint``; with ``settle_before``, settle it first, and
        if that deleted rows trim only before ``settle_before`` (the previous checkpoint): reads
        whose snapshot predates the settle still hold both rows and read the log to order them
        (they cope without it, see _as_settled, but this keeps that rare)."""
        try:
            if settle_before is not None and self._settle(name):
                checkpoint = settle_before
            self._trim(name, checkpoint)
        except (StoreError, DeltaError, OSError) as exc:
            warnings.warn(f"{self.uri(name)}: commit log not trimmed: {clean_message(exc)}", stacklevel=2)

    def _trim(self, name: str, checkpoint: int) -> None:
        """Remove the commit files of table ``name`` before version ``checkpoint`` (a checkpoint
        holds everything they said), with their checksums and older checkpoints. A keyed table
        must hold no duplicate rows when this is called (see upkeep).

        What is lost is the table's history before ``checkpoint``: nobody reads these tables at an
        earlier version (their rows carry their own history: ``__run_id``, times, invalidation),
        and the dedup rule, which orders duplicate rows by the commit that appended them, stops
        needing it once the duplicates are settled (:meth:`_settle`, after the checkpoint, so
        that every row the trim makes unknown is seen). A handle loaded before the trim reloads
        when it next commits (see _retry).
        """
        log = self._join(self.uri(name), "_delta_log")
        for entry in self._entries(log) or {}:
            found = _LOGGED.match(entry)
            if found and int(found[1]) < checkpoint:
                self._remove(self._join(log, entry))

    def _remove(self, path: str) -> None:
        """Delete file ``path`` (gone already: nothing to do)."""
        if not self.remote:
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            return

        def delete() -> None:
            with contextlib.suppress(FileNotFoundError):  # (before _call turns it into a StoreError)
                self._handler().delete_file(self._key(path))

        self._call(delete)

    def _settle(self, name: str) -> int:
        """Delete the live rows of keyed table ``name`` that the dedup rule passes over (a key with
        several live rows keeps the one committed first, :func:`live_rows`); returns how many.

        Done, under the maintenance lease, before anything that makes the order of commits
        unknown -- a trim of the log, a vacuum of replaced files -- so that the row readers were
        served stays the one served. Several live rows of a key are rare (two processes computing
        one packet at once): the check is what ``keys()`` reads (new files only, once cached).
        """
        found = self._live_copies(name)
        if found is None:
            return 0
        live, key, copies = found
        rows = live.join(copies.lazy().select(*key).unique(), on=list(key), how="semi", nulls_equal=True)
        kept = self.collect(name, live_rows(rows, key, self._first_commits(name, copies).lazy()).select(*key, RUN_ID))
        losers = copies.join(kept, on=[*key, RUN_ID], how="anti", nulls_equal=True)
        if losers.is_empty():
            return 0
        source = _as_stored(losers.to_arrow(), _legacy_ids(name, self._open(name)))
        predicate = " AND ".join([*(f't."{c}" = s."{c}"' for c in [*key, RUN_ID]), f't."{INVALIDATED_AT}" IS NULL'])

        def attempt() -> int:
            merger = self._open(name).merge(source, predicate=predicate, source_alias="s", target_alias="t")
            return int(merger.when_matched_delete().execute()["num_target_rows_deleted"])

        return self._retry(name, attempt)

    def _checkpointed(self, name: str) -> int:
        """The version of the table's latest checkpoint (-1: none, or unreadable), from its
        ``_delta_log/_last_checkpoint`` (on object storage: one request)."""
        path = self._join(self.uri(name), "_delta_log", "_last_checkpoint")
        try:
            return int(json.loads(self._read_text(path))["version"])
        except (OSError, StoreError, ValueError, KeyError):
            return -1

    def ensure(self, name: str, schema: pa.Schema) -> None:
        """Create table ``name`` (unkeyed, empty) if it does not exist, so readers find it."""
        if self._open(check_name(name)) is None:
            self._write_marker()
            try:
                self._retry(name, lambda: self._create(name, schema, ()), self._write_tables)
            except (DeltaError, OSError) as exc:
                if _is_unwritable(exc):
                    raise StoreError(self._unwritable(exc)) from None
                raise StoreError(f"{self.uri(name)}: cannot create the table: {self._clean(exc)}") from None

    def _mark(self) -> CommitProperties:
        return CommitProperties(custom_metadata={_WRITER: self.writer_id})

    def version(self, name: str) -> int | None:
        table = self._open(check_name(name))
        return None if table is None else table.version()

    def table_id(self, name: str) -> str | None:
        """The table's Delta id (``metaData.id``, made when the table is created)."""
        table = self._open(check_name(name))
        return None if table is None else table.metadata().id

    def only_own_commits(self, name: str, since: int | None) -> bool:
        """Reads the commit log after ``since``: orca marks its appends with the store object's id."""
        table = self._open(check_name(name))
        if table is None:
            return True
        latest = table.version()
        since = -1 if since is None else since
        if latest <= since:
            return True
        commits = self._commits_after(table, since, latest)
        return commits is not None and all(c.get(_WRITER) == self.writer_id for c in commits)

    def unchanged_since(self, name: str, since: int | None, until: int | None = None) -> bool:
        """Reads the commit log after ``since`` (up to ``until``, default the latest version):
        only compactions follow."""
        table = self._open(check_name(name))
        if table is None or since is None:
            return table is None and since is None
        latest = table.version()
        end = latest if until is None else until
        if end > latest:
            return False
        if end - since <= 0:
            return end == since
        commits = self._commits_after(table, since, latest)
        return commits is not None and all(c.get("operation") in _NO_DATA_CHANGE for c in commits
                                           if c.get("version", -1) <= end)

    def _commits_after(self, table: DeltaTable, since: int, latest: int) -> list[dict] | None:
        """The commit infos of versions ``since + 1 .. latest``, or None when they cannot be told
        for sure: deltalake 1.6's ``history`` numbers commits wrongly when one lands while it
        reads (delta-rs #4488), so the table must still be at ``latest`` after the read, and
        exactly those versions must come back."""
        try:
            commits = [c for c in table.history(latest - since) if c.get("version", -1) > since]
            table.update_incremental()
        except (DeltaError, OSError):  # an unreadable log: in doubt
            return None
        if table.version() != latest or sorted(c.get("version") for c in commits) != list(range(since + 1, latest + 1)):
            return None
        return commits

    # ---- mutable tables (assets) ------------------------------------------------------------
    def sync_rows(self, name: str, key: str, rows: pa.Table, changed: pl.Series, *,
                  metadata: dict[str, str] | None = None, compare: Sequence[str] = (),
                  trust_since: int | None = None) -> int | None:
        """Make unkeyed table ``name`` hold exactly ``rows`` (one per ``key`` value), in one commit
        that touches only what differs: rows whose key is gone are deleted, new keys and keys in
        ``changed`` (16-byte ids as bytes or as ``UInt128`` keys) are written, and with
        ``compare``, rows whose values in those columns differ from ``rows``'s -- unless the
        table is still at version ``trust_since`` when the merge is planned (the caller knows
        its values then). Returns the new version, or None when nothing differed.

        The difference is computed on the snapshot the merge commits over; a concurrent commit
        makes the merge conflict, and it is computed again on the new snapshot.
        """
        check_name(name)
        self._write_marker()
        custom = {_WRITER: self.writer_id, **(metadata or {})}

        def attempt() -> int | None:
            table = self._open(name, writing=True) or self._create(name, rows.schema, ())
            table.update_incremental()  # the difference is computed on the latest snapshot
            properties = _synced(table, custom)
            schema = pa.schema(table.schema().to_arrow())
            # A table written before ids were binary gets rows, and compares keys, in its own form.
            legacy = _legacy_ids(name, table)
            wanted = changed if key not in legacy else _hex_ids(changed)
            data = conform(_as_stored(rows, legacy), schema, self.uri(name))
            names = pa.schema(table.schema().to_arrow()).names
            values = () if trust_since is not None and table.version() == trust_since else compare
            existing = pl.scan_delta(table).select(key, *(c for c in values if c in names)).collect()
            plan = sync_plan(existing if values else existing[key], data, key, wanted)
            existing = existing[key]
            delete, upsert, updated = plan.delete, plan.upsert, plan.updated
            if delete.len() == 0 and upsert.num_rows == 0:
                return None
            if len(table.file_uris()) >= self.options.compact_files or 2 * delete.len() > existing.len():
                # Every merge adds files: once there are many, every row is rewritten (few files),
                # so reading and merging the table stay cheap run after run. When most rows go
                # (the input shrank), the same merge is cheaper too: its source is the few rows
                # that stay, where a delete list would be a source as large as the table.
                counts = {"orca.inserted": str(upsert.num_rows - updated), "orca.updated": str(updated),
                          "orca.deleted": str(delete.len())}
                replace_rows(table, data, key, _synced(table, {**custom, **counts}))
                return table.version()
            if delete.len() == 0 and not updated:
                # Only new keys (e.g. a first materialisation): an append, ~0.35 s per million rows
                # cheaper than an insert-only merge. It conflicts with a concurrent sync all the
                # same, through the sync transaction both commits carry (see _synced).
                version = self._append(table, name, upsert, _layout(upsert.schema, (key,), upsert),
                                       _synced(table, {**custom, "orca.inserted": str(upsert.num_rows)}))
                if version is None:  # (never planned and committed again: the rows are in)
                    raise StoreError(f"{self.uri(name)}: the rows were committed, but the commit's version could "
                                     "not be read back (another process changed the commit log meanwhile)")
                return version
            source = pa.concat_tables([_marked(upsert, "upsert"), _deletions(delete.to_arrow(), data.schema, key)])
            _upsert_and_delete(table, source, key, data.schema, properties)
            return table.version()

        return self._write(name, attempt)

    def sync_staged(self, name: str, key: str, staged: Callable[[], pa.RecordBatchReader], staged_keys: pl.Series,
                    delete: pl.Series, *, since: int, metadata: dict[str, str] | None = None) -> int | None:
        """:meth:`sync_rows` for rows that do not fit in memory, planned by the caller against
        version ``since`` of unkeyed table ``name`` (create it first, e.g. with :meth:`ensure`): delete the rows whose
        ``key`` is in ``delete`` and write the rows ``staged()`` streams (their keys:
        ``staged_keys``; they replace rows with those keys), in one merge streamed from
        ``staged()``. Returns the new version, or None, writing nothing, if the table is no
        longer at ``since`` (another writer moved it, even while the merge ran: the plan no
        longer holds)."""
        check_name(name)
        self._write_marker()
        custom = {_WRITER: self.writer_id, **(metadata or {}), "orca.deleted": str(delete.len())}

        def attempt() -> int | None:
            reader = staged()
            table = self._open(name, writing=True)
            if table is not None:
                table.update_incremental()
            if table is None or table.version() != since:
                reader.close()
                return None
            properties = _synced(table, custom)
            schema = pa.schema(table.schema().to_arrow())
            legacy = _legacy_ids(name, table)
            gone = _hex_ids(delete).to_arrow() if key in legacy else keys_binary(delete)

            def batches() -> Iterator[pa.RecordBatch]:
                for batch in reader:
                    rows = conform(_as_stored(pa.Table.from_batches([batch], reader.schema), legacy), schema,
                                   self.uri(name))
                    yield from _marked(rows, "upsert").to_batches()
                if len(gone):
                    yield from _deletions(gone, schema, key).to_batches()

            source_schema = schema.append(pa.field(_OP, pa.large_string()))
            _upsert_and_delete(table, pa.RecordBatchReader.from_batches(source_schema, batches()), key, schema,
                               properties)
            return table.version()

        return self._write(name, attempt)

    def delete_rows(self, name: str, key: str, keys: pl.Series, *, metadata: dict[str, str] | None = None) -> int:
        """Delete the rows of unkeyed table ``name`` whose ``key`` is in ``keys`` (one merge);
        returns how many (an absent table: 0)."""
        if self._open(check_name(name)) is None or len(keys) == 0:
            return 0
        custom = {_WRITER: self.writer_id, **(metadata or {})}

        def attempt() -> int:
            table = self._open(name, writing=True)
            table.update_incremental()
            properties = _synced(table, custom)
            legacy = _legacy_ids(name, table)
            dtype = pl.Binary if key in legacy else _dtype(table, key)
            source = _as_stored(key_frame(keys, key, dtype).to_arrow(), legacy)
            metrics = (table.merge(source, predicate=f't."{key}" = s."{key}"', source_alias="s", target_alias="t",
                                   commit_properties=properties).when_matched_delete().execute())
            return int(metrics.get("num_target_rows_deleted", 0))

        return self._retry(name, attempt, self._write_tables)

    def scan_version(self, name: str, *, version: int | None = None,
                     as_of: datetime.datetime | None = None) -> pl.LazyFrame | None:
        """Table ``name`` as of a version, or of the version current at ``as_of`` (time travel)."""
        if self._open(check_name(name)) is None:
            return None
        def too_old() -> StoreError:
            asked = f"version {version}" if version is not None else f"the version current at {as_of}"
            kept = "(Delta keeps an asset's commit log 30 days)" if not trims_log(name) else \
                "(upkeep trims every table's commit log but the assets' once a checkpoint covers it)"
            return StoreError(f"{self.uri(name)}: {asked} is older than the table's commit log reaches {kept}; "
                              f"the table itself is fine")

        with self._reading(name):
            table = self._loaded(name)
            try:
                if version is not None or as_of is not None:
                    table.load_as_version(version if version is not None else as_of)
            except DeltaError as exc:
                if not _log_trimmed(exc):
                    raise
                raise too_old() from None
        if version is None and as_of is not None:
            # A time older than the log's first commit loads that commit, with no error (a naive
            # time is UTC, as deltalake reads it).
            reached = self._committed_at(name, table.version())
            utc = as_of if as_of.tzinfo is not None else as_of.replace(tzinfo=datetime.UTC)
            if reached is not None and reached > utc.timestamp():
                raise too_old()
        return _as_read(pl.scan_delta(table), _legacy_ids(name, table))

    def _committed_at(self, name: str, version: int) -> float | None:
        """When version ``version`` of ``name`` was committed (seconds since the epoch), from its
        commit file; None if that file is gone."""
        text = self._read_commit(self._join(self.uri(name), "_delta_log", f"{version:020d}.json"))
        for line in (text or "").splitlines():
            info = json.loads(line).get("commitInfo") if line.strip() else None
            if info and info.get("timestamp") is not None:
                return info["timestamp"] / 1000
        return None

    def history(self, name: str, limit: int | None = None) -> list[dict]:
        """One dict per commit of ``name`` (the latest ``limit``): version, time, the run that
        made it and what it reflects (``orca.run``, ``orca.versions`` commit metadata),
        operation, rows inserted, updated and deleted (for merges)."""
        table = self._open(check_name(name))
        if table is None:
            return []
        rows = []
        for c in table.history(limit):
            metrics = c.get("operationMetrics") or {}
            rows.append({"version": c.get("version"),
                         "at": datetime.datetime.fromtimestamp(c.get("timestamp", 0) / 1000, datetime.UTC),
                         "run_id": c.get("orca.run"), "versions": c.get("orca.versions"),
                         "operation": c.get("operation"),
                         # (a merge's metrics, or what sync_rows noted for a rewrite)
                         "inserted": int(c.get("orca.inserted") or metrics.get("num_target_rows_inserted", 0) or 0),
                         "updated": int(c.get("orca.updated") or metrics.get("num_target_rows_updated", 0) or 0),
                         "deleted": int(c.get("orca.deleted") or metrics.get("num_target_rows_deleted", 0) or 0)})
        return rows

    # ---- leases (claimed work) -------------------------------------------------------------
    def claim(self, name: str, chunk: int, of: int, owner: str, lease_seconds: float) -> bool:
        """Take chunk ``chunk`` of ``of`` in claims table ``name`` for ``owner`` if nobody holds
        it (never claimed, or its holder's lease expired) and it is not done; True if taken.

        One Delta merge decides: two workers claiming at once commit concurrently, the loser's
        merge conflicts, is retried on the new version, finds the chunk held and takes nothing.
        """
        now = datetime.datetime.now(datetime.UTC)
        row = pa.Table.from_pylist([{"chunk": chunk, "of": of, "owner": owner, "state": "working",
                                     "claimed_at": now, "expires_at": now + datetime.timedelta(seconds=lease_seconds),
                                     "now": now}], schema=_CLAIM_SOURCE)

        def attempt() -> bool:
            table = self._open(name, writing=True) or self._create(name, _CLAIMS, ())
            table.update_incremental()
            metrics = (table.merge(row, predicate='t."chunk" = s."chunk" AND t."of" = s."of"', source_alias="s",
                                   target_alias="t", commit_properties=self._mark())
                       .when_matched_update(updates={f'"{c}"': f's."{c}"' for c in _CLAIMS.names},
                                            predicate="t.\"state\" = 'working' AND t.\"expires_at\" < s.\"now\"")
                       .when_not_matched_insert(updates={f'"{c}"': f's."{c}"' for c in _CLAIMS.names})
                       .execute())
            return metrics.get("num_target_rows_inserted", 0) + metrics.get("num_target_rows_updated", 0) == 1

        self._write_marker()
        return self._retry(name, attempt, self._write_tables)

    def claims(self, name: str, of: int) -> dict[int, str]:
        """The state (``working`` or ``done``) of each claimed chunk of ``of`` in table ``name``."""
        table = self._read(check_name(name))
        if table is None:
            return {}
        rows = self.collect(name, table[0].filter(pl.col("of") == of).select("chunk", "state"))
        return dict(zip(rows["chunk"].to_list(), rows["state"].to_list(), strict=True))

    def update_claim(self, name: str, chunk: int, of: int, owner: str, *, lease_seconds: float | None = None,
                     done: bool = False) -> bool:
        """Renew ``owner``'s lease on a chunk (``lease_seconds`` from now) or mark it done; False
        if ``owner`` no longer holds it (its lease expired and another worker took it over)."""
        now = datetime.datetime.now(datetime.UTC)
        expires = now + datetime.timedelta(seconds=lease_seconds or 0)
        row = pa.Table.from_pylist([{"chunk": chunk, "of": of, "owner": owner, "expires_at": expires}],
                                   schema=pa.schema([_CLAIMS.field(c) for c in ("chunk", "of", "owner", "expires_at")]))
        updates = {'"state"': "'done'"} if done else {'"expires_at"': 's."expires_at"'}

        def attempt() -> bool:
            table = self._open(name, writing=True)
            if table is None:
                return False
            table.update_incremental()
            metrics = (table.merge(row, predicate='t."chunk" = s."chunk" AND t."of" = s."of" AND t."owner" = s."owner"',
                                   source_alias="s", target_alias="t", commit_properties=self._mark())
                       .when_matched_update(updates=updates, predicate="t.\"state\" = 'working'").execute())
            return metrics.get("num_target_rows_updated", 0) == 1

        return self._retry(name, attempt, self._write_tables)

    def tables(self, prefix: str = "") -> list[str]:
        """Names of the Delta tables under the store whose name starts with ``prefix``."""
        root = len(self.location) + 1
        found = [folder[root:].replace(os.sep, "/") for folder in self._table_folders()]
        return sorted(n for n in found if n.startswith(prefix) and n)


_CLAIMS = pa.schema([("chunk", pa.int64()), ("of", pa.int64()), ("owner", pa.large_string()),
                     ("state", pa.large_string()), ("claimed_at", pa.timestamp("us", tz="UTC")),
                     ("expires_at", pa.timestamp("us", tz="UTC"))])
_CLAIM_SOURCE = pa.schema([*_CLAIMS, ("now", pa.timestamp("us", tz="UTC"))])


def _gist(text: str) -> str:
    """The point of an object-store error: the server's error code and message, or the last
    link of the error chain (``a ↳ b ↳ 404 Not Found ↳ <xml>`` -> the code in the XML)."""
    code, message = re.search(r"<Code>(.*?)</Code>", text), re.search(r"<Message>(.*?)</Message>", text)
    if code:
        return f"{code[1]}: {message[1]}" if message else code[1]
    links = [link.strip() for link in text.split("↳") if link.strip() and not link.strip().startswith("<")]
    return links[-1] if links else text


def _option(options: dict[str, str], names: tuple[str, ...]) -> str | None:
    """The value of the first of ``names`` in ``options`` (keys in any case), None if absent."""
    lowered = {k.lower(): v for k, v in options.items()}
    return next((lowered[n] for n in names if n in lowered), None)


def _is_unwritable(exc: BaseException) -> bool:
    """Whether ``exc`` says the location cannot be written (read-only, permissions): retrying
    cannot help, so it is reported at once."""
    if isinstance(exc, OSError) and exc.errno in _READ_ONLY:
        return True
    text = str(exc).lower()
    return any(s in text for s in ("read-only file system", "permission denied", "operation not permitted",
                                   "access denied", "accessdenied", "forbidden", "authorizationpermissionmismatch"))


def _layout(schema: pa.Schema, key: tuple[str, ...], data: pa.Table | None = None) -> Layout:
    """Parquet options for one commit (or, without ``data``, a compaction), chosen by measurement
    (see ``docs/stores.md``).

    Key, hash and reference columns never repeat a value and are random: dictionaries cost
    write time, and Snappy does not shrink them; binary ids get no statistics either (no reader
    prunes by them), text and float ones keep theirs (see :mod:`orca.stores.parquet_files`).
    Tables of only such columns and fixed-width values (provenance, most results) are written
    uncompressed; a table with other text, binary or nested columns (user data)
    keeps Snappy. A column of ``data`` whose first values are mostly distinct is written without
    a dictionary too: trying one and falling back costs more than the rest of the column's write.
    """
    bare, plain, compressible = set(), set(), False
    for field in schema:
        name = field.name
        if name in key or name in _UNIQUE_COLUMNS or name.startswith(_UNIQUE_PREFIXES):
            # Binary ids get no statistics at all. Other columns keep them: deltalake's pyarrow
            # dataset (DuckDB's way in) drops a file from every filter on a column without any.
            (bare if pa.types.is_binary(field.type) or pa.types.is_large_binary(field.type) else plain).add(name)
            continue
        if name not in _CONSTANT_COLUMNS and not (pa.types.is_primitive(field.type) or pa.types.is_null(field.type)):
            compressible = True
        if data is not None and _mostly_distinct(data.column(name)):
            plain.add(name)
    return Layout(snappy=compressible, plain=frozenset(plain), bare=frozenset(bare))


def _writer_properties(schema: pa.Schema, key: tuple[str, ...], data: pa.Table | None = None) -> WriterProperties:
    """:func:`_layout` for deltalake's writers."""
    return _layout(schema, key, data).writer_properties()


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


def compactable(name: str) -> bool:
    """Whether table ``name`` may be compacted (``optimize``): every table whose files only
    appends, invalidation and compaction change. Assets (merged by every run) and claims (merged
    to take leases) are changed by merges that do not take the maintenance lease; an asset is
    kept few-filed by :func:`replace_rows` instead."""
    return not name.startswith(("assets/", "claims/")) and name != MAINTENANCE


def trims_log(name: str) -> bool:
    """Whether upkeep removes the commit files of table ``name`` once a checkpoint covers them
    (:meth:`DeltaStore._trim`): every table but assets, which are read at earlier versions
    (time travel) and keep Delta's retention (30 days)."""
    return not name.startswith("assets/")


def _log_trimmed(exc: BaseException) -> bool:
    """Whether a deltalake error says commit files were trimmed under a handle or a load (a file
    of ``_delta_log`` it listed is gone)."""
    if not isinstance(exc, DeltaError) or isinstance(exc, CommitFailedError):
        return False
    text = str(exc)
    return any(m in text for m in _TRIMMED) or ("_delta_log" in text and "not found" in text.lower())


def short_log(name: str) -> bool:
    """Whether table ``name`` is made with a short log retention (an hour): claims and the
    maintenance lease, which upkeep does not visit (:func:`trims_log` covers the tables it does),
    so deltalake's own checkpoint (every 100 commits) removes their older commit files."""
    return name == MAINTENANCE or name.startswith("claims/")


_OP = "__orca_op"  # a merge source's column: what each of its rows does ("upsert" or "delete")


def _marked(rows: pa.Table, op: str) -> pa.Table:
    """``rows`` with the merge operation ``op`` for each."""
    return rows.append_column(_OP, pa.repeat(pa.scalar(op, pa.large_string()), rows.num_rows))


def _deletions(keys: pa.Array, schema: pa.Schema, key: str) -> pa.Table:
    """Merge source rows deleting the rows whose ``key`` is in ``keys`` (other columns null)."""
    return _marked(pa.table({f.name: keys.cast(f.type) if f.name == key else pa.nulls(len(keys), f.type)
                             for f in schema}), "delete")


def _synced(table: DeltaTable, custom: dict[str, str]) -> CommitProperties:
    """Commit properties for a sync of ``table`` (:meth:`DeltaStore.sync_rows`, ``sync_staged``,
    ``delete_rows``): ``custom`` metadata and the app transaction ``_SYNC`` at the version the
    commit will have. Two commits carrying one app id conflict in deltalake (the loser is retried
    on the winner's snapshot), whatever their kind: so an append of new keys, which alone would
    commit blindly over a concurrent writer's insert of the same keys, cannot."""
    return CommitProperties(custom_metadata=custom, app_transactions=[Transaction(_SYNC, table.version() + 1)])


def _upsert_and_delete(table: DeltaTable, source: pa.Table | pa.RecordBatchReader, key: str, schema: pa.Schema,
                       properties: CommitProperties) -> None:
    """One merge on ``key`` (:func:`_marked` source rows): ``"delete"`` rows delete their match,
    ``"upsert"`` rows update or insert theirs (``schema``: the table's columns)."""
    op = _OP
    columns = {f'"{c}"': f's."{c}"' for c in schema.names}
    (table.merge(source, predicate=f't."{key}" = s."{key}"', source_alias="s", target_alias="t",
                 writer_properties=_writer_properties(schema, (key,)), commit_properties=properties)
     .when_matched_delete(predicate=f"s.{op} = 'delete'")
     .when_matched_update(updates=columns, predicate=f"s.{op} = 'upsert'")
     .when_not_matched_insert(updates=columns, predicate=f"s.{op} = 'upsert'")
     .execute())


def replace_rows(table: DeltaTable, rows: pa.Table, key: str, properties: CommitProperties) -> None:
    """Make ``table`` hold exactly ``rows`` (one per ``key`` value), every row rewritten, in one
    merge: rows matched are updated, new ones inserted, the others deleted.

    Not an overwrite: deltalake 1.6 commits an overwrite over a concurrent merge's insert (the
    inserted file survives beside the overwrite's rows, ``tests/test_upkeep.py``), while a merge
    that reads the whole table conflicts with it and is retried."""
    columns = {f'"{c}"': f's."{c}"' for c in rows.column_names}
    (table.merge(rows, predicate=f't."{key}" = s."{key}"', source_alias="s", target_alias="t",
                 commit_properties=properties, writer_properties=_writer_properties(rows.schema, (key,), rows))
     .when_matched_update(updates=columns)
     .when_not_matched_insert(updates=columns)
     .when_not_matched_by_source_delete()
     .execute())


def _legacy_ids(name: str, table: DeltaTable) -> tuple[str, ...]:
    """The id columns table ``name`` holds as hex text: it was written (format "1") before ids
    were stored as 16 bytes. Such a table is read as if it held bytes (:func:`_as_read`) and
    appended to and merged into in its own form (:func:`_as_stored`): an old store keeps every
    result and nothing is recomputed, and no table is overwritten to change its types."""
    if not has_ids(name) or table.metadata().configuration.get("orca.format") != "1":
        return ()
    schema = pa.schema(table.schema().to_arrow())
    return tuple(c for c in ID_COLUMNS if c in schema.names
                 and (pa.types.is_string(schema.field(c).type) or pa.types.is_large_string(schema.field(c).type)))


def _as_read(frame: pl.LazyFrame, legacy: tuple[str, ...]) -> pl.LazyFrame:
    """A legacy table's hex id columns as the 16 bytes they stand for."""
    return frame.with_columns(pl.col(c).str.decode("hex") for c in legacy) if legacy else frame


def _as_stored(data: pa.Table, legacy: tuple[str, ...]) -> pa.Table:
    """Rows for a legacy table: its id columns as hex text."""
    for column in legacy:
        if column in data.column_names and data.schema.field(column).type in (pa.binary(), pa.large_binary()):
            i = data.column_names.index(column)
            text = pl.Series(data.column(i)).bin.encode("hex").to_arrow().cast(pa.large_string())
            data = data.set_column(i, pa.field(column, pa.large_string()), text)
    return data


def _hex_ids(ids: pl.Series) -> pl.Series:
    """16-byte ids (bytes or ``UInt128`` keys) as the hex text a legacy table holds."""
    if ids.dtype == pl.UInt128:
        return pl.Series(ids.name, keys_hex(ids))
    return ids.bin.encode("hex") if ids.dtype == pl.Binary else ids


def _dtype(table: DeltaTable, column: str) -> pl.DataType:
    return pl.from_arrow(pa.schema(table.schema().to_arrow()).empty_table())[column].dtype


def default_store() -> DeltaStore:
    """The store at ``$ORCA_STORE``, or ``./.orca``."""
    return DeltaStore(os.environ.get("ORCA_STORE", ".orca"))
