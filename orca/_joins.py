"""Joins of streams on their shared tag columns (re-exported by :mod:`orca.operators`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import polars as pl

from orca._operator import TMP, Operator, dtypes_of, fresh_name
from orca.errors import SchemaError
from orca.names import source_column

if TYPE_CHECKING:
    from orca.streams import Stream

__all__ = ["Join", "MergeJoin", "SemiJoin"]


@dataclass(frozen=True)
class _Step:
    """How one more stream joins the accumulated result."""

    keys: tuple[str, ...]
    rename: dict[str, str]  # right system columns renamed to keep them distinct
    merge: tuple[str, ...]  # packet columns merged into lists
    first_merge: tuple[str, ...]  # of those, the ones not merged before
    cast_left: dict[str, pl.DataType]  # all-null columns cast to the other side's type
    cast_right: dict[str, pl.DataType]


def _unify(what: str, kind: str, columns: Sequence[str], left: dict, right: dict):
    """Columns that must match: equal types, or one side all-null (cast to the other's type)."""
    cast_left, cast_right, wrong = {}, {}, []
    for c in columns:
        if left[c] == right[c]:
            continue
        if left[c] == pl.Null:
            cast_left[c] = right[c]
        elif right[c] == pl.Null:
            cast_right[c] = left[c]
        else:
            wrong.append(f"{c}: {left[c]} vs {right[c]}")
    if wrong:
        raise SchemaError(f"{what}: {kind} columns have different types: {wrong}")
    return cast_left, cast_right


def _join_plan(what: str, streams: Sequence[Stream], merge: bool, allow_cross: bool):
    first = streams[0]
    tags, packets = list(first.tag_columns), list(first.packet_columns)
    system = set(first.system_columns)
    types, paths, merged = dtypes_of(first), set(first.path_columns), set()
    steps = []
    for index, right in enumerate(streams[1:], start=1):
        rtypes = dtypes_of(right)
        keys = tuple(t for t in tags if t in right.tag_columns)
        if not keys and not allow_cross:
            raise SchemaError(
                f"{what}: stream {index} shares no tag column with the streams before it "
                f"(tags {tags} vs {list(right.tag_columns)}); rename tags to match, or use "
                f"{what}(allow_cross=True) for a cross join"
            )
        mixed = sorted({*right.tag_columns} & {*packets} | {*right.packet_columns} & {*tags})
        if mixed:
            raise SchemaError(f"{what}: column(s) {mixed} are tags on one side and packets on the other")
        cast_left, cast_right = _unify(what, "shared tag", keys, types, rtypes)
        collide = tuple(p for p in right.packet_columns if p in packets)
        if collide and not merge:
            raise SchemaError(
                f"{what}: packet column(s) {list(collide)} appear in more than one stream; rename "
                "them first (stream.rename_packets({...})) or use MergeJoin to merge them into lists"
            )
        _check_path_marks(what, index, collide, paths, types, right, rtypes)
        more_left, more_right = _unify(what, "merged packet", collide, types, rtypes)
        cast_left |= {p: t for p, t in more_left.items() if p not in merged}
        cast_right |= more_right
        merged_sources = {source_column(p) for p in collide}
        taken, rename = system | set(right.system_columns), {}
        for c in right.system_columns:
            if c in system and c not in merged_sources:
                rename[c] = fresh_name(c, taken)
                taken.add(rename[c])
        first_merge = tuple(p for p in collide if p not in merged)
        steps.append(_Step(keys, rename, collide, first_merge, cast_left, cast_right))
        types |= cast_left
        merged |= set(collide)
        tags += [t for t in right.tag_columns if t not in tags]
        packets += [p for p in right.packet_columns if p not in collide]
        system |= {rename.get(c, c) for c in right.system_columns}
        types.update({k: v for k, v in rtypes.items() if k not in types})
        paths |= set(right.path_columns)
    return steps, tags, packets, sorted(paths), sorted(merged)


def _check_path_marks(what: str, index: int, merged: Sequence[str], paths: set[str], types: dict[str, Any],
                      right: Stream, rtypes: dict[str, Any]) -> None:
    """A merged column must be paths on both sides or on neither (a list of paths and names would
    hash some by content, some by name) -- unless one side has no values (Null): it takes the
    other's mark."""
    for p in merged:
        left_marked, right_marked = p in paths, p in right.path_columns
        if left_marked == right_marked or pl.Null in (types[p], rtypes[p]):
            continue
        marked, unmarked = ((f"stream {index}", "the streams before it") if right_marked
                            else ("the streams before it", f"stream {index}"))
        raise SchemaError(f"{what}: packet column {p!r} holds paths in {marked} but not in {unmarked}; mark it as "
                          "paths in every stream (a Path value, or path_columns=[...] on the source) or in none")


def _join_frames(steps: list[_Step], merged: list[str], frames: Sequence[pl.LazyFrame]) -> pl.LazyFrame:
    out = frames[0]
    for step, right in zip(steps, frames[1:], strict=True):
        out = out.with_columns(pl.col(c).cast(t) for c, t in step.cast_left.items())
        right = right.with_columns(pl.col(c).cast(t) for c, t in step.cast_right.items())
        right = right.rename(step.rename)
        for p in step.merge:
            right = right.rename({p: f"{TMP}v", source_column(p): f"{TMP}s"})
            right = right.with_columns(pl.struct(v=f"{TMP}v", s=f"{TMP}s").alias(f"{TMP}m_{p}"))
            right = right.drop(f"{TMP}v", f"{TMP}s")
        if step.keys:
            out = out.join(right, on=list(step.keys), how="inner", nulls_equal=True, maintain_order="left")
        else:
            out = out.join(right, how="cross", maintain_order="left")
        for p in step.merge:
            left = pl.struct(v=p, s=source_column(p)) if p in step.first_merge else pl.col(f"{TMP}l_{p}")
            out = out.with_columns(pl.concat_list(left, f"{TMP}m_{p}").alias(f"{TMP}l_{p}"))
            out = out.drop(f"{TMP}m_{p}")
    for p in merged:  # sort each merged list by (value, source), nulls last; split it back
        entries = pl.col(f"{TMP}l_{p}").list.eval(pl.element().sort_by(
            pl.element().struct.field("v"), pl.element().struct.field("s"), nulls_last=True))
        out = out.with_columns(entries.alias(f"{TMP}l_{p}")).with_columns(
            pl.col(f"{TMP}l_{p}").list.eval(pl.element().struct.field("v")).alias(p),
            pl.col(f"{TMP}l_{p}").list.eval(pl.element().struct.field("s")).alias(source_column(p)),
        ).drop(f"{TMP}l_{p}")
    return out


@dataclass(frozen=True)
class Join(Operator):
    """Inner join of two or more streams on their shared tag columns.

    Streams join left to right; each joins on the tags it shares with those before it. Tags
    of the result: the first stream's, then new ones in order; packets likewise. A packet
    column in two streams is an error (rename it, or use :class:`MergeJoin`). Null tags match
    null tags. Rows keep the left order. Streams sharing no tag are an error unless
    ``allow_cross=True`` (a cross join multiplies row counts, so it must be asked for).

    >>> import orca
    >>> a = orca.DictSource([{"id": 1, "x": 1.0}, {"id": 2, "x": 2.0}], tags=["id"], source_id="a")
    >>> b = orca.DictSource([{"id": 2, "y": "b"}], tags=["id"], source_id="b")
    >>> Join()(a, b).to_polars().rows()
    [(2, 2.0, 'b')]
    """

    allow_cross: bool = False
    arity = (2, None)

    def _apply(self, *streams: Stream) -> Stream:
        return _join(self, streams, merge=False)


@dataclass(frozen=True)
class MergeJoin(Operator):
    """Like :class:`Join`, but a packet column found in several streams becomes a list.

    The list holds the streams' values sorted (nulls last; ties broken by source), and the
    column's ``__source__`` column becomes the list of their sources, aligned with the values.
    A merged path column is a list of paths, hashed by the files' content; it must be a path
    column in every stream that has it.

    >>> import orca
    >>> a = orca.DictSource([{"id": 1, "x": 5.0}], tags=["id"], source_id="a")
    >>> b = orca.DictSource([{"id": 1, "x": 2.0}], tags=["id"], source_id="b")
    >>> MergeJoin()(a, b).to_polars().rows()
    [(1, [2.0, 5.0])]
    """

    allow_cross: bool = False
    arity = (2, None)

    def _apply(self, *streams: Stream) -> Stream:
        return _join(self, streams, merge=True)


def _join(op: Join | MergeJoin, streams: Sequence[Stream], merge: bool) -> Stream:
    what = type(op).__name__
    steps, tags, packets, paths, merged = _join_plan(what, streams, merge, op.allow_cross)
    return op._output(streams, lambda *frames: _join_frames(steps, merged, frames),
                      tags=tags, packets=packets, paths=paths)


@dataclass(frozen=True)
class SemiJoin(Operator):
    """Rows of the first stream whose shared tag values appear in the second.

    The output has the first stream's columns and order. Null tags match null tags.

    >>> import orca
    >>> a = orca.DictSource([{"id": 1, "x": 1.0}, {"id": 2, "x": 2.0}], tags=["id"], source_id="a")
    >>> b = orca.DictSource([{"id": 2, "y": "b"}], tags=["id"], source_id="b")
    >>> SemiJoin()(a, b).to_polars().rows()
    [(2, 2.0)]
    """

    arity = (2, 2)

    def _apply(self, *streams: Stream) -> Stream:
        a, b = streams
        keys = [t for t in a.tag_columns if t in b.tag_columns]
        if not keys:
            raise SchemaError(f"SemiJoin: the streams share no tag column (tags {list(a.tag_columns)} "
                              f"vs {list(b.tag_columns)})")
        cast_left, cast_right = _unify("SemiJoin", "shared tag", keys, dtypes_of(a), dtypes_of(b))

        def build(left: pl.LazyFrame, right: pl.LazyFrame) -> pl.LazyFrame:
            right = right.select(keys).with_columns(pl.col(c).cast(t) for c, t in cast_right.items())
            keyed = left.with_columns(pl.col(c).cast(t).alias(f"{TMP}{c}") for c, t in cast_left.items())
            on = [f"{TMP}{c}" if c in cast_left else c for c in keys]
            out = keyed.join(right, left_on=on, right_on=keys, how="semi", nulls_equal=True,
                             maintain_order="left")
            return out.drop(f"{TMP}{c}" for c in cast_left)

        return self._output(streams, build, tags=a.tag_columns, packets=a.packet_columns,
                            paths=a.path_columns)


