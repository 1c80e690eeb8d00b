"""Tests for orca.streams: laziness, immutability, schema, iteration, conversions and hidden
system columns."""

from __future__ import annotations

import pathlib

import hypothesis.strategies as st
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given

import orca
from orca.hashing import is_path_field
from orca.sources import DictSource
from orca.streams import SOURCE_PREFIX, SYSTEM_TAG_PREFIX, Stream, source_column

SCHEMA = pa.schema([
    ("id", pa.int64()),
    ("file", pa.large_string()),
    ("x", pa.float64()),
    ("__tag__src", pa.large_string()),
    ("__source__file", pa.large_string()),
    ("__source__x", pa.large_string()),
])


def make_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "id": [1, 2, 3],
        "file": ["a.tif", "b.tif", None],
        "x": [0.5, 1.5, 2.5],
        "__tag__src": ["r1", "r2", "r3"],
        "__source__file": ["src#r1", "src#r2", "src#r3"],
        "__source__x": ["src#r1", "src#r2", "src#r3"],
    }, schema=pl.from_arrow(SCHEMA.empty_table()).schema)


@pytest.fixture
def counted():
    """A stream backed by a deferred function, and the list of its calls."""
    calls = []

    def produce() -> pl.DataFrame:
        calls.append(1)
        return make_frame()

    stream = Stream(produce, tag_columns=["id"], packet_columns=["file", "x"], path_columns=["file"],
                    identity="test", schema=SCHEMA)
    return stream, calls


def test_building_a_stream_computes_nothing(counted):
    stream, calls = counted
    derived = stream.filter(pl.col("x") > 1).select_packets("x")
    _ = stream.schema(), stream.tag_columns, stream.system_columns, derived.packet_columns
    _ = stream.lazy(), derived.lazy(include_system=True)
    assert calls == []
    assert derived.to_polars()["x"].to_list() == [1.5, 2.5]
    assert len(calls) == 1


def test_each_collection_calls_the_function_again(counted):
    stream, calls = counted
    stream.to_arrow()
    len(stream)
    for _ in stream:  # one collection for the whole loop
        pass
    assert len(calls) == 3


def test_a_function_backed_stream_needs_a_schema():
    with pytest.raises(TypeError, match="schema"):
        Stream(make_frame, tag_columns=["id"], packet_columns=["x"], identity="t")


def test_streams_are_immutable(counted):
    stream, _ = counted
    for name, value in [("tag_columns", ("x",)), ("packet_columns", ()), ("identity", "other"), ("_frame", None)]:
        with pytest.raises(AttributeError, match="immutable"):
            setattr(stream, name, value)
    with pytest.raises(AttributeError):
        del stream.tag_columns
    with pytest.raises(AttributeError):
        stream.new_attribute = 1
    assert stream.tag_columns == ("id",) and stream.identity == "test"


def test_operators_return_new_streams_and_leave_the_input_alone(counted):
    stream, _ = counted
    renamed = stream.rename_tags({"id": "key"})
    assert renamed is not stream
    assert renamed.tag_columns == ("key",)
    assert stream.tag_columns == ("id",)
    assert stream.to_polars().columns == ["id", "file", "x"]


def test_tag_and_packet_columns(counted):
    stream, _ = counted
    assert stream.tag_columns == ("id",)
    assert stream.packet_columns == ("file", "x")
    assert stream.system_columns == ("__tag__src", "__source__file", "__source__x")
    assert stream.system_tag_columns == ("__tag__src",)
    assert stream.columns() == ["id", "file", "x"]
    assert stream.columns(include_system=True) == ["id", "file", "x", "__tag__src", "__source__file", "__source__x"]


def test_schema_is_tag_schema_and_packet_schema_with_path_metadata(counted):
    stream, calls = counted
    tags, packets = stream.schema()
    assert tags.names == ["id"] and tags.field("id").type == pa.int64()
    assert packets.names == ["file", "x"]
    assert is_path_field(packets.field("file"))
    assert not is_path_field(packets.field("x"))
    assert calls == []


def test_schema_of_a_lazyframe_stream_is_derived_without_collecting():
    frame = pl.LazyFrame({"k": ["a"], "v": [1]}).map_batches(lambda df: 1 / 0, schema={"k": pl.String, "v": pl.Int64})
    stream = Stream(frame, tag_columns=["k"], packet_columns=["v"], identity="t")
    tags, packets = stream.schema()
    assert tags.field("k").type == pa.large_string()
    assert packets.field("v").type == pa.int64()


