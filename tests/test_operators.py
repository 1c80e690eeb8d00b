"""Tests for orca.operators: each operator's happy path, errors, empty inputs and nulls;
join algebra (hypothesis); provenance; identity."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import hypothesis.strategies as st
import polars as pl
import pytest
from hypothesis import given, settings

from orca.errors import OrcaError, SchemaError
from orca.operators import (
    Batch,
    DropPackets,
    DropTags,
    Filter,
    Join,
    MapTags,
    MergeJoin,
    RenamePackets,
    RenameTags,
    SelectPackets,
    SelectTags,
    SemiJoin,
    Union,
)
from orca.sources import DictSource


def rows(stream, columns=None):
    """Sorted rows of the given columns (default: user columns), for order-free comparison."""
    frame = stream.to_polars(include_system=True)
    return sorted(frame.select(columns or stream.columns()).rows(), key=repr)


@pytest.fixture
def rec():
    return DictSource(
        [
            {"subject": "m1", "session": 1, "trace": 0.5},
            {"subject": "m1", "session": 2, "trace": 0.7},
            {"subject": "m2", "session": 1, "trace": 1.5},
            {"subject": None, "session": 3, "trace": 9.0},
        ],
        tags=["subject", "session"],
        source_id="rec",
    )


@pytest.fixture
def meta():
    return DictSource(
        [{"subject": "m1", "age": 30}, {"subject": "m2", "age": 40}, {"subject": None, "age": 0}],
        tags=["subject"],
        source_id="meta",
    )


# ----------------------------------------------------------------------------------------- join


def test_join_on_shared_tags(rec, meta):
    out = Join()(rec, meta)
    assert out.tag_columns == ("subject", "session")
    assert out.packet_columns == ("trace", "age")
    assert out.to_polars().rows() == [
        ("m1", 1, 0.5, 30), ("m1", 2, 0.7, 30), ("m2", 1, 1.5, 40), (None, 3, 9.0, 0),
    ]


def test_join_keeps_left_order(meta):
    left = DictSource([{"subject": s, "x": i} for i, s in enumerate(["m2", "m1", "m3", "m1x"])],
                      tags=["subject"], source_id="left")
    right = DictSource([{"subject": s, "y": i} for i, s in enumerate(["m1", "m3", "m2"])],
                       tags=["subject"], source_id="right")
    assert Join()(left, right).to_polars()["subject"].to_list() == ["m2", "m1", "m3"]


def test_join_new_tags_appended(rec):
    other = DictSource([{"session": 1, "rig": "A", "temp": 20.0}], tags=["session", "rig"], source_id="rig")
    out = rec.join(other)
    assert out.tag_columns == ("subject", "session", "rig")
    assert rows(out) == sorted([("m1", 1, "A", 0.5, 20.0), ("m2", 1, "A", 1.5, 20.0)], key=repr)


def test_join_null_tags_match_null(rec, meta):
    out = Join()(rec, meta)
    assert (None, 3, 9.0, 0) in out.to_polars().rows()
    assert len(SemiJoin()(rec, meta)) == 4


def test_join_packet_collision_error(rec):
    other = DictSource([{"subject": "m1", "trace": 1.0}], tags=["subject"], source_id="o")
    with pytest.raises(SchemaError, match=r"\['trace'\].*rename_packets.*MergeJoin"):
        Join()(rec, other)


def test_join_tag_packet_mix_error(rec):
    other = DictSource([{"session": 1, "subject": "m1"}], tags=["session"], source_id="o")
    with pytest.raises(SchemaError, match="subject"):
        Join()(rec, other)


def test_join_key_type_mismatch_error(rec):
    other = DictSource([{"subject": 1, "y": 1.0}], tags=["subject"], source_id="o")
    with pytest.raises(SchemaError, match="subject"):
        Join()(rec, other)


def test_join_without_shared_tags_needs_allow_cross(rec):
    other = DictSource([{"rig": "A", "y": 1.0}, {"rig": "B", "y": 2.0}], tags=["rig"], source_id="o")
    with pytest.raises(SchemaError, match="allow_cross"):
        Join()(rec, other)
    out = Join(allow_cross=True)(rec, other)
    assert len(out) == 8
    assert out.tag_columns == ("subject", "session", "rig")


def test_join_arity_and_types(rec):
    with pytest.raises(TypeError):
        Join()(rec)
    with pytest.raises(TypeError):
        Join()(rec, "not a stream")


def test_join_after_empty_filter(rec, meta):
    empty = rec.filter(pl.col("trace") > 100)
    assert len(empty) == 0
    out = empty.join(meta)
    assert len(out) == 0
    assert out.packet_columns == ("trace", "age")


def test_join_three_streams(rec, meta):
    site = DictSource([{"subject": "m1", "site": "x"}], tags=["subject"], source_id="site")
    out = Join()(rec, meta, site)
    assert out.to_polars().rows() == [("m1", 1, 0.5, 30, "x"), ("m1", 2, 0.7, 30, "x")]


def test_join_provenance(rec, meta):
    frame = rec.join(meta).to_polars(include_system=True)
    assert all(v.startswith("rec#") for v in frame["__source__trace"])
    assert all(v.startswith("meta#") for v in frame["__source__age"])
    assert frame["__source__trace"].str.slice(4).to_list() == frame["__tag__rec"].to_list()
    assert frame["__source__age"].str.slice(5).to_list() == frame["__tag__meta"].to_list()


def test_self_join_keeps_distinct_system_tags(rec):
    filtered = rec.filter(pl.col("trace") > 0.6).rename_packets({"trace": "t2"})
    out = rec.join(filtered)
    assert "__tag__rec" in out.system_tag_columns and "__tag__rec__1" in out.system_tag_columns
    frame = out.to_polars(include_system=True)
    assert frame.height == 3
    assert frame["__tag__rec"].to_list() == frame["__tag__rec__1"].to_list()
    assert all(v.startswith("rec#") for v in frame["__source__t2"])
    # a third copy takes the next free suffix
    third = out.join(rec.rename_packets({"trace": "t3"}))
    assert "__tag__rec__2" in third.system_tag_columns


def test_join_commutative_example(rec, meta):
    cols = ["subject", "session", "trace", "age"]
    assert rows(Join()(rec, meta), cols) == rows(Join()(meta, rec), cols)


tag_values = st.one_of(st.none(), st.integers(0, 3))


@st.composite
def three_streams(draw):
    def source(name, tags, packet):
        keys = draw(st.lists(st.tuples(*[tag_values] * len(tags)), min_size=1, max_size=6, unique=True))
        data = [{**dict(zip(tags, k, strict=True)), packet: draw(st.floats(-5, 5, allow_nan=False))}
                for k in keys]
        return DictSource(data, tags=tags, source_id=name)

    return source("a", ["k", "j"], "x"), source("b", ["k"], "y"), source("c", ["j", "k"], "z")


@settings(max_examples=40, deadline=None)
@given(three_streams())
def test_join_commutative_and_associative(streams):
    a, b, c = streams
    cols = ["k", "j", "x", "y", "z"]
    reference = rows(Join()(Join()(a, b), c), cols)
    assert rows(Join()(a, Join()(b, c)), cols) == reference
    assert rows(Join()(c, b, a), cols) == reference
    assert rows(Join()(b, a, c), cols) == reference
    assert rows(Join()(a, b), ["k", "j", "x", "y"]) == rows(Join()(b, a), ["k", "j", "x", "y"])


# ----------------------------------------------------------------------------------- merge join


def test_merge_join_sorted_lists_with_aligned_sources():
    a = DictSource([{"id": 1, "x": 5.0}, {"id": 2, "x": 1.0}], tags=["id"], source_id="a")
    b = DictSource([{"id": 1, "x": 2.0}, {"id": 2, "x": 3.0}], tags=["id"], source_id="b")
    out = MergeJoin()(a, b)
    frame = out.to_polars(include_system=True)
    assert frame["x"].to_list() == [[2.0, 5.0], [1.0, 3.0]]
    assert [[s[0] for s in pair] for pair in frame["__source__x"].to_list()] == [["b", "a"], ["a", "b"]]
    commuted = MergeJoin()(b, a).to_polars(include_system=True)
    assert commuted.select("id", "x", "__source__x").rows() == frame.select("id", "x", "__source__x").rows()


def test_merge_join_three_way_and_nulls_last():
    a = DictSource([{"id": 1, "x": None}], tags=["id"], source_id="a")
    b = DictSource([{"id": 1, "x": 2.0}], tags=["id"], source_id="b")
    c = DictSource([{"id": 1, "x": 1.0}], tags=["id"], source_id="c")
    frame = MergeJoin()(a, b, c).to_polars(include_system=True)
    assert frame["x"].to_list() == [[1.0, 2.0, None]]
    assert [s[0] for s in frame["__source__x"][0]] == ["c", "b", "a"]


def test_merge_join_type_mismatch():
    a = DictSource([{"id": 1, "x": 1.0}], tags=["id"], source_id="a")
    b = DictSource([{"id": 1, "x": "s"}], tags=["id"], source_id="b")
    with pytest.raises(SchemaError, match="x"):
        MergeJoin()(a, b)


# ------------------------------------------------------------------------------------ semi-join


def test_semi_join(rec):
    keep = DictSource([{"subject": "m1", "flag": True}], tags=["subject"], source_id="keep")
    out = SemiJoin()(rec, keep)
    assert out.columns() == rec.columns()
    assert out.to_polars().rows() == [("m1", 1, 0.5), ("m1", 2, 0.7)]
    assert rec.semi_join(keep).identity == out.identity


def test_semi_join_errors(rec):
    other = DictSource([{"rig": "A", "y": 1}], tags=["rig"], source_id="o")
    with pytest.raises(SchemaError, match="no tag column"):
        SemiJoin()(rec, other)
    with pytest.raises(TypeError):
        SemiJoin()(rec, other, other)


# --------------------------------------------------------------------------------------- filter


def test_filter(rec):
    assert rec.filter(pl.col("trace") > 1).to_polars().rows() == [("m2", 1, 1.5), (None, 3, 9.0)]
    assert len(rec.filter(pl.col("subject").is_null())) == 1
    assert len(rec.filter(pl.col("subject") == "m9")) == 0


def test_filter_idempotent(rec):
    predicate = (pl.col("trace") > 0.6) & (pl.col("session") < 3)
    once = rec.filter(predicate)
    assert once.filter(predicate).to_polars().rows() == once.to_polars().rows()


def test_filter_errors(rec):
    with pytest.raises(SchemaError, match=r"\['nope'\].*\['subject', 'session', 'trace'\]"):
        rec.filter(pl.col("nope") > 1)
    with pytest.raises(SchemaError, match="system columns"):
        rec.filter(pl.col("__tag__rec") == "x")
    with pytest.raises(SchemaError, match="explicitly"):
        rec.filter(pl.all() > 0)
    with pytest.raises(SchemaError, match="Boolean"):
        rec.filter(pl.col("trace") + 1)
    with pytest.raises(SchemaError, match="expression"):
        Filter("trace > 1")(rec)
    with pytest.raises(OrcaError, match="Python function"):
        rec.filter(pl.col("trace").map_batches(lambda v: v > 1, return_dtype=pl.Boolean))


# ------------------------------------------------------------------------ select, drop, rename


def test_select_and_drop_tags(rec):
    assert SelectTags("session")(rec).columns() == ["session", "trace"]
    assert rec.select_tags("session", "subject").tag_columns == ("session", "subject")
    dropped = DropTags(["session"])(rec)
    assert dropped.tag_columns == ("subject",)
    # rows sharing tag values stay distinct by their system tags
    frame = dropped.to_polars(include_system=True)
    assert frame.filter(pl.col("subject") == "m1")["__tag__rec"].n_unique() == 2
    with pytest.raises(SchemaError, match=r"\['nope'\].*\['subject', 'session'\]"):
        rec.select_tags("nope")
    with pytest.raises(SchemaError, match="nope"):
        rec.drop_tags("nope")
    with pytest.raises(SchemaError, match="repeat"):
        SelectTags(["session", "session"])


def test_select_of_select_is_select_of_intersection(rec):
    twice = rec.select_tags("subject", "session").select_tags("session")
    assert twice.to_polars().rows() == rec.select_tags("session").to_polars().rows()


def test_select_and_drop_packets():
    s = DictSource([{"id": 1, "x": 1.0, "y": "a", "z": True}], tags=["id"], source_id="s")
    out = SelectPackets(["z", "x"])(s)
    assert out.to_polars(include_system=True).columns == ["id", "z", "x", "__tag__s", "__source__x", "__source__z"]
    assert DropPackets("y")(s).packet_columns == ("x", "z")
    assert s.select_packets("x", "y").select_packets("y").to_polars().rows() == [(1, "a")]
    with pytest.raises(SchemaError, match=r"\['w'\].*\['x', 'y', 'z'\]"):
        s.select_packets("w")
    with pytest.raises(SchemaError, match="no packet column"):
        s.select_packets()
    with pytest.raises(SchemaError, match="no packet column"):
        s.drop_packets("x", "y", "z")


def test_rename_tags_and_packets(rec):
    out = rec.rename_tags({"subject": "animal"}).rename_packets({"trace": "signal"})
    assert out.columns() == ["animal", "session", "signal"]
    assert "__source__signal" in out.system_columns and "__source__trace" not in out.system_columns
    assert out.to_polars().rows() == rec.to_polars().rows()
    swapped = rec.rename_tags({"subject": "session", "session": "subject"})
    assert swapped.tag_columns == ("session", "subject")


def test_rename_errors(rec):
    with pytest.raises(SchemaError, match=r"\['nope'\].*\['subject', 'session'\]"):
        RenameTags({"nope": "x"})(rec)
    with pytest.raises(SchemaError, match="two columns named"):
        rec.rename_tags({"subject": "session"})
    with pytest.raises(SchemaError, match="two columns named"):
        rec.rename_packets({"trace": "subject"})
    with pytest.raises(SchemaError, match="'__'"):
        RenamePackets({"trace": "__x"})(rec)
    with pytest.raises(SchemaError, match="packet"):
        rec.rename_packets({"subject": "s"})


def test_rename_packets_keeps_path_mark(tmp_path):
    import pathlib

    (tmp_path / "f.txt").write_text("hi")
    s = DictSource([{"id": 1, "file": pathlib.Path(tmp_path / "f.txt")}], tags=["id"], source_id="p")
    assert s.rename_packets({"file": "img"}).path_columns == frozenset({"img"})
    assert s.join(DictSource([{"id": 1, "y": 1}], tags=["id"], source_id="q")).path_columns == {"file"}


# ------------------------------------------------------------------------------------- map tags


def test_map_tags_expressions(rec):
    out = rec.map_tags({"cohort": pl.col("subject").str.slice(0, 1), "session": pl.col("session") * 10})
    assert out.tag_columns == ("subject", "session", "cohort")
    assert out.to_polars().rows()[0] == ("m1", 10, "m", 0.5)


def test_map_tags_function_runs_once_per_distinct_tag():
    s = DictSource([{"subject": "m1", "session": i, "x": float(i)} for i in range(4)]
                   + [{"subject": "m2", "session": 0, "x": 9.0}],
                   tags=["subject", "session"], source_id="s")
    calls = []

    def cohort(tag):
        calls.append(tag)
        return {"cohort": tag["subject"].upper()}

    out = MapTags(cohort)(s.select_tags("subject"))
    assert len(calls) == 2
    assert out.tag_columns == ("subject", "cohort")
    assert out.to_polars()["cohort"].to_list() == ["M1"] * 4 + ["M2"]


def test_map_tags_function_with_dtypes_is_lazy(rec):
    calls = []

    def fn(tag):
        calls.append(tag)
        return {"known": tag["subject"] is not None}

    out = MapTags(fn, dtypes={"known": pl.Boolean})(rec)
    assert calls == [] and out.full_schema.field("known").type == "bool"
    assert out.to_polars()["known"].to_list() == [True, True, True, False]
    assert len(calls) == 4


def test_map_tags_errors(rec):
    with pytest.raises(SchemaError, match=r"\['trace'\].*\['subject', 'session'\]"):
        rec.map_tags({"t": pl.col("trace") > 1})
    with pytest.raises(SchemaError, match="packet"):
        rec.map_tags({"trace": pl.col("session")})
    with pytest.raises(SchemaError, match="same keys"):
        rec.map_tags(lambda t: {"a": 1} if t["session"] == 1 else {"b": 2})
    with pytest.raises(SchemaError, match="empty"):
        rec.filter(pl.col("trace") > 100).map_tags(lambda t: {"a": 1})
    assert MapTags(lambda t: {"a": 1}, dtypes={"a": pl.Int64})(rec.filter(pl.col("trace") > 100)).tag_columns[-1] == "a"


# ---------------------------------------------------------------------------------------- batch


def test_batch_all_rows(rec):
    out = Batch()(rec)
    frame = out.to_polars(include_system=True)
    assert frame.height == 1
    assert out.tag_columns == ("subject", "session")
    assert frame["trace"].to_list() == [[0.5, 0.7, 1.5, 9.0]]  # sorted by tags, nulls last
    assert frame["subject"].to_list() == [["m1", "m1", "m2", None]]
    assert [s[:4] for s in frame["__source__trace"][0]] == ["rec#"] * 4
    assert len(frame["__tag__rec"][0]) == 4


def test_batch_size_and_by(rec):
    chunks = rec.batch(size=3).to_polars()
    assert chunks["trace"].to_list() == [[0.5, 0.7, 1.5], [9.0]]
    grouped = rec.batch(by=["subject"]).to_polars()
    assert grouped["subject"].to_list() == ["m1", "m2", None]
    assert grouped["session"].to_list() == [[1, 2], [1], [3]]
    both = Batch(size=1, by=("subject",))(rec).to_polars()
    assert both["subject"].to_list() == ["m1", "m1", "m2", None]


def test_batch_errors_and_empty(rec):
    with pytest.raises(SchemaError, match="positive"):
        Batch(size=0)
    with pytest.raises(SchemaError, match=r"\['nope'\]"):
        Batch(by=("nope",))(rec)
    assert len(rec.filter(pl.col("trace") > 100).batch()) == 0


# ---------------------------------------------------------------------------------------- union


def test_union(rec):
    other = DictSource([{"session": 5, "subject": "m3", "trace": 1}], tags=["subject", "session"], source_id="o")
    out = rec.union(other)
    assert out.columns() == rec.columns()
    assert out.to_polars().rows()[-1] == ("m3", 5, 1.0)  # int and float unify
    frame = out.to_polars(include_system=True)
    assert frame["__tag__o"].null_count() == 4 and frame["__tag__rec"].null_count() == 1


def test_union_duplicates(rec):
    high = rec.filter(pl.col("trace") > 0.6)
    low = rec.filter(pl.col("trace") < 1)
    with pytest.raises(SchemaError, match="more than one input.*distinct=True"):
        high.union(low).to_polars()
    out = Union(distinct=True)(high, low)
    assert out.to_polars()["trace"].to_list() == [0.7, 1.5, 9.0, 0.5]


def test_union_schema_errors(rec):
    with pytest.raises(SchemaError, match=r"missing \['session'\]"):
        rec.union(rec.drop_tags("session"))
    other = DictSource([{"subject": "m3", "session": 1, "trace": "x"}], tags=["subject", "session"], source_id="o")
    with pytest.raises(SchemaError, match="trace"):
        rec.union(other)


# ------------------------------------------------------------------------------------- identity


def test_identity_depends_on_parameters_and_inputs(rec, meta):
    assert Filter(pl.col("trace") > 1).identity == Filter(pl.col("trace") > 1).identity
    assert Filter(pl.col("trace") > 1).identity != Filter(pl.col("trace") > 2).identity
    assert Batch(size=2).identity != Batch(size=3).identity
    assert SelectTags("a").identity == SelectTags(["a"]).identity
    assert Join().identity != MergeJoin().identity
    assert rec.join(meta).identity != meta.join(rec).identity
    assert rec.filter(pl.col("trace") > 1).identity != meta.filter(pl.col("age") > 1).identity
    assert len({rec.batch(size=2).identity, rec.batch(size=3).identity, rec.identity}) == 3


IDENTITY_SCRIPT = textwrap.dedent("""
    import polars as pl
    from orca.operators import Filter, Join, MapTags
    from orca.sources import DictSource
    a = DictSource([{"id": 1, "x": 1.0}], tags=["id"], source_id="a")
    b = DictSource([{"id": 1, "y": 1.0}], tags=["id"], source_id="b")
    print(Join()(a, b).filter(pl.col("x") > 1).identity)
    print(MapTags({"g": pl.col("id") % 2}).identity)
