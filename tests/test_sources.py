"""Tests for orca.sources: every source kind, system columns, record ids (stable under
adding, removing and reordering rows), duplicates, nulls, default ids and errors."""

from __future__ import annotations

import os
import pathlib
import random

import deltalake
import hypothesis.strategies as st
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import given

import orca
from orca.errors import SourceError
from orca.hashing import PATH_METADATA, is_path_field
from orca.sources import (
    ArrowSource,
    CSVSource,
    DeltaSource,
    DictSource,
    GlobSource,
    ParquetSource,
    PolarsSource,
)

ROWS = [{"subject": f"m{i}", "x": float(i)} for i in range(6)]
FRAME = pl.DataFrame(ROWS)


def record_ids(source) -> dict:
    """Tag values -> record id, read from the system tag column."""
    frame = source.to_polars(include_system=True)
    tag_col = "__tag__" + source.source_id
    return {row[:-1]: row[-1] for row in frame.select(*source.tag_columns, tag_col).rows()}


def check_source(source, source_id, tags, packets, rows):
    assert source.source_id == source_id
    assert source.tag_columns == tuple(tags)
    assert source.packet_columns == tuple(packets)
    assert sorted(source.to_polars().rows()) == sorted(rows)
    full = source.to_polars(include_system=True)
    system_tag = f"__tag__{source_id}"
    assert full.columns == [*tags, *packets, system_tag, *(f"__source__{p}" for p in packets)]
    for p in packets:
        expected = [f"{source_id}#{rid}" for rid in full[system_tag]]
        assert full[f"__source__{p}"].to_list() == expected
    assert full[system_tag].n_unique() == len(full)


# -- each source kind ------------------------------------------------------------------------


def test_dict_source():
    src = DictSource(ROWS, tags=["subject"], source_id="dicts")
    check_source(src, "dicts", ["subject"], ["x"], [(r["subject"], r["x"]) for r in ROWS])


