"""Operators: structural transforms of streams, done lazily in Polars on whole tables.

An operator is a small frozen dataclass of its parameters. Calling it on streams returns a new
lazy :class:`~orca.streams.Stream` whose schema is known at once and whose rows are computed
only when collected::

    Join()(a, b, c)     SemiJoin()(a, b)     Filter(pl.col("x") > 0)(s)     Batch(size=3)(s)

``op.identity`` hashes the class name and canonical parameters; the output stream's identity
also covers the input streams' identities. Inside ``with pipeline:`` the call is recorded as
a node (see :func:`orca._context.recorded`).

Rules (see ``docs/operators.md``):

* **null tags are values**: joins and semi-joins match a null tag with a null tag, as
  ``group_by`` and record ids do;
* **order**: joins, semi-joins, filters, renames and selections keep the left input's row
  order; unions concatenate in input order; batches are sorted by tags;
* system tag columns (``__tag__<source>``) always travel with the rows; a join that meets
  the same system tag on both sides keeps both, the right one renamed ``<name>__1`` (the
  first free number).

Examples
--------
>>> import orca, polars as pl
>>> rec = orca.DictSource([{"subject": "m1", "session": 1, "x": 0.5},
...                        {"subject": "m2", "session": 1, "x": 1.5}],
...                       tags=["subject", "session"], source_id="rec")
>>> meta = orca.DictSource([{"subject": "m1", "age": 30}, {"subject": "m2", "age": 40}],
...                        tags=["subject"], source_id="meta")
>>> out = Filter(pl.col("age") > 35)(Join()(rec, meta))
>>> out.tag_columns, out.packet_columns
(('subject', 'session'), ('x', 'age'))
>>> out.to_polars().rows()
[('m2', 1, 1.5, 40)]
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from orca._joins import Join, MergeJoin, SemiJoin
from orca._operator import (
    TMP,
    Operator,
    check_expr,
    check_known,
    expr_json,
    fn_identity,
    normalise_names,
)
from orca.errors import SchemaError
from orca.names import check_user_columns, source_column

if TYPE_CHECKING:
    from orca.streams import Stream

__all__ = [
    "Operator",
    "Join",
    "MergeJoin",
    "SemiJoin",
    "Filter",
    "SelectTags",
    "DropTags",
    "SelectPackets",
    "DropPackets",
    "RenameTags",
    "RenamePackets",
    "MapTags",
    "Batch",
    "Union",
]


# ------------------------------------------------------------------------ filter, select, rename


@dataclass(frozen=True, eq=False)
class Filter(Operator):
    """Rows where a Polars expression over tag and packet columns is true (null counts as false).

    >>> import orca, polars as pl
    >>> s = orca.DictSource([{"id": 1, "x": 1.0}, {"id": 2, "x": 2.0}], tags=["id"], source_id="s")
    >>> Filter(pl.col("x") > 1.5)(s).to_polars().rows()
    [(2, 2.0)]
    """

    predicate: pl.Expr

    def _params(self) -> Any:
        return {"predicate": expr_json(self.predicate, "Filter")}

    def _apply(self, *streams: Stream) -> Stream:
        (s,) = streams
        check_expr(self.predicate, s.columns(), "Filter", "tag/packet")
        self._params()  # reject expressions without a stable identity now, not at collect time
        dtype = s.lazy().select(self.predicate).collect_schema().dtypes()[0]
        if dtype not in (pl.Boolean, pl.Null):
            raise SchemaError(f"Filter: the predicate gives {dtype}, not Boolean")
        return self._output([s], lambda f: f.filter(self.predicate), tags=s.tag_columns,
                            packets=s.packet_columns, paths=s.path_columns)


def _drop_packets(op: Operator, s: Stream, keep: Sequence[str]) -> Stream:
    if not keep:
        raise SchemaError(f"{type(op).__name__}: no packet column would be left; a stream needs at least one "
                          f"(packet columns are {list(s.packet_columns)})")
    gone = [p for p in s.packet_columns if p not in keep]
    drop = gone + [source_column(p) for p in gone]
    return op._output([s], lambda f: f.drop(drop), tags=s.tag_columns, packets=keep,
                      paths=[p for p in s.path_columns if p in keep])


@dataclass(frozen=True)
class SelectTags(Operator):
    """Keep only these tag columns, in this order (system tags stay).

    Rows that then share tag values stay distinct by their system tags.

    >>> import orca
    >>> s = orca.DictSource([{"a": 1, "b": 2, "x": 0.5}], tags=["a", "b"], source_id="s")
    >>> SelectTags("b")(s).to_polars().columns
    ['b', 'x']
    """

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", normalise_names(self.names, type(self).__name__))

    def _apply(self, *streams: Stream) -> Stream:
        (s,) = streams
        check_known(self.names, s.tag_columns, type(self).__name__, "tag")
        drop = [t for t in s.tag_columns if t not in self.names]
        return self._output([s], lambda f: f.drop(drop), tags=self.names, packets=s.packet_columns,
                            paths=s.path_columns)


@dataclass(frozen=True)
class DropTags(Operator):
    """Drop these tag columns (system tags stay, so rows stay distinct).

    >>> import orca
    >>> s = orca.DictSource([{"a": 1, "b": 2, "x": 0.5}], tags=["a", "b"], source_id="s")
    >>> DropTags("a")(s).tag_columns
    ('b',)
    """

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", normalise_names(self.names, type(self).__name__))

    def _apply(self, *streams: Stream) -> Stream:
        (s,) = streams
        check_known(self.names, s.tag_columns, type(self).__name__, "tag")
        keep = [t for t in s.tag_columns if t not in self.names]
        return self._output([s], lambda f: f.drop(list(self.names)), tags=keep,
                            packets=s.packet_columns, paths=s.path_columns)


@dataclass(frozen=True)
class SelectPackets(Operator):
    """Keep only these packet columns (and their ``__source__`` columns), in this order.

    >>> import orca
    >>> s = orca.DictSource([{"id": 1, "x": 0.5, "y": "a"}], tags=["id"], source_id="s")
    >>> SelectPackets(["y"])(s).packet_columns
    ('y',)
    """

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", normalise_names(self.names, type(self).__name__))

    def _apply(self, *streams: Stream) -> Stream:
        (s,) = streams
        check_known(self.names, s.packet_columns, type(self).__name__, "packet")
        return _drop_packets(self, s, self.names)


@dataclass(frozen=True)
class DropPackets(Operator):
    """Drop these packet columns and their ``__source__`` columns.

    >>> import orca
    >>> s = orca.DictSource([{"id": 1, "x": 0.5, "y": "a"}], tags=["id"], source_id="s")
    >>> DropPackets("x")(s).packet_columns
    ('y',)
    """

    names: tuple[str, ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "names", normalise_names(self.names, type(self).__name__))

    def _apply(self, *streams: Stream) -> Stream:
        (s,) = streams
        check_known(self.names, s.packet_columns, type(self).__name__, "packet")
        return _drop_packets(self, s, [p for p in s.packet_columns if p not in self.names])


def _rename(op: RenameTags | RenamePackets, s: Stream, kind: str) -> Stream:
    what, mapping = type(op).__name__, dict(op.mapping)
    own = s.tag_columns if kind == "tag" else s.packet_columns
    check_known(list(mapping), own, what, kind)
    check_user_columns(list(mapping.values()), f"{what}: new names")
    final = [mapping.get(n, n) for n in s.columns()]
    clash = sorted({n for n in final if final.count(n) > 1})
    if clash:
        raise SchemaError(f"{what}: renaming would give two columns named {clash}; columns are {s.columns()}")
    full = dict(mapping)
    if kind == "packet":
        full.update({source_column(o): source_column(n) for o, n in mapping.items()})
    tags = [mapping.get(t, t) for t in s.tag_columns] if kind == "tag" else s.tag_columns
    packets = [mapping.get(p, p) for p in s.packet_columns] if kind == "packet" else s.packet_columns
    paths = [mapping.get(p, p) for p in s.path_columns] if kind == "packet" else s.path_columns
    return op._output([s], lambda f: f.rename(full), tags=tags, packets=packets, paths=paths)


def _pairs(mapping: Mapping[str, str] | Sequence[tuple[str, str]]) -> tuple[tuple[str, str], ...]:
    items = mapping.items() if isinstance(mapping, Mapping) else mapping
    return tuple(sorted((old, new) for old, new in items))


@dataclass(frozen=True)
class RenameTags(Operator):
    """Rename tag columns: ``RenameTags({"old": "new"})``. Renaming onto an existing name is an error.

    >>> import orca
    >>> s = orca.DictSource([{"id": 1, "x": 0.5}], tags=["id"], source_id="s")
    >>> RenameTags({"id": "subject"})(s).tag_columns
    ('subject',)
    """

    mapping: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mapping", _pairs(self.mapping))

    def _apply(self, *streams: Stream) -> Stream:
        return _rename(self, streams[0], "tag")


@dataclass(frozen=True)
class RenamePackets(Operator):
    """Rename packet columns; their ``__source__`` columns and path marks follow.

    >>> import orca
    >>> s = orca.DictSource([{"id": 1, "x": 0.5}], tags=["id"], source_id="s")
    >>> RenamePackets({"x": "y"})(s).to_polars(include_system=True).columns
    ['id', 'y', '__tag__s', '__source__y']
    """

    mapping: tuple[tuple[str, str], ...]

    def __post_init__(self) -> None:
        object.__setattr__(self, "mapping", _pairs(self.mapping))

    def _apply(self, *streams: Stream) -> Stream:
        return _rename(self, streams[0], "packet")


# ------------------------------------------------------------------------ map tags, batch, union


@dataclass(frozen=True, eq=False)
class MapTags(Operator):
    """Add or change tag columns, from Polars expressions or a Python function.

    * ``MapTags({"new": expr, ...})``: expressions over tag columns, evaluated together on
      the input tags (one may not see another's result). Fully lazy.
    * ``MapTags(fn)``: ``fn(tag: dict) -> dict`` of new or changed tag values, called once per
      *distinct* tag tuple (not per row) and joined back. The new columns and their types come
      from ``dtypes`` ({name: Polars dtype}) when given, and then ``fn`` runs when the stream
      is collected; without ``dtypes`` ``fn`` runs when the operator is applied (reading the
      input's tag columns) so the output schema is known.

    Output tags are the existing ones (changed in place) followed by the new ones.

    >>> import orca, polars as pl
    >>> s = orca.DictSource([{"file": "m1_s1", "x": 1.0}, {"file": "m1_s2", "x": 2.0}],
    ...                     tags=["file"], source_id="s")
    >>> MapTags({"subject": pl.col("file").str.slice(0, 2)})(s).to_polars().rows()
    [('m1_s1', 'm1', 1.0), ('m1_s2', 'm1', 2.0)]
    >>> MapTags(lambda t: {"session": t["file"][-2:]})(s).tag_columns
    ('file', 'session')
    """

    fn_or_mapping: Callable[[dict], Mapping[str, Any]] | Mapping[str, pl.Expr]
    dtypes: Mapping[str, Any] | None = None

    def _params(self) -> Any:
        dtypes = None if self.dtypes is None else {k: str(v) for k, v in self.dtypes.items()}
        if callable(self.fn_or_mapping):
            return {"fn": fn_identity(self.fn_or_mapping), "dtypes": dtypes}
        return {"exprs": [[k, expr_json(e, "MapTags")] for k, e in self.fn_or_mapping.items()]}

    def _apply(self, *streams: Stream) -> Stream:
        (s,) = streams
        if not s.tag_columns:
            raise SchemaError("MapTags: the stream has no tag columns to map")
        if callable(self.fn_or_mapping):
            return self._apply_fn(s)
        if not isinstance(self.fn_or_mapping, Mapping) or not self.fn_or_mapping:
            raise SchemaError("MapTags: expected a function or a non-empty {tag: expression} mapping")
        self._check_names(s, list(self.fn_or_mapping))
        for name, expr in self.fn_or_mapping.items():
            check_expr(expr, s.tag_columns, f"MapTags[{name!r}]", "tag")
        self._params()
        exprs = [e.alias(k) for k, e in self.fn_or_mapping.items()]
        tags = [*s.tag_columns, *(k for k in self.fn_or_mapping if k not in s.tag_columns)]
        return self._output([s], lambda f: f.with_columns(exprs), tags=tags,
                            packets=s.packet_columns, paths=s.path_columns)

    @staticmethod
    def _check_names(s: Stream, names: Sequence[str]) -> None:
        check_user_columns(names, "MapTags: tag names")
        clash = [n for n in names if n in s.packet_columns]
        if clash:
            raise SchemaError(f"MapTags: new tag(s) {clash} are packet columns of the stream "
                              f"(packet columns are {list(s.packet_columns)})")

    def _values(self, distinct: pl.DataFrame) -> pl.DataFrame:
        """``fn`` applied to each distinct tag tuple: key columns ``TMP k_*``, values ``TMP n_*``."""
        results = [self.fn_or_mapping(row) for row in distinct.iter_rows(named=True)]
        keys = list(self.dtypes) if self.dtypes is not None else list(results[0]) if results else []
        for result in results:
            if not isinstance(result, Mapping) or set(result) != set(keys):
                raise SchemaError(f"MapTags: the function must return a dict with the same keys for every "
                                  f"tag ({keys}), got {result!r}")
        schema = dict(self.dtypes) if self.dtypes is not None else None
        try:
            values = pl.DataFrame([dict(r) for r in results], schema=schema, orient="row")
        except (pl.exceptions.PolarsError, TypeError, ValueError) as exc:
            raise SchemaError(f"MapTags: cannot build tag columns {keys} from the function's values: {exc}") from exc
        keyed = distinct.rename({t: f"{TMP}k_{t}" for t in distinct.columns})
        return pl.concat([keyed, values.select(keys).rename({k: f"{TMP}n_{k}" for k in keys})],
                         how="horizontal")

    def _apply_fn(self, s: Stream) -> Stream:
        tags = list(s.tag_columns)

        def distinct(frame: pl.LazyFrame) -> pl.DataFrame:
            return frame.select(tags).unique(maintain_order=True).collect()

        if self.dtypes is None:  # call fn now: the new columns are whatever it returns
            table = self._values(distinct(s.lazy()))
            if table.height == 0:
                raise SchemaError("MapTags: the stream is empty, so the new tags' names and types are "
                                  "unknown; pass dtypes={name: dtype}")
        else:  # call fn at collection; plan with an empty table of the declared types
            table = self._values(pl.DataFrame(schema=s.lazy().select(tags).collect_schema()))
        names = [c[len(TMP) + 2:] for c in table.columns if c.startswith(f"{TMP}n_")]
        self._check_names(s, names)
        self._params()

        def build(frame: pl.LazyFrame, values: pl.DataFrame = table) -> pl.LazyFrame:
            out = frame.join(values.lazy(), left_on=tags, right_on=[f"{TMP}k_{t}" for t in tags],
                             how="inner", nulls_equal=True, coalesce=True, maintain_order="left")
            return out.with_columns(pl.col(f"{TMP}n_{k}").alias(k) for k in names).drop(
                f"{TMP}n_{k}" for k in names)

        def run(frame: pl.LazyFrame) -> pl.DataFrame:
            return build(frame, self._values(distinct(frame))).collect()

        return self._output([s], build, run=None if self.dtypes is None else run,
                            tags=[*tags, *(n for n in names if n not in tags)],
                            packets=s.packet_columns, paths=s.path_columns)


@dataclass(frozen=True)
class Batch(Operator):
    """Group rows into packets of lists.

    * ``Batch()``: all rows in one packet;
    * ``Batch(size=n)``: chunks of ``n`` rows in tag order (the last may be shorter);
    * ``Batch(by=("subject",))``: one packet per value of these tags (chunked by ``size`` if given).

    The ``by`` tags stay scalar tags; every other column -- other tags, packets, system tags
    and ``__source__`` columns -- becomes a list, aligned within a row, so each list element
    still names its source row. Rows are sorted by the ``by`` tags, the other tags and the
    system tags first (nulls last); an empty input gives no batch. A path column becomes a
    list of paths, still hashed by the files' content.

    >>> import orca
    >>> s = orca.DictSource([{"subject": "m1", "session": i, "x": float(i)} for i in range(3)],
    ...                     tags=["subject", "session"], source_id="s")
    >>> Batch(size=2)(s).to_polars().rows()
    [(['m1', 'm1'], [0, 1], [0.0, 1.0]), (['m1'], [2], [2.0])]
    >>> Batch(by=("subject",))(s).to_polars().rows()
    [('m1', [0, 1, 2], [0.0, 1.0, 2.0])]
    """

    size: int | None = None
    by: tuple[str, ...] | None = None

    def __post_init__(self) -> None:
        if self.size is not None and (isinstance(self.size, bool) or not isinstance(self.size, int)
                                      or self.size < 1):
            raise SchemaError(f"Batch: size must be a positive integer or None, got {self.size!r}")
        if self.by is not None:
            object.__setattr__(self, "by", normalise_names(self.by, "Batch"))

    def _apply(self, *streams: Stream) -> Stream:
        (s,) = streams
        by = list(self.by or ())
        check_known(by, s.tag_columns, "Batch", "tag")
        order = [*by, *(t for t in s.tag_columns if t not in by), *s.system_tag_columns]
        index = pl.int_range(pl.len(), dtype=pl.Int64)
        chunk = pl.lit(0) if self.size is None else (index.over(by) if by else index) // self.size

        def build(frame: pl.LazyFrame) -> pl.LazyFrame:
            if order:
                frame = frame.sort(order, nulls_last=True, maintain_order=True)
            grouped = frame.with_columns(chunk.alias(f"{TMP}batch")).group_by(
                [*by, f"{TMP}batch"], maintain_order=True).agg(pl.all())
            return grouped.drop(f"{TMP}batch")

        tags = [*by, *(t for t in s.tag_columns if t not in by)]
        return self._output([s], build, tags=tags, packets=s.packet_columns, paths=s.path_columns)


@dataclass(frozen=True)
class Union(Operator):
    """Rows of several streams with the same tag and packet columns, in input order.

    Column order follows the first stream; numeric columns of different types take their
    common supertype, other type differences are errors. System tag columns are unioned
    (null where a stream lacks one). An entry (the same tag *and* packet values) found in more
    than one input is an error when the stream is collected, unless ``distinct=True``: then the
    first occurrence is kept (earliest input, earliest row) and later copies are dropped.

    >>> import orca
    >>> a = orca.DictSource([{"id": 1, "x": 1.0}], tags=["id"], source_id="a")
    >>> b = orca.DictSource([{"id": 2, "x": 2.0}, {"id": 1, "x": 1.0}], tags=["id"], source_id="b")
    >>> Union(distinct=True)(a, b).to_polars().rows()
    [(1, 1.0), (2, 2.0)]
    """

    distinct: bool = False
    arity = (1, None)

    def _apply(self, *streams: Stream) -> Stream:
        first = streams[0]
        user = first.columns()
        for i, s in enumerate(streams[1:], start=1):
            for kind, mine, theirs in (("tag", first.tag_columns, s.tag_columns),
                                       ("packet", first.packet_columns, s.packet_columns),
                                       ("path", first.path_columns, s.path_columns)):
                if set(mine) != set(theirs):
                    raise SchemaError(
                        f"Union: stream {i} has different {kind} columns: missing {sorted(set(mine) - set(theirs))}, "
                        f"extra {sorted(set(theirs) - set(mine))} (stream 0 has {sorted(mine)})")
        schemas = [s.lazy().collect_schema() for s in streams]
        wrong = [f"{c}: {[str(sch[c]) for sch in schemas]}" for c in user
                 if not _compatible([sch[c] for sch in schemas])]
        if wrong:
            raise SchemaError(f"Union: columns have incompatible types across streams: {wrong}")

        def build(*frames: pl.LazyFrame) -> pl.LazyFrame:
            out = pl.concat([f.select(*user, pl.exclude(user)) for f in frames], how="diagonal_relaxed")
            return out.unique(subset=user, keep="first", maintain_order=True) if self.distinct else out

        def run(*frames: pl.LazyFrame) -> pl.DataFrame:
            tagged = [f.with_columns(pl.lit(i).alias(f"{TMP}input")) for i, f in enumerate(frames)]
            table = build(*tagged).collect()
            shared = table.filter(pl.col(f"{TMP}input").n_unique().over(user) > 1)
            if shared.height:
                raise SchemaError(
                    f"Union: {shared.select(user).n_unique()} entries (same tags and packets) occur in more "
                    f"than one input, e.g. {shared.select(user).row(0, named=True)}; pass distinct=True "
                    "to keep one copy")
            return table.drop(f"{TMP}input")

        return self._output(streams, build, run=None if self.distinct else run, tags=first.tag_columns,
                            packets=first.packet_columns, paths=first.path_columns)


def _compatible(dtypes: list[pl.DataType]) -> bool:
    known = [d for d in dtypes if d != pl.Null]
    return all(d == known[0] for d in known) or all(d.is_numeric() for d in known)

