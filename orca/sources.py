"""Sources: where rows enter a pipeline.

Every source is a :class:`~orca.streams.Stream` with a ``source_id``. Its rows carry

* a system tag ``__tag__<source id>`` holding the row's *record id*, and
* a source-info column ``__source__<column>`` = ``"<source id>#<record id>"`` per packet column.

The record id is the hash of the row's tag values, so it survives adding, removing and
reordering other rows. Duplicate tag values are an error unless ``keep_duplicates=True``
(then every record id also covers the packet values and the occurrence number, so adding a
duplicate does not change the ids of the other rows).

Sources read their input when constructed, so a missing file or a bad tag column fails at
once, with the path or column named; streams derived from a source are lazy.

Every column is normalised, once, to the Delta-storable type orca keeps for it
(:func:`orca.types.storable_table`: ``uint32`` -> ``int64``, ``timestamp[ns]`` -> ``timestamp[us]``
when lossless, ``fixed_size_list`` -> ``large_list``, ...), *before* any hash is computed, so
the values hashed are the values stored; a column Delta cannot hold (time of day, durations,
maps, Python objects, sets) raises :class:`~orca.errors.SchemaError` naming it.

Examples
--------
>>> import orca
>>> s = orca.DictSource([{"subject": "m1", "x": 1}], tags=["subject"], source_id="demo")
>>> s.to_polars(include_system=True).columns
['subject', 'x', '__tag__demo', '__source__x']
"""

from __future__ import annotations

import glob as _glob
import itertools
import os
import pathlib
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow as pa

from orca.errors import HashingError, SchemaError, SourceError
from orca.hashing import (
    KeySet,
    check_ordered,
    hash_bytes,
    hash_packet_keys,
    hash_packets,
    is_path_field,
    keys_hex,
    object_columns,
    resolve_files,
)
from orca.names import source_references
from orca.streams import SYSTEM_PREFIX, SYSTEM_TAG_PREFIX, Stream, source_column
from orca.types import storable_table, type_kind

__all__ = [
    "DictSource",
    "ArrowSource",
    "PolarsSource",
    "CSVSource",
    "ParquetSource",
    "DeltaSource",
    "GlobSource",
]

_ID_OK = re.compile(r"^[A-Za-z0-9_\-]+$")


def _sanitise_id(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_\-]+", "_", text).strip("_") or "source"


def _default_id(kind: str, table: pa.Table, tags: Sequence[str]) -> str:
    # Structural, not content-derived: adding rows must not change the id.
    digest = hash_bytes(("\x00".join(tags) + "\x01" + "\x00".join(table.column_names)).encode())
    return f"{kind}-{digest[:8]}"


def _record_ids(table: pa.Table, tags: list[str], packets: list[str], keep_duplicates: bool, source_id: str) -> pl.Series:
    """Record id per row, as ``UInt128`` keys: hash of the tag values (plus packet and occurrence
    when duplicates are kept)."""
    keys = hash_packet_keys(table, tags)
    # Counting distinct keys is 3-5x faster than marking duplicates (1M rows: 0.06-0.1 s against 0.3 s
    # as UInt128, 0.48 s as hex text), and nearly every source has none.
    if not keep_duplicates and keys.n_unique() == len(keys):
        return keys
    tag_hash = pl.Series("t", keys_hex(keys))
    if not keep_duplicates:
        dup = keys.is_duplicated()
        first = tag_hash.filter(dup)[0]
        example = table.filter(pa.array((tag_hash == first).to_list())).select(tags).slice(0, 1).to_pylist()
        n = int(dup.sum())
        raise SourceError(
            f"source {source_id!r}: {n} rows share tag values with another row, e.g. {example[0] if example else {}}; "
            "tags must identify a row (add a tag column, or pass keep_duplicates=True)"
        )
    frame = pl.DataFrame({"t": tag_hash, "p": pl.Series(hash_packets(table, packets))})
    frame = frame.with_columns(n=pl.int_range(pl.len()).over("t", "p").cast(pl.Int64))
    return hash_packet_keys(frame.to_arrow(), ["t", "p", "n"])