""")


def test_identity_stable_across_processes():
    a = DictSource([{"id": 1, "x": 1.0}], tags=["id"], source_id="a")
    b = DictSource([{"id": 1, "y": 1.0}], tags=["id"], source_id="b")
    here = [Join()(a, b).filter(pl.col("x") > 1).identity, MapTags({"g": pl.col("id") % 2}).identity]
    result = subprocess.run([sys.executable, "-c", IDENTITY_SCRIPT], capture_output=True, text=True, check=True)
    assert result.stdout.split() == here


def test_map_tags_function_identity():
    def f(tag):
        return {"g": 1}

    def g(tag):
        return {"g": 2}

    assert MapTags(f).identity == MapTags(f).identity
    assert MapTags(f).identity != MapTags(g).identity


# ------------------------------------------------------------------------ laziness, recording


def test_operators_do_not_run_deferred_inputs(rec):
    from orca.streams import Stream

    calls = []

    def compute():
        calls.append(1)
        return rec.to_polars(include_system=True)

    deferred = Stream(compute, tag_columns=rec.tag_columns, packet_columns=rec.packet_columns,
                      identity="deferred", schema=rec.full_schema)
    out = (deferred.filter(pl.col("trace") > 0.6).rename_packets({"trace": "t"})
           .join(DictSource([{"subject": "m1", "age": 3}], tags=["subject"], source_id="m"))
           .drop_packets("age").batch(by=["subject"])
           .union(rec.rename_packets({"trace": "t"}).batch(by=["subject"]), distinct=True))
    out2 = MapTags(lambda t: {"g": 1}, dtypes={"g": pl.Int64})(deferred)
    assert calls == []
    assert str(out.full_schema.field("t").type) == "large_list<item: double>"
    assert out2.tag_columns == ("subject", "session", "g")
    assert len(out) == 4 and calls


def test_operators_are_recorded_by_the_active_pipeline(rec, meta):
    from orca import _context

    class Recorder:
        def __init__(self):
            self.nodes = []

        def record(self, application):
            self.nodes.append((type(application.producer).__name__, [s.identity for s in application.inputs]))
            return application.output

    recorder = Recorder()
    token = _context.enter(recorder)
    try:
        rec.join(meta).filter(pl.col("age") > 1)
    finally:
        _context.leave(token)
    assert [name for name, _ in recorder.nodes] == ["Join", "Filter"]
    assert recorder.nodes[0][1] == [rec.identity, meta.identity]
