"""A local store's appends: Parquet files written by pyarrow, committed through deltalake."""

from __future__ import annotations

import datetime
import decimal
import json
import math
import os
import tempfile

import hypothesis
import hypothesis.strategies as st
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError

import orca
from orca.stores.parquet_files import Layout, append_file, statistics

UTC = datetime.UTC


def _every_type() -> pa.Table:
    return pa.table({
        "i": pa.array([3, -2, None], pa.int64()),
        "i8": pa.array([1, -2, 5], pa.int8()),
        "f": pa.array([0.0, 1.5, -0.25]),
        "f32": pa.array([1.5, 2.5, None], pa.float32()),
        "b": [True, None, False],
        "s": ["x", "y" * 10, None],
        "long": ["a" * 100, "b", "c"],
        "d": pa.array([datetime.date(2020, 1, 2), None, datetime.date(2021, 3, 4)]),
        "tz": pa.array([datetime.datetime(2020, 1, 1, 1, 1, 1, 123456, tzinfo=UTC),
                        datetime.datetime(2021, 1, 1, tzinfo=UTC), None], pa.timestamp("us", tz="UTC")),
        "ntz": pa.array([datetime.datetime(2020, 1, 1), None, datetime.datetime(2021, 1, 1)], pa.timestamp("us")),
        "dec": pa.array([decimal.Decimal("1.25"), None, decimal.Decimal("3.50")], pa.decimal128(10, 2)),
        "bin": [b"a", b"b", None],
        "l": [[1], None, [2, 3]],
        "st": [{"a": 1}, None, {"a": 2}],
        "n": pa.nulls(3, pa.string()),
    })


def _added_stats(folder) -> list[dict]:
    log = sorted(os.listdir(os.path.join(folder, "_delta_log")))
    adds = [json.loads(line)["add"] for name in log if name.endswith(".json")
            for line in open(os.path.join(folder, "_delta_log", name)) if '"add"' in line]
    return [json.loads(a["stats"]) for a in adds]


def test_statistics_agree_with_deltalake_s_where_deltalake_s_are_right(tmp_path):
    rows = _every_type()
    write_deltalake(tmp_path / "theirs", rows)
    write_deltalake(tmp_path / "ours", rows.slice(0, 0))
    ours = DeltaTable(tmp_path / "ours")
    rows = rows.cast(pa.schema(ours.schema().to_arrow()))
    assert append_file(ours, str(tmp_path / "ours"), rows, Layout(snappy=True), CommitProperties()) == 1
    theirs, mine = _added_stats(tmp_path / "theirs")[0], _added_stats(tmp_path / "ours")[-1]
    assert mine["numRecords"] == theirs["numRecords"] == 3
    same = ["i", "i8", "f", "f32", "b", "s", "d", "tz", "ntz", "dec", "st"]  # deltalake's formats, value for value
    for kind in ("minValues", "maxValues"):
        assert {c: mine[kind][c] for c in same} == {c: theirs[kind][c] for c in same}, kind
    # Where deltalake's differ: text kept whole up to 256 characters.
    assert mine["minValues"]["long"] == "a" * 100 and mine["maxValues"]["long"] == "c"
    # Every column a reader could prune by has bounds (binary and list columns are not pruned).
    assert set(mine["minValues"]) == set(mine["maxValues"]) == {*same, "long"}
    assert mine["nullCount"] == {**{c: rows.column(c).null_count for c in rows.column_names if c not in ("l", "st")},
                                 "st": {"a": 1}}
    assert pl.read_delta(str(tmp_path / "ours")).equals(pl.read_delta(str(tmp_path / "theirs")))