def build_source(
    table: pa.Table,
    *,
    tags: Sequence[str],
    source_id: str,
    kind: str,
    path_columns: Sequence[str] = (),
    keep_duplicates: bool = False,
) -> dict[str, Any]:
    """Validate ``table`` and return the ``Stream`` constructor arguments of a source over it."""
    tags = list(tags)
    names = table.column_names
    if not _ID_OK.match(source_id):
        raise SourceError(f"source id {source_id!r} may hold only letters, digits, '_' and '-'")
    if "" in names:
        raise SourceError(f"source {source_id!r}: column {names.index('')} has an empty name (a pandas "
                          "index written to CSV?); name it, or drop it (e.g. read with index_col / "
                          "select the columns you need)")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SourceError(f"source {source_id!r}: column names repeat: {repeated}")
    system = [n for n in names if n.startswith(SYSTEM_PREFIX)]
    if system:
        raise SourceError(f"source {source_id!r}: column names may not start with '__' (reserved for orca): {system}")
    unknown = [t for t in tags if t not in names]
    if unknown:
        raise SourceError(f"source {source_id!r}: unknown tag column(s) {unknown}; columns are {names}")
    if len(set(tags)) != len(tags):
        raise SourceError(f"source {source_id!r}: tag columns repeat: {tags}")
    if table.num_rows == 0:
        raise SourceError(f"source {source_id!r} ({kind}) is empty")
    try:  # before any hash: the values hashed must be the values stored
        table = storable_table(table)
    except SchemaError as exc:
        raise SchemaError(f"source {source_id!r}: {exc}") from exc
    packets = [n for n in names if n not in tags]
    if not packets:
        raise SourceError(f"source {source_id!r}: every column is a tag; a source needs at least one packet column")
    paths = {*path_columns, *(f.name for f in table.schema if is_path_field(f))}
    bad_paths = sorted(p for p in paths if p not in packets)
    if bad_paths:
        raise SourceError(f"source {source_id!r}: path columns {bad_paths} are not packet columns {packets}")
    # (a source records each file's size and mtime, the file-hash memo's key: one file per row)
    not_text = {p: str(table.schema.field(p).type) for p in sorted(paths)
                if type_kind(table.schema.field(p).type) != "string"}
    if not_text:
        raise SourceError(f"source {source_id!r}: path columns {list(not_text)} must hold one path (a string) per "
                          f"row, not {list(not_text.values())}; for a list of files per packet, batch a source "
                          "of files (stream.batch(...))")

    record_keys = _record_ids(table, tags, packets, keep_duplicates, source_id)
    frame = pl.from_arrow(table.select(tags + packets))
    frame = frame.with_columns(pl.Series(SYSTEM_TAG_PREFIX + source_id, keys_hex(record_keys)))
    # The references are made when read, not held: they are ~45 bytes per row per packet column
    # (0.9 GB for 10M rows of two columns), and a run in slices reads them a slice at a time.
    refs = source_references(source_id)
    return dict(
        records=KeySet().add(record_keys).digest,
        frame=frame.lazy().with_columns([refs.alias(source_column(p)) for p in packets]),
        tag_columns=tags,
        packet_columns=packets,
        path_columns=sorted(paths),
        identity=hash_bytes(f"source\x00{source_id}".encode()),
    )


class Source(Stream):
    """A stream read from outside: a :class:`Stream` with a ``source_id``.

    The concrete sources below only turn their input into an Arrow table.
    """

    __slots__ = ("source_id", "records_digest")

    def __init__(
        self,
        table: pa.Table,
        *,
        tags: Sequence[str],
        source_id: str | None = None,
        kind: str = "arrow",
        path_columns: Sequence[str] = (),
        keep_duplicates: bool = False,
    ) -> None:
        if isinstance(tags, str):
            tags = [tags]
        source_id = source_id or _default_id(kind, table, list(tags))
        built = build_source(table, tags=tags, source_id=source_id, kind=kind, path_columns=path_columns,
                             keep_duplicates=keep_duplicates)
        # The digest of the record ids, made while they are keys (from their hex text, as the
        # run's source records would otherwise make it, it cost ~0.07 s per million rows).
        self.records_digest: str = built.pop("records")
        super().__init__(**built, producer=self)
        self.source_id = source_id

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.source_id!r}, tags={list(self.tag_columns)}, packets={list(self.packet_columns)})"


