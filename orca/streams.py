"""Streams: immutable, lazy tables of (tag, packet) rows.

A stream is a Polars ``LazyFrame`` plus the names of its tag and packet columns. It also
carries *system columns* (names starting with ``__``) that are hidden unless asked for:

* ``__tag__<source id>`` -- system tags: the record id of the source row each row came from,
  so rows with equal user tags from different source rows stay distinct;
* ``__source__<packet column>`` -- source info: ``"<source id>#<record id>"`` naming the
  record each packet value came from.

Nothing is computed until a stream is collected (``to_arrow``, ``to_polars``, ``len``,
iteration). A stream may be backed by a function returning a ``DataFrame`` when producing it
runs a computation (the output of a function pod): it becomes a ``polars.defer`` frame, called
each time the stream (or a stream built from it) is collected, never at construction.

Examples
--------
>>> import orca
>>> s = orca.DictSource([{"id": 1, "x": 0.5}, {"id": 2, "x": 1.5}], tags=["id"])
>>> s.tag_columns, s.packet_columns
(('id',), ('x',))
>>> [(dict(t), dict(p)) for t, p in s]
[({'id': 1}, {'x': 0.5}), ({'id': 2}, {'x': 1.5})]
"""

from __future__ import annotations

import types
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import polars as pl
import pyarrow as pa

from orca import operators as _ops
from orca import views
from orca._operator import arrow_schema_of
from orca.hashing import PATH_METADATA
from orca.names import (
    SOURCE_PREFIX,
    SYSTEM_PREFIX,
    SYSTEM_TAG_PREFIX,
    check_user_columns,
    source_column,
)
from orca.types import as_paths

__all__ = ["Stream", "SYSTEM_PREFIX", "SOURCE_PREFIX", "SYSTEM_TAG_PREFIX", "source_column"]