EDGES = {  # per column: values, then a filter each row must pass (through deltalake's pyarrow dataset)
    "f": ([float("nan"), 0.5, None], "f > 1"),  # NaN orders above every number in DuckDB
    "inf": ([float("inf"), float("-inf"), 1.0], "inf > 1e308 OR inf < -1e308"),
    # (found by the property below: bounded by the largest double, pyarrow dropped this filter)
    "inf_at_edge": ([float("inf"), float("nan"), 1.0], "inf_at_edge <= 1.7976931348623157e308"),
    "s": (["\U0010ffff" * 300, "a" * 300 + "b", "z"], "s >= '\U0010ffff' OR s > 'a'"),
    # (found by the property below: deltalake read a \u-escaped surrogate pair as another character)
    "astral": (["\U00020000", None, None], "astral > '\U00010000'"),
    "late": ([datetime.datetime(2026, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC), None, None],
             "late > TIMESTAMPTZ '2026-01-01 00:00:00.9995+00'"),
    "early": ([datetime.datetime(1, 1, 1, 0, 0, 0, 1, tzinfo=UTC), None, None], "early < TIMESTAMPTZ '0002-01-01 00:00:00+00'"),
    "dec": ([decimal.Decimal("1.10"), decimal.Decimal("-7.30"), None], "dec >= 1.10 OR dec <= -7.30"),
    "st": ([{"a": None}, None, {"a": 5}], "st.a = 5 OR st.a IS NULL"),
    "nothing": ([None, None, None], "nothing IS NULL"),
}


@pytest.mark.parametrize("column", sorted(EDGES))
def test_no_filter_loses_a_row_through_the_arrow_dataset(tmp_path, column):
    """What DuckDB is handed (docs/assets.md) skips a file by its bounds, and skips it from
    every filter on a column it has none for: it must count what the rows read whole count."""
    duckdb = pytest.importorskip("duckdb")
    values, where = EDGES[column]
    types = {"s": pa.string(), "astral": pa.string(), "late": pa.timestamp("us", tz="UTC"), "early": pa.timestamp("us", tz="UTC"),
             "dec": pa.decimal128(10, 2), "st": pa.struct([("a", pa.int64())]), "nothing": pa.string()}
    rows = pa.table({column: pa.array(values, types.get(column, pa.float64()))})
    folder = str(tmp_path / "t")
    write_deltalake(folder, rows.slice(0, 0))
    table = DeltaTable(folder)
    append_file(table, folder, rows.cast(pa.schema(table.schema().to_arrow())), Layout(snappy=False),
                CommitProperties())
    data = DeltaTable(folder).to_pyarrow_dataset()  # noqa: F841 - read by DuckDB by name
    whole = DeltaTable(folder).to_pyarrow_table()  # noqa: F841 - (a subquery would be pushed down too)
    wanted = duckdb.sql(f"SELECT count(*) FROM whole WHERE {where}").fetchall()[0]
    found = duckdb.sql(f"SELECT count(*) FROM data WHERE {where}").fetchall()[0]
    assert found == wanted and found[0] > 0


@hypothesis.settings(max_examples=40, deadline=None)
@hypothesis.given(ints=st.lists(st.integers(-2**63, 2**63 - 1), min_size=1, max_size=5),
                  floats=st.lists(st.floats(allow_nan=True, allow_infinity=True), min_size=1, max_size=5),
                  texts=st.lists(st.text(max_size=300), min_size=1, max_size=5))
def test_every_value_is_within_its_file_s_bounds(ints, floats, texts):
    """The property behind the filters above, on random values: every value written lies within
    the bounds written for its column; a file with NaN or an infinity has none (JSON has no
    infinity, and a finite stand-in is not a bound)."""
    n = min(len(ints), len(floats), len(texts))
    rows = pa.table({"i": ints[:n], "f": pa.array(floats[:n], pa.float64()), "t": texts[:n]})
    with tempfile.TemporaryDirectory() as folder:
        pq.write_table(rows, f"{folder}/x.parquet", use_dictionary=False)
        stats = statistics(rows, pq.read_metadata(f"{folder}/x.parquet"))
    if not all(math.isfinite(v) for v in floats[:n]):
        assert stats == {"numRecords": n}
        return
    low, high = stats["minValues"], stats["maxValues"]
    assert all(low["i"] <= v <= high["i"] for v in ints[:n])
    assert all(low["f"] <= v <= high["f"] for v in floats[:n])
    # text compares as UTF-8 bytes, as Parquet and the readers do
    assert all(low["t"].encode() <= v.encode() <= high["t"].encode() for v in texts[:n])
    json.dumps(stats, allow_nan=False)  # valid JSON: no NaN or infinity


