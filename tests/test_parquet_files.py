"""A local store's appends: Parquet files written by pyarrow, committed through deltalake."""

from __future__ import annotations

import datetime
import decimal
import json
import os

import polars as pl
import pyarrow as pa
import pytest
from deltalake import CommitProperties, DeltaTable, Transaction, write_deltalake
from deltalake.exceptions import CommitFailedError

import orca
from orca.stores.parquet_files import Layout, append_file

UTC = datetime.UTC


def _every_type() -> pa.Table:
    return pa.table({
        "i": pa.array([3, -2, None], pa.int64()),
        "i8": pa.array([1, -2, 5], pa.int8()),
        "f": pa.array([float("nan"), 1.5, -0.25]),
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


def test_statistics_agree_with_deltalake_s_where_both_keep_one(tmp_path):
    rows = _every_type()
    write_deltalake(tmp_path / "theirs", rows)
    write_deltalake(tmp_path / "ours", rows.slice(0, 0))
    ours = DeltaTable(tmp_path / "ours")
    rows = rows.cast(pa.schema(ours.schema().to_arrow()))
    assert append_file(ours, str(tmp_path / "ours"), rows, Layout(snappy=True), CommitProperties()) == 1
    theirs, mine = _added_stats(tmp_path / "theirs")[0], _added_stats(tmp_path / "ours")[-1]
    assert mine["numRecords"] == theirs["numRecords"] == 3
    for kind in ("minValues", "maxValues", "nullCount"):
        both = set(mine[kind]) & set(theirs[kind])
        assert {c: mine[kind][c] for c in both} == {c: theirs[kind][c] for c in both}, kind  # deltalake's formats
    assert mine["nullCount"] == {c: rows.column(c).null_count for c in mine["nullCount"]}
    # Left out where this module has no format (or nothing to bound); never a wrong bound.
    assert set(mine["minValues"]) == {"i", "i8", "f", "f32", "b", "s", "d", "tz"}
    assert set(mine["nullCount"]) >= {"i", "f", "b", "s", "d", "tz", "ntz", "dec", "bin", "n"}
    assert pl.read_delta(str(tmp_path / "ours")).equals(pl.read_delta(str(tmp_path / "theirs")))


def test_bare_columns_get_no_statistics_and_readers_still_filter(tmp_path):
    rows = pa.table({"k": [b"\x01" * 16, b"\x02" * 16], "v": [1, 2]})
    write_deltalake(tmp_path / "t", rows.slice(0, 0))
    table = DeltaTable(tmp_path / "t")
    append_file(table, str(tmp_path / "t"), rows.cast(pa.schema(table.schema().to_arrow())),
                Layout(snappy=False, bare=frozenset({"k"})), CommitProperties())
    stats = _added_stats(tmp_path / "t")[-1]
    assert "k" not in stats["nullCount"] and stats["minValues"] == {"v": 1} and stats["maxValues"] == {"v": 2}
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