def test_dict_source_path_values_become_path_columns(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    src = DictSource([{"k": 1, "f": tmp_path / "a.txt", "n": "x"}], tags=["k"], source_id="p")
    assert src.path_columns == {"f"}
    assert is_path_field(src.schema()[1].field("f"))
    (_, packet), = src
    assert packet["f"] == tmp_path / "a.txt"


def test_arrow_source():
    src = ArrowSource(FRAME.to_arrow(), tags=["subject"], source_id="arrows")
    check_source(src, "arrows", ["subject"], ["x"], FRAME.rows())


def test_arrow_source_keeps_path_metadata(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    table = pa.table({"k": [1], "f": [str(tmp_path / "a.txt")]})
    table = table.cast(pa.schema([table.schema.field("k"), table.schema.field("f").with_metadata(PATH_METADATA)]))
    src = ArrowSource(table, tags=["k"], source_id="a")
    assert src.path_columns == {"f"}
    assert is_path_field(src.to_arrow().schema.field("f"))


@pytest.mark.parametrize("lazy", [False, True])
def test_polars_source(lazy):
    src = PolarsSource(FRAME.lazy() if lazy else FRAME, tags=["subject"], source_id="pl")
    check_source(src, "pl", ["subject"], ["x"], FRAME.rows())


def test_csv_source(tmp_path):
    FRAME.write_csv(tmp_path / "scores.csv")
    src = CSVSource(tmp_path / "scores.csv", tags=["subject"])
    check_source(src, "scores", ["subject"], ["x"], FRAME.rows())
    assert CSVSource(str(tmp_path / "scores.csv"), tags=["subject"], source_id="s").source_id == "s"


def test_csv_source_passes_read_options(tmp_path):
    (tmp_path / "t.csv").write_text("subject;x\nm1;1\n")
    src = CSVSource(tmp_path / "t.csv", tags=["subject"], separator=";")
    assert src.to_polars().rows() == [("m1", 1)]


def test_parquet_source(tmp_path):
    FRAME.write_parquet(tmp_path / "scores.parquet")
    src = ParquetSource(tmp_path / "scores.parquet", tags=["subject"])
    check_source(src, "scores", ["subject"], ["x"], FRAME.rows())


def test_delta_source(tmp_path):
    path = tmp_path / "scores"
    deltalake.write_deltalake(str(path), FRAME.to_arrow())
    src = DeltaSource(path, tags=["subject"])
    check_source(src, "scores", ["subject"], ["x"], FRAME.rows())


def test_delta_source_version_pins_a_snapshot(tmp_path):
    path = str(tmp_path / "t")
    deltalake.write_deltalake(path, FRAME.head(2).to_arrow())
    deltalake.write_deltalake(path, FRAME.tail(1).to_arrow(), mode="append")
    assert len(DeltaSource(path, tags=["subject"])) == 3
    assert len(DeltaSource(path, tags=["subject"], version=0)) == 2


@pytest.fixture
def images(tmp_path):
    """data/{subject}/{session}.tif with distinct contents, plus a file the pattern skips."""
    for subject, session in [("m1", "s1"), ("m1", "s2"), ("m2", "s1")]:
        (tmp_path / "data" / subject).mkdir(parents=True, exist_ok=True)
        (tmp_path / "data" / subject / f"{session}.tif").write_bytes(f"{subject}/{session}".encode())
    (tmp_path / "data" / "m2" / "notes.txt").write_text("not an image")
    return tmp_path


def test_glob_source_fields_become_string_tags_and_files_a_path_packet(images):
    src = GlobSource(str(images / "data/{subject}/{session}.tif"), source_id="imgs")
    check_source(src, "imgs", ["subject", "session"], ["path"], [
        ("m1", "s1", str(images / "data/m1/s1.tif")),
        ("m1", "s2", str(images / "data/m1/s2.tif")),
        ("m2", "s1", str(images / "data/m2/s1.tif")),
    ])
    tags, packets = src.schema()
    assert tags.field("subject").type == pa.large_string()
    assert is_path_field(packets.field("path"))
    for tag, packet in src:
        assert isinstance(packet["path"], pathlib.Path)
        assert packet["path"].read_bytes() == f"{tag['subject']}/{tag['session']}".encode()


def test_glob_source_named_packet_column_and_pathlike_pattern(images):
    src = GlobSource(images / "data" / "{subject}" / "{session}.tif", packet_column="image")
    assert src.packet_columns == ("image",)
    assert src.path_columns == {"image"}
    assert len(src) == 3


def test_glob_source_relative_pattern(images, monkeypatch):
    monkeypatch.chdir(images)
    src = GlobSource("data/{subject}/{session}.tif")
    assert sorted(t["subject"] + t["session"] for t, _ in src) == ["m1s1", "m1s2", "m2s1"]
    assert all(p["path"].is_absolute() for _, p in src)


def test_glob_source_with_wildcards(images):
    src = GlobSource(str(images / "data/*/{session}.tif"), keep_duplicates=True)
    assert src.tag_columns == ("session",)
    assert sorted(t["session"] for t, _ in src) == ["s1", "s1", "s2"]


def test_glob_source_stores_resolved_paths_of_regular_files_only(images):
    data = images / "data"
    (data / "m3").symlink_to(data / "m1")  # a linked folder
    (data / "m2" / "s2.tif").symlink_to(data / "m1" / "s2.tif")  # a linked file
    (data / "m2" / "s3.tif").symlink_to(data / "nowhere.tif")  # a broken link: no file
    (data / "m2" / "s4.tif").mkdir()  # a folder: no file
    src = GlobSource(str(images / "data" / "." / "{subject}" / "{session}.tif"))
    paths = {t["subject"] + t["session"]: str(p["path"]) for t, p in src}
    real = os.path.realpath(data)
    assert paths == {"m1s1": f"{real}/m1/s1.tif", "m1s2": f"{real}/m1/s2.tif", "m2s1": f"{real}/m2/s1.tif",
                     "m2s2": f"{real}/m1/s2.tif", "m3s1": f"{real}/m1/s1.tif", "m3s2": f"{real}/m1/s2.tif"}
    assert paths == {k: str(pathlib.Path(v).resolve()) for k, v in paths.items()}


def test_glob_source_hashes_file_content_not_name(images):
    pattern = str(images / "data/{subject}/{session}.tif")

    def hashes():
        table = GlobSource(pattern).to_arrow()
        keys = zip(table["subject"].to_pylist(), table["session"].to_pylist(), strict=True)
        return dict(zip(keys, orca.hash_packets(table, ["path"]).to_pylist(), strict=True))

    before = hashes()
    os.rename(images / "data/m1/s1.tif", images / "data/m1/s9.tif")
    renamed = hashes()
    assert renamed[("m1", "s9")] == before[("m1", "s1")]
    assert renamed[("m2", "s1")] == before[("m2", "s1")]
    (images / "data/m2/s1.tif").write_bytes(b"edited, and longer")
    edited = hashes()
    assert edited[("m2", "s1")] != before[("m2", "s1")]
    assert edited[("m1", "s2")] == before[("m1", "s2")]


# -- system columns and record ids -----------------------------------------------------------


def test_system_columns_are_hidden_unless_asked_for():
    src = DictSource(ROWS, tags=["subject"], source_id="s")
    assert src.to_polars().columns == ["subject", "x"]
    assert src.to_arrow().column_names == ["subject", "x"]
    assert src.system_columns == ("__tag__s", "__source__x")
    assert src.system_tag_columns == ("__tag__s",)
    assert src.to_arrow(include_system=True).column("__source__x")[0].as_py().startswith("s#")


def test_record_ids_survive_adding_removing_and_reordering_rows():
    before = DictSource(ROWS, tags=["subject"], source_id="s")
    changed = ROWS[1:] + [{"subject": "m99", "x": 99.0}]
    random.Random(0).shuffle(changed)
    after = DictSource(changed, tags=["subject"], source_id="s")
    a, b = record_ids(before), record_ids(after)
    common = a.keys() & b.keys()
    assert len(common) == len(ROWS) - 1
    assert all(a[k] == b[k] for k in common)
    assert a[("m0",)] not in b.values() and b[("m99",)] not in a.values()


def test_record_ids_do_not_depend_on_the_packet_values():
    a = record_ids(DictSource(ROWS, tags=["subject"], source_id="s"))
    b = record_ids(DictSource([{**r, "x": -1.0} for r in ROWS], tags=["subject"], source_id="s"))
    assert a == b


@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1, max_size=30, unique=True), st.randoms())
def test_record_ids_are_a_function_of_the_tags(keys, rnd):
    rows = [{"k": k, "v": str(k)} for k in keys]
    subset = [r for r in rows if rnd.random() < 0.7] or rows[:1]
    rnd.shuffle(subset)
    a = record_ids(DictSource(rows, tags=["k"], source_id="s"))
    b = record_ids(DictSource(subset, tags=["k"], source_id="s"))
    assert all(a[k] == v for k, v in b.items())