def test_orca_s_reference_and_timing_columns_can_be_filtered_in_duckdb(tmp_path):
    """Before session 12, ``__source__*``, ``__system_tags`` and ``__duration_s`` had no
    statistics, and DuckDB over the Arrow dataset found no row in any filter on them."""
    duckdb = pytest.importorskip("duckdb")

    @orca.function_pod(output_keys="y")
    def double(x: int) -> int:
        return 2 * x

    store = orca.DeltaStore(tmp_path / "s")
    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        double.pod(orca.DictSource([{"k": i, "x": i} for i in range(5)], tags=["k"], source_id="src"))
    pipeline.run(progress=False)
    provenance = DeltaTable(store.uri("pipelines/p/double")).to_pyarrow_dataset()  # noqa: F841 - DuckDB reads it
    reference = pl.read_delta(store.uri("pipelines/p/double"))["__source__x"][2]
    assert duckdb.sql(f"SELECT count(*) FROM provenance WHERE __source__x = '{reference}'").fetchall()[0] == (1,)
    assert duckdb.sql("SELECT count(*) FROM provenance WHERE __system_tags LIKE '%src%'").fetchall()[0] == (5,)
    results = DeltaTable(store.uri(double.pod.results_table)).to_pyarrow_dataset()  # noqa: F841
    assert duckdb.sql("SELECT count(*) FROM results WHERE __duration_s >= 0").fetchall()[0] == (5,)


def test_bare_columns_get_no_statistics_and_readers_still_filter(tmp_path):
    """Binary ids: no statistics at all (deltalake writes none for binary either, and its
    readers then keep the file)."""
    rows = pa.table({"k": [b"\x01" * 16, b"\x02" * 16], "v": [1, 2]})
    write_deltalake(tmp_path / "t", rows.slice(0, 0))
    table = DeltaTable(tmp_path / "t")
    append_file(table, str(tmp_path / "t"), rows.cast(pa.schema(table.schema().to_arrow())),
                Layout(snappy=False, bare=frozenset({"k"})), CommitProperties())
    stats = _added_stats(tmp_path / "t")[-1]
    assert "k" not in stats["minValues"] and stats["minValues"] == {"v": 1} and stats["maxValues"] == {"v": 2}
    assert pl.scan_delta(str(tmp_path / "t")).filter(pl.col("v") > 1).collect()["v"].to_list() == [2]
    assert DeltaTable(tmp_path / "t").to_pyarrow_table(filters=[("v", "<", 2)])["v"].to_pylist() == [1]


def test_the_version_returned_is_the_commit_s_own_when_others_landed_first(tmp_path):
    """The handle is not moved by the commit, and other writers' commits may land before it
    (appends do not conflict): the version returned is the one holding this file."""
    folder = str(tmp_path / "t")
    write_deltalake(folder, pa.table({"a": [0]}))
    stale = DeltaTable(folder)
    for i in (1, 2):  # another writer, after this handle was loaded
        write_deltalake(folder, pa.table({"a": [i]}), mode="append")
    version = append_file(stale, folder, pa.table({"a": [9]}), Layout(snappy=False),
                          CommitProperties(custom_metadata={"who": "me"}))
    assert version == 3 and stale.version() == 3  # (and the handle is up to date for its next commit)
    assert DeltaTable(folder, version=3).history(1)[0]["who"] == "me"
    assert sorted(pl.read_delta(folder)["a"].to_list()) == [0, 1, 2, 9]


def test_a_conflicting_commit_leaves_no_file_behind(tmp_path):
    """Two commits carrying one app transaction conflict (what keeps two asset syncs apart):
    the loser raises and its file is removed, so no unreferenced file is left."""
    folder = str(tmp_path / "t")
    write_deltalake(folder, pa.table({"a": [0]}))
    loser = DeltaTable(folder)
    winner = DeltaTable(folder)
    append_file(winner, folder, pa.table({"a": [1]}), Layout(snappy=False),
                CommitProperties(app_transactions=[Transaction("orca.sync", 1)]))
    files = set(os.listdir(folder))
    with pytest.raises(CommitFailedError):
        append_file(loser, folder, pa.table({"a": [2]}), Layout(snappy=False),
                    CommitProperties(app_transactions=[Transaction("orca.sync", 1)]))
    assert set(os.listdir(folder)) == files
    assert sorted(pl.read_delta(folder)["a"].to_list()) == [0, 1]


