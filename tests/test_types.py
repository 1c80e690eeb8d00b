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

from orca.errors import SchemaError
from orca.hashing import PATH_METADATA, is_path_field
from orca.types import (
    arrow_field,
    arrow_type,
    is_optional,
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
    [dict[str, int], int | str, int | str | None, list, tuple[int, int], set[int], object, typing.Any],
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