def test_record_ids_with_several_tags_and_null_tags():
    rows = [{"a": 1, "b": None, "x": 1}, {"a": None, "b": "u", "x": 2}, {"a": 1, "b": "u", "x": 3},
            {"a": None, "b": None, "x": 4}]
    src = DictSource(rows, tags=["a", "b"], source_id="s")
    assert sorted(src.to_polars().rows(), key=repr) == sorted([tuple(r.values()) for r in rows], key=repr)
    ids = record_ids(src)
    assert len(set(ids.values())) == 4
    assert record_ids(DictSource(rows[::-1], tags=["a", "b"], source_id="s")) == ids


def test_tags_may_be_given_as_a_string():
    assert DictSource(ROWS, tags="subject").tag_columns == ("subject",)


# -- duplicates ------------------------------------------------------------------------------

DUPES = [{"k": 1, "x": 10}, {"k": 1, "x": 10}, {"k": 1, "x": 11}, {"k": 2, "x": 12}]


def test_duplicate_tags_raise():
    with pytest.raises(SourceError, match="share tag values") as info:
        DictSource(DUPES, tags=["k"], source_id="dup")
    assert "'dup'" in str(info.value) and "keep_duplicates" in str(info.value)


def test_duplicate_null_tags_raise():
    with pytest.raises(SourceError, match="share tag values"):
        DictSource([{"k": None, "x": 1}, {"k": None, "x": 2}, {"k": 1, "x": 3}], tags=["k"])


def test_keep_duplicates_keeps_rows_distinct():
    src = DictSource(DUPES, tags=["k"], source_id="dup", keep_duplicates=True)
    full = src.to_polars(include_system=True)
    assert full.height == 4
    assert full["__tag__dup"].n_unique() == 4
    assert full["__source__x"].n_unique() == 4
    assert sorted(src.to_polars().rows()) == sorted((r["k"], r["x"]) for r in DUPES)


def test_keep_duplicates_record_ids_survive_adding_and_reordering():
    def ids(rows):
        frame = DictSource(rows, tags=["k"], source_id="dup", keep_duplicates=True).to_polars(include_system=True)
        return sorted(frame.select("k", "x", "__tag__dup").rows())

    base = [{"k": 1, "x": 10}, {"k": 2, "x": 12}]
    grown = [{"k": 1, "x": 11}, *base[::-1]]  # a duplicate of k=1 arrives, order changes
    assert set(ids(base)) <= set(ids(grown))