class DictSource(Source):
    """Rows given as a list of dicts (``pathlib.Path`` values become path columns).

    >>> DictSource([{"id": 1, "x": "a"}, {"id": 2, "x": "b"}], tags=["id"]).packet_columns
    ('x',)
    """

    def __init__(self, rows: Iterable[Mapping[str, Any]], *, tags: Sequence[str], source_id: str | None = None,
                 keep_duplicates: bool = False) -> None:
        rows = [dict(r) for r in rows]
        if not rows:
            raise SourceError(f"source {source_id or 'DictSource'!r} is empty: no rows given")
        where = f"source {source_id or 'DictSource'!r}"
        names = list(dict.fromkeys(k for r in rows for k in r))
        bad_names = [n for n in names if not isinstance(n, str)]
        if bad_names:
            raise SourceError(f"{where}: column names must be str, got {bad_names}")
        paths = [n for n in names if any(isinstance(r.get(n), pathlib.PurePath) for r in rows)]
        columns = {}
        for n in names:
            values = [str(v) if isinstance(v, pathlib.PurePath) else v for v in (r.get(n) for r in rows)]
            try:  # Python values have no columnar form: one pass over them, for sets anywhere
                check_ordered(values, n)
                columns[n] = pa.array(values)
            except HashingError as exc:
                raise SchemaError(f"{where}: {exc}") from exc
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
                raise SourceError(f"{where}: cannot build columns from rows: column {n!r}: {exc}") from exc
        table = pa.table(columns)
        super().__init__(table, tags=tags, source_id=source_id, kind="dict", path_columns=paths,
                         keep_duplicates=keep_duplicates)


class ArrowSource(Source):
    """A ``pyarrow.Table`` (fields with path metadata become path columns)."""

    def __init__(self, table: pa.Table, *, tags: Sequence[str], source_id: str | None = None,
                 path_columns: Sequence[str] = (), keep_duplicates: bool = False) -> None:
        super().__init__(table, tags=tags, source_id=source_id, kind="arrow", path_columns=path_columns,
                         keep_duplicates=keep_duplicates)


class PolarsSource(Source):
    """A Polars ``DataFrame`` or ``LazyFrame`` (collected once, at construction)."""

    def __init__(self, frame: pl.DataFrame | pl.LazyFrame, *, tags: Sequence[str], source_id: str | None = None,
                 path_columns: Sequence[str] = (), keep_duplicates: bool = False) -> None:
        if isinstance(frame, pl.LazyFrame):
            frame = frame.collect()
        objects = object_columns(frame.schema)
        if objects:  # exported to Arrow they would be 8-byte pointers, different every process
            raise SchemaError(f"source {source_id or 'PolarsSource'!r}: columns {objects} hold Python "
                              "objects (Polars Object dtype), which orca can neither hash nor store; "
                              "convert them to typed columns first")
        super().__init__(frame.to_arrow(), tags=tags, source_id=source_id, kind="polars",
                         path_columns=path_columns, keep_duplicates=keep_duplicates)


def _read(path: str | os.PathLike, reader, what: str) -> pa.Table:
    try:
        return reader(path).to_arrow()
    except FileNotFoundError as exc:
        raise SourceError(f"{what} source: file not found: {os.fspath(path)!r}") from exc
    except Exception as exc:  # polars/deltalake raise many types for unreadable input
        raise SourceError(f"{what} source: cannot read {os.fspath(path)!r}: {exc}") from exc


_DUPLICATED = re.compile(r"(.*)_duplicated_\d+")


class CSVSource(Source):
    """A CSV file read with ``polars.read_csv`` (extra keyword arguments are passed on)."""

    def __init__(self, path: str | os.PathLike, *, tags: Sequence[str], source_id: str | None = None,
                 path_columns: Sequence[str] = (), keep_duplicates: bool = False, **read_options: Any) -> None:
        table = _read(path, lambda p: pl.read_csv(p, **read_options), "CSV")
        # Polars renames a repeated header "a" to "a_duplicated_0": refuse it rather than guess
        renamed = [n for n in table.column_names
                   if (m := _DUPLICATED.fullmatch(n)) and m.group(1) in table.column_names]
        if renamed:
            raise SourceError(f"CSV source {os.fspath(path)!r}: header names repeat (Polars renamed "
                              f"them {renamed}); give every column its own name")
        super().__init__(table, tags=tags, source_id=source_id or _sanitise_id(pathlib.Path(path).stem),
                         kind="csv", path_columns=path_columns, keep_duplicates=keep_duplicates)


class ParquetSource(Source):
    """A Parquet file (or glob of files) read with ``polars.read_parquet``."""

    def __init__(self, path: str | os.PathLike, *, tags: Sequence[str], source_id: str | None = None,
                 path_columns: Sequence[str] = (), keep_duplicates: bool = False, **read_options: Any) -> None:
        table = _read(path, lambda p: pl.read_parquet(p, **read_options), "Parquet")
        super().__init__(table, tags=tags, source_id=source_id or _sanitise_id(pathlib.Path(path).stem),
                         kind="parquet", path_columns=path_columns, keep_duplicates=keep_duplicates)