class Stream:
    """An immutable, lazy table of (tag, packet) rows.

    Parameters
    ----------
    frame
        A ``LazyFrame`` holding tag, packet and system columns, or a function returning a
        ``DataFrame`` of them (deferred: called whenever the stream is collected).
    tag_columns, packet_columns
        The user columns, in order.
    identity
        A structural hash of how the stream was made (source id, operators, pods), not of its
        content: it stays the same when rows are added.
    path_columns
        Packet columns holding ``pathlib.Path`` values, or lists of them (files as data): hashed
        by the files' content.
    schema
        Arrow schema of all columns; required when ``frame`` is a function, derived otherwise.
    producer
        The node, operator or source that made the stream (used by pipelines).
    """

    __slots__ = ("_frame", "_schema", "tag_columns", "packet_columns", "path_columns", "identity", "producer")

    def __init__(
        self,
        frame: pl.LazyFrame | Callable[[], pl.DataFrame],
        *,
        tag_columns: Sequence[str],
        packet_columns: Sequence[str],
        identity: str,
        path_columns: Sequence[str] = (),
        schema: pa.Schema | None = None,
        producer: Any = None,
    ) -> None:
        if schema is None and not isinstance(frame, pl.LazyFrame):
            raise TypeError("a Stream backed by a function needs an explicit schema")
        # (every stream: sources and operators check their names first, a stream built by hand only here)
        check_user_columns([*tag_columns, *packet_columns], f"stream {identity!r}")
        if not isinstance(frame, pl.LazyFrame):
            frame = pl.defer(frame, schema=pl.from_arrow(schema.empty_table()).schema)
        self._frame = frame
        self._schema = schema
        self.tag_columns: tuple[str, ...] = tuple(tag_columns)
        self.packet_columns: tuple[str, ...] = tuple(packet_columns)
        self.path_columns: frozenset[str] = frozenset(path_columns)
        self.identity = identity
        self.producer = producer

    def __setattr__(self, name: str, value: Any) -> None:
        # Immutable: each attribute is set once (in __init__); operators return new streams.
        if hasattr(self, name):
            raise AttributeError(f"{type(self).__name__} is immutable: cannot reassign {name!r}")
        object.__setattr__(self, name, value)

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"{type(self).__name__} is immutable: cannot delete {name!r}")

    # -- schema ---------------------------------------------------------------------------
    @property
    def full_schema(self) -> pa.Schema:
        """Arrow schema of every column, system columns included (known without computing)."""
        if self._schema is None:
            object.__setattr__(self, "_schema", arrow_schema_of(self._frame.collect_schema()))
        return self._schema

    @property
    def system_columns(self) -> tuple[str, ...]:
        return tuple(n for n in self.full_schema.names if n.startswith(SYSTEM_PREFIX))

    @property
    def system_tag_columns(self) -> tuple[str, ...]:
        return tuple(n for n in self.full_schema.names if n.startswith(SYSTEM_TAG_PREFIX))

    def _field(self, name: str) -> pa.Field:
        field = self.full_schema.field(name)
        return field.with_metadata(PATH_METADATA) if name in self.path_columns else field

    def schema(self) -> tuple[pa.Schema, pa.Schema]:
        """``(tag schema, packet schema)`` as Arrow schemas; path columns carry path metadata."""
        return (
            pa.schema([self._field(n) for n in self.tag_columns]),
            pa.schema([self._field(n) for n in self.packet_columns]),
        )

    def columns(self, include_system: bool = False) -> list[str]:
        user = [*self.tag_columns, *self.packet_columns]
        return user + list(self.system_columns) if include_system else user

    # -- data -----------------------------------------------------------------------------
    def lazy(self, include_system: bool = False) -> pl.LazyFrame:
        """The rows as a Polars ``LazyFrame``."""
        return self._frame.select(self.columns(include_system))

    def to_polars(self, include_system: bool = False) -> pl.DataFrame:
        """Collect the rows into a Polars ``DataFrame``."""
        return self.lazy(include_system).collect()

    def to_arrow(self, include_system: bool = False) -> pa.Table:
        """Collect the rows into a ``pyarrow.Table`` (path columns carry path metadata)."""
        table = self.to_polars(include_system).to_arrow()
        if not self.path_columns:
            return table
        fields = [
            f.with_metadata(PATH_METADATA) if f.name in self.path_columns else f for f in table.schema
        ]
        return table.cast(pa.schema(fields))

    def __len__(self) -> int:
        return self.lazy().select(pl.len()).collect().item()

    def __iter__(self) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
        """Yield ``(tag, packet)`` pairs as read-only mappings; path columns as ``Path``."""
        frame = self.to_polars()
        columns = {}
        for name in frame.columns:
            values = frame.get_column(name).to_list()
            if name in self.path_columns:
                values = [None if v is None else as_paths(v) for v in values]
            columns[name] = values
        tags = [columns[n] for n in self.tag_columns]
        packets = [columns[n] for n in self.packet_columns]
        for i in range(frame.height):
            yield (
                types.MappingProxyType({n: c[i] for n, c in zip(self.tag_columns, tags, strict=True)}),
                types.MappingProxyType({n: c[i] for n, c in zip(self.packet_columns, packets, strict=True)}),
            )

    def __repr__(self) -> str:
        return f"Stream(tags={list(self.tag_columns)}, packets={list(self.packet_columns)})"

    def _repr_html_(self) -> str:
        return views.stream_html(self)

    def derive(self, frame: pl.LazyFrame | Callable[[], pl.DataFrame], **fields: Any) -> Stream:
        """A new plain :class:`Stream` made from this one (``fields`` as for the constructor).

        Operators build their outputs through it, so they need not import this module (which
        imports them for the methods below).
        """
        return Stream(frame, **fields)

    # -- operators (implemented in orca.operators) ----------------------------------------
    def join(self, *others: Stream) -> Stream:
        """Inner join on shared tag columns; see :class:`orca.operators.Join`."""
        return _ops.Join()(self, *others)

    def semi_join(self, other: Stream) -> Stream:
        """Rows whose shared tags appear in ``other``; see :class:`orca.operators.SemiJoin`."""
        return _ops.SemiJoin()(self, other)

    def filter(self, predicate: pl.Expr) -> Stream:
        """Rows where a Polars expression over tag and packet columns is true."""
        return _ops.Filter(predicate)(self)

    def select_tags(self, *names: str) -> Stream:
        return _ops.SelectTags(names)(self)

    def drop_tags(self, *names: str) -> Stream:
        return _ops.DropTags(names)(self)

    def select_packets(self, *names: str) -> Stream:
        return _ops.SelectPackets(names)(self)

    def drop_packets(self, *names: str) -> Stream:
        return _ops.DropPackets(names)(self)

    def rename_tags(self, mapping: Mapping[str, str]) -> Stream:
        return _ops.RenameTags(dict(mapping))(self)

    def rename_packets(self, mapping: Mapping[str, str]) -> Stream:
        return _ops.RenamePackets(dict(mapping))(self)

    def map_tags(self, fn_or_mapping: Any, **options: Any) -> Stream:
        """New or changed tags from a ``{name: expr}`` mapping or a function of the tag dict.

        ``options`` go to :class:`orca.operators.MapTags` (e.g. ``dtypes=`` to keep a function lazy).
        """
        return _ops.MapTags(fn_or_mapping, **options)(self)

    def batch(self, size: int | None = None, by: Sequence[str] | None = None) -> Stream:
        return _ops.Batch(size=size, by=tuple(by) if by else None)(self)

    def union(self, *others: Stream, distinct: bool = False) -> Stream:
        return _ops.Union(distinct=distinct)(self, *others)