@pytest.mark.parametrize("keep_duplicates", [False, True])
def test_the_records_digest_is_the_fingerprint_a_run_records(keep_duplicates):
    """Made when the source is built, it must equal what the run's source records digest from
    the record ids as delivered (stores recorded before it existed compare with that)."""
    from orca.lineage import _fingerprint

    rows = DUPES if keep_duplicates else [{"k": k, "x": k * 2} for k in range(50)]
    src = DictSource(rows, tags=["k"], source_id="d", keep_duplicates=keep_duplicates)
    assert src.records_digest == _fingerprint(src.to_polars(include_system=True)["__tag__d"])
    again = DictSource(rows[::-1], tags=["k"], source_id="d", keep_duplicates=keep_duplicates)
    assert again.records_digest == src.records_digest  # (order-independent)


# -- default ids -----------------------------------------------------------------------------


def test_default_ids_are_stable_and_not_content_derived(tmp_path, images):
    assert DictSource(ROWS, tags=["subject"]).source_id == DictSource(ROWS, tags=["subject"]).source_id
    assert DictSource(ROWS, tags=["subject"]).source_id == DictSource(ROWS[:2], tags=["subject"]).source_id
    assert PolarsSource(FRAME, tags=["subject"]).source_id == PolarsSource(FRAME.head(1), tags=["subject"]).source_id
    assert ArrowSource(FRAME.to_arrow(), tags=["subject"]).source_id.startswith("arrow-")
    FRAME.write_csv(tmp_path / "a.csv")
    first = CSVSource(tmp_path / "a.csv", tags=["subject"]).source_id
    FRAME.head(2).write_csv(tmp_path / "a.csv")
    assert CSVSource(tmp_path / "a.csv", tags=["subject"]).source_id == first
    pattern = str(images / "data/{subject}/{session}.tif")
    glob_id = GlobSource(pattern).source_id
    (images / "data/m3").mkdir()
    (images / "data/m3/s1.tif").write_bytes(b"new")
    assert GlobSource(pattern).source_id == glob_id


def test_default_id_names_the_system_tag():
    src = DictSource(ROWS, tags=["subject"])
    assert src.system_tag_columns == (f"__tag__{src.source_id}",)


# -- errors ----------------------------------------------------------------------------------


def test_unknown_tag_column_lists_the_columns():
    with pytest.raises(SourceError, match=r"unknown tag column.*'nope'.*columns are \['subject', 'x'\]"):
        DictSource(ROWS, tags=["nope"])


@pytest.mark.parametrize("make", [
    lambda: DictSource([], tags=["k"]),
    lambda: ArrowSource(pa.table({"k": pa.array([], pa.int64()), "x": pa.array([], pa.int64())}), tags=["k"]),
    lambda: PolarsSource(pl.DataFrame(schema={"k": pl.Int64, "x": pl.Int64}), tags=["k"]),
])
def test_empty_source_raises(make):
    with pytest.raises(SourceError, match="empty"):
        make()


def test_empty_csv_raises(tmp_path):
    (tmp_path / "e.csv").write_text("k,x\n")
    with pytest.raises(SourceError, match="empty"):
        CSVSource(tmp_path / "e.csv", tags=["k"])


@pytest.mark.parametrize("make", [
    lambda: DictSource([{"k": 1, "__x": 2}], tags=["k"]),
    lambda: PolarsSource(pl.DataFrame({"__k": [1], "x": [2]}), tags=["__k"]),
])
def test_system_prefixed_column_raises(make):
    with pytest.raises(SourceError, match="'__'.*__"):
        make()


def test_source_with_only_tags_raises():
    with pytest.raises(SourceError, match="packet column"):
        DictSource([{"k": 1}], tags=["k"])


def test_bad_source_id_raises():
    with pytest.raises(SourceError, match="source id"):
        DictSource(ROWS, tags=["subject"], source_id="has space#")


def test_rows_that_cannot_form_columns_raise():
    with pytest.raises(SourceError, match="cannot build columns.*'x'"):
        DictSource([{"k": 1, "x": 1}, {"k": 2, "x": "a"}], tags=["k"])