class DeltaSource(Source):
    """A Delta table read with ``polars.read_delta`` (``version=`` pins a snapshot)."""

    def __init__(self, path: str | os.PathLike, *, tags: Sequence[str], source_id: str | None = None,
                 path_columns: Sequence[str] = (), keep_duplicates: bool = False, **read_options: Any) -> None:
        table = _read(path, lambda p: pl.read_delta(os.fspath(p), **read_options), "Delta")
        super().__init__(table, tags=tags, source_id=source_id or _sanitise_id(pathlib.Path(path).name),
                         kind="delta", path_columns=path_columns, keep_duplicates=keep_duplicates)


_FIELD = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)\}")


class GlobSource(Source):
    """Files matching a pattern such as ``"data/{subject}/{session}.tif"``.

    Each ``{name}`` field matches one path component (no ``/``) and becomes a string tag; the
    matched file becomes a ``pathlib.Path`` packet column (``path`` unless ``packet_column``
    says otherwise). ``*`` and ``**`` may appear too, as in :func:`glob.glob`.

    >>> import tempfile, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (root / "m1").mkdir(), (root / "m1" / "s1.txt").write_text("hi")
    >>> src = GlobSource(str(root / "{subject}" / "{session}.txt"))
    >>> [(dict(t), p["path"].name) for t, p in src]
    [({'subject': 'm1', 'session': 's1'}, 's1.txt')]
    """

    def __init__(self, pattern: str | os.PathLike, *, packet_column: str = "path", source_id: str | None = None,
                 keep_duplicates: bool = False) -> None:
        pattern = os.fspath(pattern)
        fields = _FIELD.findall(pattern)
        if len(set(fields)) != len(fields):
            raise SourceError(f"glob pattern {pattern!r} repeats a field name: {fields}")
        if packet_column in fields:
            raise SourceError(f"glob pattern {pattern!r}: packet column {packet_column!r} is also a field")
        glob_pattern = _FIELD.sub("*", pattern)
        regex = re.compile("".join(
            f"(?P<{part}>[^/]+)" if i % 2 else _glob_regex(part)
            for i, part in enumerate(_FIELD.split(pattern))
        ) + r"\Z")
        found = _glob.glob(glob_pattern, recursive=True)
        # the regular files matched (links followed), each resolved: one lstat per file
        resolved = {m: f[0] for m, f in zip(found, resolve_files(found), strict=True) if f is not None}
        matches = sorted(resolved)
        rows: dict[str, list] = {f: [] for f in fields}
        rows[packet_column] = []
        for match in matches:
            m = regex.match(match)
            if m is None:
                continue
            try:  # the OS gives undecodable bytes as surrogates, which Arrow strings cannot hold
                match.encode("utf-8")
            except UnicodeEncodeError:
                raise SourceError(f"glob pattern {pattern!r}: file name {os.fsencode(match)!r} is not "
                                  "valid UTF-8; rename the file (paths are stored as strings)") from None
            for f in fields:
                rows[f].append(m.group(f))
            rows[packet_column].append(resolved[match])
        if not rows[packet_column]:
            root = _static_root(glob_pattern)
            where = f"in {os.path.abspath(root)!r}" + ("" if os.path.isdir(root) else " (no such directory)")
            if not os.path.isabs(pattern):
                where += f", the pattern being relative to the working directory {os.getcwd()!r}"
            raise SourceError(f"glob pattern {pattern!r} matched no files {where}")
        table = pa.table({k: pa.array(v, pa.large_string()) for k, v in rows.items()})
        default_id = _sanitise_id(pathlib.Path(pattern.split("{")[0]).name or "glob") + "-" + hash_bytes(pattern.encode())[:8]
        super().__init__(table, tags=fields, source_id=source_id or default_id, kind="glob",
                         path_columns=[packet_column], keep_duplicates=keep_duplicates)


def _static_root(glob_pattern: str) -> str:
    """The directory a glob pattern starts from: its components before the first wildcard."""
    parts = pathlib.PurePath(glob_pattern).parts
    static = list(itertools.takewhile(lambda part: not _glob.has_magic(part), parts))
    if len(static) == len(parts):  # no wildcard at all: the last component names the file
        static = static[:-1]
    return os.path.join(*static) if static else "."


def _glob_regex(literal: str) -> str:
    """Regex for the literal/glob parts of a pattern: ``**`` any depth, ``*`` one component."""
    out = []
    for token in re.split(r"(\*\*/?|\*|\?)", literal):
        if token in ("**", "**/"):
            out.append(r"(?:.*/)?" if token == "**/" else r".*")
        elif token == "*":
            out.append(r"[^/]*")
        elif token == "?":
            out.append(r"[^/]")
        else:
            out.append(re.escape(token))
    return "".join(out)