def test_a_store_s_appends_are_read_back_by_polars_and_deltalake(tmp_path):
    store = orca.DeltaStore(tmp_path / "s")
    when = datetime.datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)
    table = pa.table({"k": ["a", "b"], "v": [1.5, None], "at": pa.array([when, when], pa.timestamp("us", tz="UTC"))})
    store.append("things", table)
    store.append("things", table.slice(0, 1))
    store.flush()
    uri = store.uri("things")
    assert pl.read_delta(uri).height == DeltaTable(uri).to_pyarrow_table().num_rows == 3
    assert pl.read_delta(uri)["at"].to_list() == [when] * 3
    assert [s["numRecords"] for s in _added_stats(uri)] == [3]  # (the store's buffer: one commit)


def test_a_table_another_tool_gave_a_constraint_keeps_deltalake_s_writer(tmp_path):
    """deltalake's writer enforces constraints (and column mapping, invariants...); this
    module does not, so such a table's appends go through it."""
    store = orca.DeltaStore(tmp_path / "s")
    store.append("things", pa.table({"v": [1]}))
    store.flush()
    DeltaTable(store.uri("things")).alter.add_constraint({"positive": "v > 0"})
    store.append("things", pa.table({"v": [-1]}))
    with pytest.raises(orca.StoreError, match="things"):
        store.flush()
    assert pl.read_delta(store.uri("things"))["v"].to_list() == [1]


def test_a_value_with_no_bound_leaves_its_file_without_column_statistics(tmp_path):
    """``datetime.max``-like sentinels: the maximum rounded up to the millisecond would pass
    year 9999. The file gets ``numRecords`` alone (every reader then reads it) and the append
    goes on."""
    store = orca.DeltaStore(tmp_path / "s")
    last = datetime.datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    store.append("things", pa.table({"at": pa.array([last], pa.timestamp("us", tz="UTC")), "v": [1]}))
    store.flush()
    assert _added_stats(store.uri("things")) == [{"numRecords": 1}]
    assert DeltaTable(store.uri("things")).to_pyarrow_table(filters=[("v", "=", 1)]).num_rows == 1


_VALUES = {
    "i": st.integers(-2**63, 2**63 - 1),
    "f": st.floats(allow_nan=True, allow_infinity=True),
    "s": st.text(max_size=300),
    "at": st.datetimes(min_value=datetime.datetime(1, 1, 2), max_value=datetime.datetime(9999, 12, 30),
                       timezones=st.just(UTC)),
}


@hypothesis.settings(max_examples=30, deadline=None, suppress_health_check=[hypothesis.HealthCheck.too_slow])
@hypothesis.given(column=st.sampled_from(sorted(_VALUES)), data=st.data())
def test_filters_through_the_arrow_dataset_find_what_a_full_read_finds(tmp_path_factory, column, data):
    """Whatever the values, DuckDB's filters over the Arrow dataset (which skips files by their
    statistics) count what they count over the rows read whole."""
    duckdb = pytest.importorskip("duckdb")
    files = data.draw(st.lists(st.lists(st.one_of(st.none(), _VALUES[column]), min_size=1, max_size=6),
                               min_size=1, max_size=3))
    probe = data.draw(_VALUES[column])
    dtype = {"i": pa.int64(), "f": pa.float64(), "s": pa.string(), "at": pa.timestamp("us", tz="UTC")}[column]
    folder = str(tmp_path_factory.mktemp("t") / "t")
    write_deltalake(folder, pa.table({column: pa.array([], dtype)}))
    table = DeltaTable(folder)
    for values in files:
        append_file(table, folder, pa.table({column: pa.array(values, dtype)}), Layout(snappy=False),
                    CommitProperties())
    pruned = DeltaTable(folder).to_pyarrow_dataset()  # noqa: F841 - read by DuckDB by name
    whole = DeltaTable(folder).to_pyarrow_table()  # noqa: F841
    for op in ("<", "<=", "=", ">=", ">"):
        query = f"SELECT count(*) FROM {{}} WHERE \"{column}\" {op} $probe"
        expected = duckdb.execute(query.format("whole"), {"probe": probe}).fetchall()
        assert duckdb.execute(query.format("pruned"), {"probe": probe}).fetchall() == expected, (op, probe)