@pytest.mark.parametrize("cls, name", [(CSVSource, "x.csv"), (ParquetSource, "x.parquet"), (DeltaSource, "x")])
def test_missing_file_names_the_path(tmp_path, cls, name):
    path = tmp_path / "missing" / name
    with pytest.raises(SourceError) as info:
        cls(path, tags=["k"])
    assert str(path) in str(info.value)


@pytest.mark.parametrize("cls", [CSVSource, ParquetSource, DeltaSource])
def test_unreadable_file_names_the_path(tmp_path, cls):
    path = tmp_path / "garbage.bin"
    path.write_bytes(b"")
    with pytest.raises(SourceError, match="cannot read") as info:
        cls(path, tags=["k"])
    assert str(path) in str(info.value)


def test_glob_matching_nothing_raises(tmp_path):
    with pytest.raises(SourceError, match="matched no files") as info:
        GlobSource(str(tmp_path / "{subject}.tif"))
    assert str(tmp_path) in str(info.value)


def test_glob_duplicate_tags_raise_without_keep_duplicates(images):
    with pytest.raises(SourceError, match="share tag values"):
        GlobSource(str(images / "data/*/{session}.tif"))


@pytest.mark.parametrize("pattern, match", [
    ("data/{a}/{a}.tif", "repeats a field"),
    ("data/{subject}/{path}.tif", "packet column 'path'"),
])
def test_bad_glob_patterns_raise(images, pattern, match):
    with pytest.raises(SourceError, match=match):
        GlobSource(str(images / pattern))


# --------------------------- values, types and names orca cannot keep (issue 14, items 3, 12, 13)


@orca.function_pod(output_keys="y")
def _double(x: int) -> int:
    return 2 * x


def _run_twice(tmp_path, make_source, pod=_double):
    """Run a one-node pipeline twice over one Delta store; return both runs' counts and results."""
    out = []
    for _ in range(2):
        pipeline = orca.Pipeline("p", store=orca.DeltaStore(tmp_path / "store"))
        with pipeline:
            node = pod.pod(make_source())
        counts = pipeline.run(progress=False).counts
        out.append((next(iter(counts.values())), node.to_polars()))
    # every table in the store reads cleanly with plain Polars (no reader feature it lacks)
    tables = [p.parent for p in (tmp_path / "store").rglob("_delta_log")]
    assert tables and all(pl.scan_delta(str(t)).collect() is not None for t in tables)
    return out


@pytest.mark.parametrize("value", [{"b", "a"}, [{"x"}], {"k": frozenset({1})}], ids=["set", "in_list", "in_dict"])
def test_dict_source_refuses_sets_naming_the_column(value):
    # stored in iteration order, a set of strings would hash differently under each PYTHONHASHSEED
    with pytest.raises(orca.SchemaError, match=r"'labels.*set has no order.*sorted"):
        DictSource([{"k": 1, "labels": value}], tags=["k"])


def test_dict_source_refuses_non_string_dict_keys_naming_the_column():
    with pytest.raises(SourceError, match="'meta'"):
        DictSource([{"k": 1, "meta": {1: "a"}}], tags=["k"])


def test_polars_source_refuses_object_columns_naming_them():
    # Polars exports Object values to Arrow as 8-byte pointers: garbage, different every process
    frame = pl.DataFrame({"k": [1], "blob": pl.Series([object()], dtype=pl.Object)})
    with pytest.raises(orca.SchemaError, match=r"\['blob'\].*Object"):
        PolarsSource(frame, tags=["k"])


def test_nanosecond_timestamp_tag_is_stored_as_microseconds_and_reruns(tmp_path):
    # used to succeed once, then every later run failed: the table needed Delta's timestampNanos
    stamps = pl.Series("t", [1_700_000_000_000_000_000, 1_700_000_000_000_001_000]).cast(pl.Datetime("ns"))
    frame = pl.DataFrame({"t": stamps, "x": [1, 2]})
    source = PolarsSource(frame, tags=["t"], source_id="ns")
    assert source.schema()[0].field("t").type == pa.timestamp("us")
    # the record ids are hashes of the normalised values, equal to those of the ns values
    assert record_ids(source) == {(v,): h for v, h in zip(frame["t"].cast(pl.Datetime("us")).to_list(),
                                                          orca.hashing.hash_packets(frame.to_arrow(), ["t"]).to_pylist(),
                                                          strict=True)}
    (first, _), (second, rows) = _run_twice(tmp_path, lambda: PolarsSource(frame, tags=["t"], source_id="ns"))
    assert (first.computed, second.cached, second.computed) == (2, 2, 0)
    assert rows.sort("t")["y"].to_list() == [2, 4]


