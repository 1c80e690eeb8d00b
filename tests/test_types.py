"""Tests for orca.types: annotations -> Arrow types and fields, strict Python -> Arrow
conversion (``to_arrow_array``) and Arrow -> Python conversion (``to_python``)."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import pathlib
import typing

import hypothesis.strategies as st
import numpy as np
import pyarrow as pa
import pydantic
import pytest
from hypothesis import given

import orca
from orca.errors import PodError, SchemaError
from orca.hashing import PATH_METADATA, is_path_field
from orca.types import (
    arrow_field,
    arrow_type,
    is_optional,
    storable_column,
    storable_table,
    storable_type,
    strip_optional,
    to_arrow_array,
    to_python,
)


class Point(pydantic.BaseModel):
    x: int
    label: str | None = None


class Row(typing.TypedDict):
    n: int
    values: list[float]


@dataclasses.dataclass
class Scan:
    id: int
    file: pathlib.Path


class Typed(typing.TypedDict):
    file: pathlib.Path


# -- annotations -> Arrow types --------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "expected"),
    [
        (int, pa.int64()),
        (float, pa.float64()),
        (str, pa.large_string()),
        (bool, pa.bool_()),
        (bytes, pa.large_binary()),
        (datetime.date, pa.date32()),
        (datetime.datetime, pa.timestamp("us")),
        (decimal.Decimal, pa.decimal128(38, 18)),
        (pathlib.Path, pa.large_string()),
        (list[int], pa.large_list(pa.int64())),
        (list[list[str]], pa.large_list(pa.large_list(pa.large_string()))),
        (int | None, pa.int64()),
        (typing.Optional[float], pa.float64()),  # noqa: UP045 (the old spelling must work too)
        (list[int | None], pa.large_list(pa.int64())),
    ],
)
def test_arrow_type_of_scalars_lists_and_optionals(annotation, expected):
    assert arrow_type(annotation) == expected


def test_pydantic_model_is_a_struct_with_nullable_optional_fields():
    t = arrow_type(Point)
    assert pa.types.is_struct(t)
    assert t.field("x") == pa.field("x", pa.int64(), nullable=False)
    assert t.field("label") == pa.field("label", pa.large_string(), nullable=True)


def test_typeddict_is_a_struct():
    t = arrow_type(Row)
    assert [t.field(i).name for i in range(t.num_fields)] == ["n", "values"]
    assert t.field("values").type == pa.large_list(pa.float64())


def test_dataclass_is_a_struct_and_its_path_field_carries_path_metadata():
    t = arrow_type(Scan)
    assert t.field("id").type == pa.int64()
    assert is_path_field(t.field("file"))
    assert not is_path_field(t.field("id"))


def test_arrow_field_nullable_iff_optional():
    assert arrow_field("x", int).nullable is False
    assert arrow_field("x", int | None).nullable is True
    assert arrow_field("x", typing.Optional[str]).nullable is True  # noqa: UP045
    assert arrow_field("x", list[int | None]).nullable is False  # the list itself is required
    assert arrow_field("x", int).name == "x"


def test_arrow_field_path_metadata_only_for_paths():
    assert arrow_field("img", pathlib.Path).metadata == PATH_METADATA
    assert arrow_field("img", pathlib.Path | None).metadata == PATH_METADATA
    assert arrow_field("img", pathlib.Path | None).nullable
    assert not arrow_field("name", str).metadata


def test_is_optional_and_strip_optional():
    assert is_optional(int | None) and is_optional(typing.Optional[int])  # noqa: UP045
    assert not is_optional(int) and not is_optional(list[int | None])
    assert strip_optional(int | None) is int
    assert strip_optional(list[int]) == list[int]


@pytest.mark.parametrize(
    "annotation",
    [dict[str, int], int | str, int | str | None, list, tuple[int, int], object, typing.Any],
)
def test_unsupported_annotations_raise_schema_error(annotation):
    with pytest.raises(SchemaError, match="Arrow type"):
        arrow_type(annotation)


def test_unsupported_annotation_in_a_struct_raises():
    @dataclasses.dataclass
    class Bad:
        counts: dict[str, int]

    with pytest.raises(SchemaError):
        arrow_type(Bad)


# -- to_arrow_array: strict ------------------------------------------------------------------


def _row_of(values, annotation):
    with pytest.raises(SchemaError) as info:
        to_arrow_array(values, arrow_field("out", annotation))
    assert "'out'" in str(info.value)  # the message names the column
    return info.value.row


def test_true_is_refused_for_int_and_float():
    assert _row_of([1, 2, True], int) == 2
    assert _row_of([1.0, False], float) == 1
    assert _row_of([True], int | None) == 0


def test_str_is_refused_for_float():
    assert _row_of([1.5, "2.5"], float) == 1


def test_float_is_refused_for_int():
    assert _row_of([1, 2.5], int) == 1


def test_int_is_refused_for_str():
    assert _row_of(["a", "b", 3], str) == 2


def test_none_is_refused_unless_optional():
    assert _row_of([1, None, 3], int) == 1
    assert to_arrow_array([1, None, 3], arrow_field("out", int | None)).to_pylist() == [1, None, 3]


def test_failed_rows_may_be_none_in_a_required_column():
    arr = to_arrow_array([1, None], arrow_field("out", int), failed=[False, True])
    assert arr.to_pylist() == [1, None]


def test_numpy_scalars_are_accepted():
    assert to_arrow_array([np.int64(3), np.int32(4)], arrow_field("out", int)).to_pylist() == [3, 4]
    assert to_arrow_array([np.float32(1.5), np.float64(2.5)], arrow_field("out", float)).to_pylist() == [1.5, 2.5]
    assert to_arrow_array([np.bool_(True)], arrow_field("out", bool)).to_pylist() == [True]


def test_int_is_accepted_for_float():
    arr = to_arrow_array([1, 2.5], arrow_field("out", float))
    assert arr.type == pa.float64() and arr.to_pylist() == [1.0, 2.5]


def test_overflow_names_the_row():
    assert _row_of([1, 2**70], int) == 1


def test_bad_list_item_names_the_row():
    assert _row_of([[1, 2], ["a"]], list[int]) == 1


def test_paths_models_and_dataclasses_become_plain_values():
    assert to_arrow_array([pathlib.Path("a/b.txt")], arrow_field("p", pathlib.Path)).to_pylist() == ["a/b.txt"]
    arr = to_arrow_array([Point(x=1), Point(x=2, label="b")], arrow_field("pt", Point))
    assert arr.to_pylist() == [{"x": 1, "label": None}, {"x": 2, "label": "b"}]
    arr = to_arrow_array([Scan(1, pathlib.Path("f.tif"))], arrow_field("s", Scan))
    assert arr.to_pylist() == [{"id": 1, "file": "f.tif"}]


def test_other_scalar_types_round_trip():
    cases = [
        (bytes, [b"\x00\x01"]),
        (datetime.date, [datetime.date(2024, 2, 29)]),
        (datetime.datetime, [datetime.datetime(2024, 1, 1, 12, 30, 1, 5)]),
        (decimal.Decimal, [decimal.Decimal("1.25")]),
    ]
    for annotation, values in cases:
        arr = to_arrow_array(values, arrow_field("v", annotation))
        assert arr.type == arrow_type(annotation)
        assert arr.to_pylist() == values


@given(st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1))))
def test_optional_int_round_trip(values):
    field = arrow_field("v", int | None)
    assert to_python(to_arrow_array(values, field), int | None) == values


@given(st.lists(st.integers(-(2**63), 2**63 - 1), min_size=1), st.data())
def test_a_single_bool_among_ints_is_found(values, data):
    i = data.draw(st.integers(0, len(values) - 1))
    values[i] = True
    assert _row_of(values, int) == i


# -- to_python -------------------------------------------------------------------------------


def test_to_python_paths():
    col = pa.array(["a/b.tif", None], pa.large_string())
    assert to_python(col, pathlib.Path) == [pathlib.Path("a/b.tif"), None]
    assert to_python(col, pathlib.Path | None) == [pathlib.Path("a/b.tif"), None]
    assert to_python(col, path=True) == [pathlib.Path("a/b.tif"), None]
    assert to_python(col) == ["a/b.tif", None]
    assert to_python(pa.array([["x", "y"]]), list[pathlib.Path]) == [[pathlib.Path("x"), pathlib.Path("y")]]


def test_to_python_pydantic_models():
    col = pa.array([{"x": 1, "label": None}, None, {"x": 2, "label": "b"}])
    assert to_python(col, Point) == [Point(x=1), None, Point(x=2, label="b")]
    assert to_python(pa.array([[{"x": 3, "label": "c"}]]), list[Point]) == [[Point(x=3, label="c")]]


def test_to_python_dataclass_and_typeddict_convert_their_path_fields():
    col = pa.array([{"id": 1, "file": "a.tif"}])
    assert to_python(col, Scan) == [Scan(1, pathlib.Path("a.tif"))]
    assert to_python(pa.array([{"file": "b.tif"}]), Typed) == [{"file": pathlib.Path("b.tif")}]


def test_to_python_plain_types_are_unchanged():
    assert to_python(pa.array([1, None, 3]), int | None) == [1, None, 3]
    assert to_python(pa.chunked_array([[1.5], [2.5]]), float) == [1.5, 2.5]


def test_path_fields_inside_models_become_strings():
    class WithFile(pydantic.BaseModel):
        file: pathlib.Path

    arr = to_arrow_array([WithFile(file=pathlib.Path("x.tif"))], arrow_field("w", WithFile))
    assert arr.to_pylist() == [{"file": "x.tif"}]
    assert to_python(arr, WithFile) == [WithFile(file=pathlib.Path("x.tif"))]


# ------------------------------------------------------- Delta-storable types (issue 14, item 12)


@pytest.mark.parametrize(
    ("annotation", "hint"),
    [(datetime.time, "time-of-day.*isoformat"), (datetime.timedelta, "duration.*total_seconds"),
     (datetime.time | None, "time-of-day"), (list[datetime.timedelta], "duration"),
     (set[str], "set has no order.*list"), (frozenset[int], "set has no order")],
    ids=["time", "timedelta", "optional_time", "list_of_timedelta", "set", "frozenset"],
)
def test_unstorable_annotations_are_refused_with_what_to_use(annotation, hint):
    # Delta Lake has no time-of-day or duration type: these outputs used to fail on every run
    with pytest.raises(SchemaError, match=f"'when'.*{hint}"):
        arrow_field("when", annotation)


def test_unstorable_output_is_refused_when_the_pod_is_built():
    with pytest.raises(PodError, match=r"'t'.*time-of-day.*isoformat"):
        @orca.function_pod(output_keys="t")
        def clock(x: int) -> datetime.time:
            return datetime.time(x)


@pytest.mark.parametrize(
    ("given", "stored"),
    [
        (pa.uint8(), pa.int16()), (pa.uint16(), pa.int32()), (pa.uint32(), pa.int64()),
        (pa.uint64(), pa.int64()), (pa.float16(), pa.float32()), (pa.int8(), pa.int8()),
        (pa.string_view(), pa.large_string()), (pa.binary_view(), pa.large_binary()),
        (pa.binary(4), pa.large_binary()), (pa.date64(), pa.date32()),
        (pa.timestamp("s"), pa.timestamp("us")), (pa.timestamp("ns"), pa.timestamp("us")),
        (pa.timestamp("ms", "Asia/Tokyo"), pa.timestamp("us", "UTC")),
        (pa.decimal32(5, 2), pa.decimal128(5, 2)), (pa.decimal256(50, 3), pa.decimal128(38, 3)),
        (pa.list_(pa.int64(), 3), pa.large_list(pa.int64())),
        (pa.list_view(pa.uint8()), pa.large_list(pa.int16())),
        (pa.dictionary(pa.int32(), pa.string()), pa.string()),
        (pa.struct([("a", pa.timestamp("ns")), ("b", pa.int64())]),
         pa.struct([("a", pa.timestamp("us")), ("b", pa.int64())])),
        (pa.large_list(pa.struct([("u", pa.uint32())])), pa.large_list(pa.struct([("u", pa.int64())]))),
    ],
    ids=str,
)
def test_storable_type_maps_to_what_delta_stores(given, stored):
    assert storable_type(given).equals(stored)
    assert arrow_type(given).equals(stored)  # an Arrow type given as annotation is normalised too


@pytest.mark.parametrize(
    ("given", "message"),
    [
        (pa.time32("s"), "time-of-day"), (pa.time64("ns"), "time-of-day"),
        (pa.duration("ms"), "duration"), (pa.month_day_nano_interval(), "duration"),
        (pa.map_(pa.string(), pa.int64()), "list of {key, value} structs"),
        (pa.dense_union([pa.field("a", pa.int64())]), "one type per column"),
        (pa.uuid(), "storage type"), (pa.struct([]), "no fields"),
        (pa.large_list(pa.duration("us")), r"\[\]'.*duration"),
        (pa.struct([("s", pa.time64("us"))]), r"\.s'.*time-of-day"),
        (pa.run_end_encoded(pa.int32(), pa.int64()), "not supported"),
    ],
    ids=str,
)
def test_unstorable_arrow_types_are_refused_naming_the_column(given, message):
    with pytest.raises(SchemaError, match=f"column 'c.*{message}"):
        storable_type(given, "c")


def test_storable_column_refuses_lossy_conversions_naming_the_column():
    assert storable_column(pa.array([2**63 - 1], pa.uint64()), "n").to_pylist() == [2**63 - 1]
    with pytest.raises(SchemaError, match="column 'n'.*uint64.*fit int64"):
        storable_column(pa.array([2**64 - 1], pa.uint64()), "n")
    whole = pa.array([1_000, None], pa.timestamp("ns"))
    assert storable_column(whole, "t").to_pylist() == whole.cast(pa.timestamp("us")).to_pylist()
    with pytest.raises(SchemaError, match="column 't'.*sub-microsecond.*truncate"):
        storable_column(pa.array([1_001], pa.timestamp("ns")), "t")


def test_storable_table_keeps_metadata_and_is_a_no_op_when_storable():
    table = pa.table({"p": pa.array(["a"]), "u": pa.array([1], pa.uint8())})
    table = table.cast(pa.schema([pa.field("p", pa.string(), metadata=PATH_METADATA), table.schema.field("u")]))
    out = storable_table(table)
    assert is_path_field(out.schema.field("p")) and out.schema.field("u").type == pa.int16()
    assert storable_table(out) is out


def test_set_output_value_is_a_bad_output_not_a_set_ordered_list():
    # a set's iteration order changes with PYTHONHASHSEED: stored, it would differ per process
    field = arrow_field("labels", list[str])
    with pytest.raises(SchemaError, match="set has no order.*sorted") as info:
        to_arrow_array([["a"], {"b", "c"}], field)
    assert info.value.row == 1


# Every supported output annotation, a value of it, and the value read back by Polars (which
# returns structs as dicts and decimals at the declared scale).
@dataclasses.dataclass
class _Point:
    x: int
    label: str


_ROUND_TRIP = {
    "int": (int, -(2**63), None),
    "float": (float, -0.5, None),
    "str": (str, "héllo ✓", None),
    "bool": (bool, True, None),
    "bytes": (bytes, b"\x00\xff", None),
    "date": (datetime.date, datetime.date(1969, 12, 31), None),
    "datetime": (datetime.datetime, datetime.datetime(2024, 2, 29, 23, 59, 59, 999_999), None),
    "decimal": (decimal.Decimal, decimal.Decimal("-12.5"), decimal.Decimal("-12.500000000000000000")),
    "path": (pathlib.Path, pathlib.Path("/data/a.tif"), "/data/a.tif"),
    "optional": (int | None, None, None),
    "list": (list[list[str]], [["a"], [], ["b", "c"]], None),
    "struct": (_Point, _Point(1, "p"), {"x": 1, "label": "p"}),
}


def _round_trip_pipeline(store):
    keys = list(_ROUND_TRIP)

    @orca.function_pod(output_keys=keys, output_types={k: t for k, (t, _, _) in _ROUND_TRIP.items()})
    def every_type(x: int):
        return tuple(value for _, value, _ in _ROUND_TRIP.values())

    pipeline = orca.Pipeline("types", store=store)
    with pipeline:
        every_type.pod(orca.DictSource([{"k": 1, "x": 1}], tags=["k"], source_id="src"))
    return pipeline


# the pod reads the table of test values, which its identity cannot cover: irrelevant here
@pytest.mark.filterwarnings("ignore:function pod 'every_type'")
def test_every_supported_output_type_round_trips_through_a_delta_store(tmp_path):
    store_path = tmp_path / "store"
    first = _round_trip_pipeline(orca.DeltaStore(store_path))
    assert first.run(progress=False).counts["every_type"] == orca.Counts(0, 1, 0)
    expected = {k: value if back is None else back for k, (_, value, back) in _ROUND_TRIP.items()}
    row = first["every_type"].results().collect().select(list(_ROUND_TRIP)).to_dicts()
    assert row == [expected]
    # a fresh pipeline over the same store serves the row from the cache, with equal values
    again = _round_trip_pipeline(orca.DeltaStore(store_path))
    assert again.run(progress=False).counts["every_type"] == orca.Counts(1, 0, 0)
    assert again["every_type"].results().collect().select(list(_ROUND_TRIP)).to_dicts() == [expected]