def test_iteration_yields_read_only_mappings_with_paths(counted):
    stream, _ = counted
    pairs = list(stream)
    assert [dict(t) for t, _ in pairs] == [{"id": 1}, {"id": 2}, {"id": 3}]
    assert [dict(p) for _, p in pairs] == [
        {"file": pathlib.Path("a.tif"), "x": 0.5},
        {"file": pathlib.Path("b.tif"), "x": 1.5},
        {"file": None, "x": 2.5},
    ]
    tag, packet = pairs[0]
    assert isinstance(packet["file"], pathlib.Path)
    with pytest.raises(TypeError):
        tag["id"] = 5
    with pytest.raises(TypeError):
        packet["x"] = 0.0
    with pytest.raises(TypeError):
        del packet["x"]
    assert "__tag__src" not in tag and "__source__x" not in packet


def test_to_arrow(counted):
    stream, _ = counted
    table = stream.to_arrow()
    assert isinstance(table, pa.Table)
    assert table.column_names == ["id", "file", "x"]
    assert is_path_field(table.schema.field("file"))
    assert table.column("x").to_pylist() == [0.5, 1.5, 2.5]
    full = stream.to_arrow(include_system=True)
    assert full.column_names == ["id", "file", "x", "__tag__src", "__source__file", "__source__x"]
    assert full.column("__source__x").to_pylist() == ["src#r1", "src#r2", "src#r3"]


def test_to_polars_and_lazy(counted):
    stream, calls = counted
    assert stream.to_polars().columns == ["id", "file", "x"]
    assert stream.to_polars(include_system=True).columns[-3:] == ["__tag__src", "__source__file", "__source__x"]
    lazy = stream.lazy()
    assert isinstance(lazy, pl.LazyFrame)
    assert lazy.collect_schema().names() == ["id", "file", "x"]
    assert stream.lazy(include_system=True).collect_schema().names()[-1] == "__source__x"
    n_calls = len(calls)
    assert lazy.filter(pl.col("id") == 2).collect()["x"].to_list() == [1.5]
    assert len(calls) == n_calls + 1


def test_len(counted):
    stream, _ = counted
    assert len(stream) == 3
    assert len(stream.filter(pl.col("id") > 2)) == 1


def test_source_streams_hide_system_columns_by_default():
    src = DictSource([{"k": 1, "v": "a"}], tags=["k"], source_id="s1")
    assert src.to_polars().columns == ["k", "v"]
    assert src.to_arrow().column_names == ["k", "v"]
    assert src.lazy().collect_schema().names() == ["k", "v"]
    full = src.to_polars(include_system=True).columns
    assert full == ["k", "v", SYSTEM_TAG_PREFIX + "s1", SOURCE_PREFIX + "v"]
    assert source_column("v") == "__source__v"


def test_repr_names_the_columns(counted):
    stream, _ = counted
    assert repr(stream) == "Stream(tags=['id'], packets=['file', 'x'])"


@given(st.lists(st.tuples(st.integers(-(2**63), 2**63 - 1), st.one_of(st.none(), st.floats(allow_nan=False))), unique_by=lambda r: r[0]))
def test_iteration_matches_to_polars(rows):
    frame = pl.DataFrame({"k": [r[0] for r in rows], "v": [r[1] for r in rows]},
                         schema={"k": pl.Int64, "v": pl.Float64})
    stream = Stream(frame.lazy(), tag_columns=["k"], packet_columns=["v"], identity="t")
    assert [(t["k"], p["v"]) for t, p in stream] == frame.rows()
    assert len(stream) == len(rows)


def test_a_stream_built_by_hand_refuses_reserved_column_names():
    """Sources and operators refuse ``__`` names; a stream built by hand did not, and its run
    failed later with Polars' DuplicateError when its input was read."""
    frame = pl.DataFrame({"__run_id": ["r"], "x": [1]}).lazy()
    with pytest.raises(orca.SchemaError, match=r"stream 'by-hand'.*\['__run_id'\]"):
        Stream(frame, tag_columns=["__run_id"], packet_columns=["x"], identity="by-hand")
    with pytest.raises(orca.SchemaError, match=r"\['__x'\]"):
        Stream(frame.rename({"x": "__x"}), tag_columns=[], packet_columns=["__x"], identity="by-hand")