def test_nanosecond_timestamp_with_nanoseconds_is_refused_naming_the_column():
    frame = pl.DataFrame({"t": pl.Series([1_001]).cast(pl.Datetime("ns")), "x": [1]})
    with pytest.raises(orca.SchemaError, match="source 'ns'.*column 't'.*sub-microsecond"):
        PolarsSource(frame, tags=["t"], source_id="ns")


def test_uint64_tag_at_its_max_is_refused_before_any_call_naming_the_column():
    table = pa.table({"id": pa.array([1, 2**64 - 1], pa.uint64()), "x": [1, 2]})
    with pytest.raises(orca.SchemaError, match="column 'id'.*uint64.*int64"):
        ArrowSource(table, tags=["id"])


def test_unsigned_and_zoned_tags_are_widened_and_rerun(tmp_path):
    table = pa.table({
        "id": pa.array([1, 2**63 - 1], pa.uint64()),
        "small": pa.array([1, 255], pa.uint8()),
        "at": pa.array([0, 1_000], pa.timestamp("ms", "Europe/Paris")),
        "x": [1, 2],
    })
    make = lambda: ArrowSource(table, tags=["id", "small", "at"], source_id="u")  # noqa: E731
    tag_schema = make().schema()[0]
    assert [f.type for f in tag_schema] == [pa.int64(), pa.int16(), pa.timestamp("us", "UTC")]
    (first, _), (second, rows) = _run_twice(tmp_path, make)
    assert (first.computed, second.cached) == (2, 2)
    assert rows.sort("id")["small"].to_list() == [1, 255]


@orca.function_pod(output_keys="total")
def _total(v: list[int]) -> int:
    return sum(v)


def test_fixed_size_array_columns_become_lists_and_rerun(tmp_path):
    # a fixed_size_list column used to make orca create a Delta table it then refused
    frame = pl.DataFrame({"k": [[1, 2], [3, 4]], "v": [[1, 2], [3, 4]]},
                         schema={"k": pl.Array(pl.Int64, 2), "v": pl.Array(pl.Int64, 2)})
    make = lambda: PolarsSource(frame, tags=["k"], source_id="arr")  # noqa: E731
    assert make().schema()[0].field("k").type == pa.large_list(pa.int64())
    (first, _), (second, rows) = _run_twice(tmp_path, make, pod=_total)
    assert (first.computed, second.cached) == (2, 2)
    assert sorted(rows["total"].to_list()) == [3, 7]


@pytest.mark.parametrize(
    ("column", "message"),
    [(pa.array([1], pa.time64("us")), "time-of-day"), (pa.array([1], pa.duration("s")), "duration"),
     (pa.array([[("a", 1)]], pa.map_(pa.string(), pa.int64())), "maps are not supported")],
    ids=["time", "duration", "map"],
)
def test_columns_delta_cannot_store_are_refused_naming_them(column, message):
    with pytest.raises(orca.SchemaError, match=f"source 'bad'.*column 'weird'.*{message}"):
        ArrowSource(pa.table({"k": [1], "weird": column}), tags=["k"], source_id="bad")


def test_csv_with_an_unnamed_first_column_is_refused(tmp_path):
    # pandas writes its index as a first column with an empty name; it used to fail at run time
    path = tmp_path / "frame.csv"
    path.write_text(",subject,x\n0,m1,1\n1,m2,2\n")
    with pytest.raises(SourceError, match="column 0 has an empty name.*pandas index"):
        CSVSource(path, tags=["subject"])


def test_csv_with_repeated_header_names_is_refused(tmp_path):
    path = tmp_path / "dupes.csv"
    path.write_text("subject,x,x\nm1,1,2\n")
    with pytest.raises(SourceError, match=r"dupes\.csv.*repeat.*x_duplicated_0"):
        CSVSource(path, tags=["subject"])


def test_repeated_column_names_are_refused():
    table = pa.Table.from_arrays([pa.array([1]), pa.array([2]), pa.array([3])], names=["k", "x", "x"])
    with pytest.raises(SourceError, match=r"repeat: \['x'\]"):
        ArrowSource(table, tags=["k"])


def test_glob_with_a_non_utf8_file_name_names_the_file(tmp_path):
    (tmp_path / "ok.txt").write_text("fine")
    try:
        fd = os.open(os.fsencode(tmp_path) + b"/caf\xe9.txt", os.O_CREAT | os.O_WRONLY)
    except OSError:
        pytest.skip("this file system refuses non-UTF-8 names")
    os.close(fd)
    with pytest.raises(SourceError, match=r"caf\\xe9\.txt.*not valid UTF-8"):
        GlobSource(str(tmp_path / "{name}.txt"))


def test_glob_matching_nothing_says_where_a_relative_pattern_was_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SourceError, match=f"in '{tmp_path / 'data'}' \\(no such directory\\).*working directory '{tmp_path}'"):
        GlobSource("data/{subject}/*.tif")
    (tmp_path / "data").mkdir()
    with pytest.raises(SourceError, match=f"matched no files in '{tmp_path / 'data'}', the pattern"):
        GlobSource("data/{subject}/*.tif")


# -- sources/<id> as the file-hash memo of later processes -----------------------------------

READS = '''
import json, sys
import orca
import orca.hashing as hashing
from tests.pipelines.assets_files import build
read = []
hashing.open = lambda path, *a, **k: read.append(str(path)) or open(path, *a, **k)  # file hashing reads
build(orca.DeltaStore(sys.argv[1]), sys.argv[2]).run(progress=False)
print(json.dumps(read))
'''


def files_hashed_by_a_new_process(store: pathlib.Path, data: pathlib.Path) -> list[str]:
    """Run tests/pipelines/assets_files.py over ``data`` in a new process: the files it hashed."""
    import json
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", READS, str(store), str(data)], capture_output=True, text=True,
                          cwd=str(pathlib.Path(__file__).parent.parent), check=True)
    return [os.path.basename(p) for p in json.loads(done.stdout.strip().splitlines()[-1])]


def test_a_touched_file_is_hashed_by_one_new_process_and_then_by_none(tmp_path):
    from tests.pipelines.assets_files import build

    data, store = tmp_path / "data", tmp_path / "store"
    data.mkdir()
    for name in "abc":
        (data / f"{name}.txt").write_text(name * 3)
    build(orca.DeltaStore(store), data).run(progress=False)
    touched = data / "b.txt"
    before = touched.stat()
    os.utime(touched, ns=(before.st_atime_ns, before.st_mtime_ns + 10**9))  # a new mtime, the same bytes
    assert files_hashed_by_a_new_process(store, data) == ["b.txt"]  # the recorded mtime is stale: read
    assert files_hashed_by_a_new_process(store, data) == []  # ... and the new one was recorded
    os.utime(touched, ns=(before.st_atime_ns, before.st_mtime_ns))  # the touch undone: an old state again
    assert files_hashed_by_a_new_process(store, data) == ["b.txt"]
    assert files_hashed_by_a_new_process(store, data) == []
    [table] = orca.DeltaStore(store).tables("sources/")
    rows = orca.DeltaStore(store).scan(table).collect().sort("__recorded_at", "name")
    assert rows["name"].to_list() == ["a", "b", "c", "b", "b"]  # one row per state of b.txt, none for a, c
    assert rows["path_mtime_ns"].to_list()[-2:] == [before.st_mtime_ns + 10**9, before.st_mtime_ns]
    assert rows["path_content_hash"].n_unique() == 3


def test_a_file_restored_to_an_earlier_state_is_recorded_again_so_lineage_names_it(tmp_path, store):
    from tests.pipelines.assets_files import build

    data = tmp_path / "data"
    data.mkdir()
    target = data / "a.txt"
    target.write_text("old")
    first = target.stat()
    build(store, data).run(progress=False)
    target.write_text("new")
    build(store, data).run(progress=False)
    target.write_text("old")  # restored from a backup that kept the mtime: exactly the first state
    os.utime(target, ns=(first.st_atime_ns, first.st_mtime_ns))
    pipeline = build(store, data)
    pipeline.run(progress=False)
    sources = pipeline.lineage("double").filter(pl.col("kind") == "source")
    assert sources["content_hash"].to_list() == [orca.hash_file(target)]
    [table] = store.tables("sources/")
    rows = store.scan(table).collect()
    assert rows.height == 3 and rows["__row_key"].n_unique() == 3  # the first state's key was taken
    build(store, data).run(progress=False)
    assert store.scan(table).collect().height == 3  # unchanged since: nothing more
