"""Python annotations <-> Arrow types.

Function pods declare their inputs and outputs with ordinary annotations; this module turns
them into Arrow fields and converts values at the boundary between Arrow columns and Python
calls. ``pathlib.Path`` is a *logical* type: a string column whose field carries
``orca.hashing.PATH_METADATA`` so hashing reads the file's content, not its name.

Every column orca keeps must be storable in a Delta table (results, provenance, assets), so
this module also decides, once per column, the *storable* Arrow type of every Arrow type
(:func:`storable_type`): lossless widenings are made at the boundary (``uint32`` -> ``int64``,
``timestamp[ns]`` -> ``timestamp[us]`` when no value has sub-microsecond digits,
``fixed_size_list`` -> ``large_list``, ...) and everything Delta cannot hold (time of day,
durations, maps, unions, extension types) is refused with a :class:`SchemaError` naming the
column and saying what to use instead. The widenings never change a packet hash (the encoding
ignores widths and units), so a value hashes the same before and after.

Examples
--------
>>> import datetime
>>> arrow_type(int), arrow_type(list[float]), arrow_type(datetime.date)
(DataType(int64), LargeListType(large_list<item: double>), DataType(date32[day]))
>>> arrow_field("x", float | None).nullable, arrow_field("x", float).nullable
(True, False)
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import pathlib
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pydantic

from orca.errors import SchemaError
from orca.hashing import PATH_METADATA

__all__ = [
    "arrow_type",
    "arrow_field",
    "is_optional",
    "strip_optional",
    "to_python",
    "to_arrow_array",
    "storable_type",
    "storable_column",
    "storable_table",
]

_SCALARS: dict[Any, pa.DataType] = {
    int: pa.int64(),
    float: pa.float64(),
    str: pa.large_string(),
    bool: pa.bool_(),
    bytes: pa.large_binary(),
    datetime.date: pa.date32(),
    datetime.datetime: pa.timestamp("us"),
    decimal.Decimal: pa.decimal128(38, 18),
    pathlib.Path: pa.large_string(),
}


# Python types orca refuses, and what to use instead: Delta Lake cannot store them.
_UNSTORABLE: dict[Any, str] = {
    datetime.time: "Delta Lake has no time-of-day type; use a str (t.isoformat()) or an int "
                   "(microseconds since midnight) instead",
    datetime.timedelta: "Delta Lake has no duration type; use a float (td.total_seconds()) or "
                        "an int (microseconds) instead",
}


def storable_type(t: pa.DataType, column: str = "") -> pa.DataType:
    """The Delta-storable Arrow type orca keeps for ``t`` (``column`` names it in errors).

    Widths and units widen losslessly (``uint8/16/32`` -> the next signed int, ``uint64`` ->
    ``int64``, ``float16`` -> ``float32``, ``timestamp[s/ms/ns]`` -> ``timestamp[us]``, any
    zone -> ``UTC``, ``decimal32/64/256`` -> ``decimal128``, ``date64`` -> ``date32``), views,
    fixed-size lists and fixed-size binaries become ``large_list`` / ``large_string`` /
    ``large_binary``, and dictionaries are decoded; nested types are normalised recursively.
    :func:`storable_column` checks that the values survive the conversions that can lose them
    (``uint64``, ``timestamp[ns]``, ``decimal256``).

    Raises
    ------
    SchemaError
        For types Delta Lake cannot store (time of day, durations, intervals, maps, unions,
        extension types, run-end encoded arrays, empty structs), naming the column and the
        type to use instead.

    Examples
    --------
    >>> storable_type(pa.uint8()), storable_type(pa.timestamp("ns", "Europe/Paris"))
    (DataType(int16), TimestampType(timestamp[us, tz=UTC]))
    >>> storable_type(pa.list_(pa.float16(), 3))
    LargeListType(large_list<item: float>)
    >>> storable_type(pa.time64("us"), "t")
    Traceback (most recent call last):
    ...
    orca.errors.SchemaError: column 't' (time64[us]): Delta Lake has no time-of-day type; ...
    """
    T = pa.types
    what = f"column {column!r} ({t})" if column else f"Arrow type {t}"
    if T.is_dictionary(t):
        return storable_type(t.value_type, column)
    if (T.is_null(t) or T.is_boolean(t) or T.is_signed_integer(t) or T.is_float32(t) or T.is_float64(t)
            or T.is_string(t) or T.is_large_string(t) or T.is_binary(t) or T.is_large_binary(t)
            or T.is_date32(t)):
        return t
    if T.is_unsigned_integer(t):  # Delta has no unsigned ints
        return {8: pa.int16(), 16: pa.int32(), 32: pa.int64(), 64: pa.int64()}[t.bit_width]
    if T.is_float16(t):
        return pa.float32()
    if T.is_string_view(t):
        return pa.large_string()
    if T.is_binary_view(t) or T.is_fixed_size_binary(t):
        return pa.large_binary()
    if T.is_date64(t):
        return pa.date32()
    if T.is_timestamp(t):  # Delta keeps microseconds, naive or UTC
        return pa.timestamp("us", None if t.tz is None else "UTC")
    if T.is_decimal(t):
        if not 0 <= t.scale <= 38:
            raise SchemaError(f"{what}: Delta Lake decimals have a scale of 0 to 38; "
                              "rescale the values or store them as strings")
        return pa.decimal128(max(min(t.precision, 38), t.scale, 1), t.scale)
    if T.is_list(t) or T.is_large_list(t) or T.is_fixed_size_list(t) or T.is_list_view(t) or T.is_large_list_view(t):
        item = storable_type(t.value_type, f"{column}[]" if column else "")
        if (T.is_list(t) or T.is_large_list(t)) and item.equals(t.value_type):
            return t  # keeps the value field (its name, nullability, path metadata)
        return pa.large_list(t.value_field.with_type(item))
    if T.is_struct(t):
        names = [f.name for f in t]
        if not names:
            raise SchemaError(f"{what}: Delta Lake cannot store a struct with no fields")
        if len(set(names)) != len(names):
            raise SchemaError(f"{what}: struct field names repeat: {names}")
        fields = [f.with_type(storable_type(f.type, f"{column}.{f.name}" if column else "")) for f in t]
        return t if all(f.type.equals(g.type) for f, g in zip(fields, t, strict=True)) else pa.struct(fields)
    if T.is_time(t):
        raise SchemaError(f"{what}: {_UNSTORABLE[datetime.time]}")
    if T.is_duration(t) or T.is_interval(t):
        raise SchemaError(f"{what}: {_UNSTORABLE[datetime.timedelta]}")
    if T.is_map(t):
        raise SchemaError(f"{what}: maps are not supported (their hash would depend on key order); "
                          "use a struct (fixed keys) or a list of {key, value} structs")
    if T.is_union(t):
        raise SchemaError(f"{what}: unions are not supported; use one type per column (or T | None)")
    if isinstance(t, pa.BaseExtensionType):
        raise SchemaError(f"{what}: extension types are not supported; store the storage type "
                          f"({t.storage_type}) instead")
    raise SchemaError(f"{what}: not supported (Delta Lake cannot store it, or it has no canonical hash)")


def storable_column(column: pa.Array | pa.ChunkedArray, name: str) -> pa.Array | pa.ChunkedArray:
    """``column`` converted to its :func:`storable_type`, refusing any conversion that loses values.

    One vectorised, checked cast per column, and none when the type is already storable.

    >>> storable_column(pa.array([1, 2], pa.uint64()), "n").type
    DataType(int64)
    >>> storable_column(pa.array([2**64 - 1], pa.uint64()), "n")
    Traceback (most recent call last):
    ...
    orca.errors.SchemaError: column 'n': uint64 values do not all fit int64 (Delta has no unsigned ints): ...
    """
    t = column.type
    target = storable_type(t, name)
    if target.equals(t):
        return column
    try:
        return column.cast(target, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        if pa.types.is_unsigned_integer(t):
            hint = "uint64 values do not all fit int64 (Delta has no unsigned ints)"
        elif pa.types.is_timestamp(t):
            hint = ("some timestamps have sub-microsecond digits (Delta keeps microseconds); "
                    "truncate them first, e.g. pl.col(c).dt.truncate('1us')")
        else:
            hint = f"{t} values do not all fit {target}"
        raise SchemaError(f"column {name!r}: {hint}: {exc}") from exc


def storable_table(table: pa.Table) -> pa.Table:
    """Every column of ``table`` through :func:`storable_column` (field metadata is kept).

    >>> storable_table(pa.table({"a": pa.array([1], pa.uint8())})).schema.field("a").type
    DataType(int16)
    """
    fields, columns = [], []
    for field, column in zip(table.schema, table.columns, strict=True):
        column = storable_column(column, field.name)
        fields.append(field.with_type(column.type))
        columns.append(column)
    if all(f.type.equals(g.type) for f, g in zip(fields, table.schema, strict=True)):
        return table
    return pa.Table.from_arrays(columns, schema=pa.schema(fields, metadata=table.schema.metadata))


def is_optional(annotation: Any) -> bool:
    """True for ``T | None`` / ``Optional[T]``."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return type(None) in typing.get_args(annotation)
    return annotation is None or annotation is type(None)


def strip_optional(annotation: Any) -> Any:
    """``T | None`` -> ``T``; anything else unchanged. Unions of several types are refused."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise SchemaError(f"union type {annotation!r} has no Arrow type; use one type or T | None")
        return args[0]
    return annotation


def _is_typeddict(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, dict) and hasattr(tp, "__annotations__") and hasattr(tp, "__total__")


def _is_model(tp: Any) -> bool:
    return isinstance(tp, type) and issubclass(tp, pydantic.BaseModel)


def _struct_fields(tp: Any) -> dict[str, Any]:
    if _is_model(tp):
        return {name: f.annotation for name, f in tp.model_fields.items()}
    if dataclasses.is_dataclass(tp):
        return typing.get_type_hints(tp)
    return typing.get_type_hints(tp)  # TypedDict


def arrow_type(annotation: Any) -> pa.DataType:
    """The Arrow type for a Python annotation (``T | None`` gives the type of ``T``).

    Supported: int, float, str, bool, bytes, date, datetime, Decimal, Path, ``list[T]``,
    pydantic models, dataclasses and TypedDicts as structs, and Arrow types (normalised by
    :func:`storable_type`). ``datetime.time`` and ``datetime.timedelta`` are refused: Delta Lake
    has no type for them (see ``docs/hashing.md``).

    >>> arrow_type(pa.uint32()), arrow_type(pa.timestamp("ns"))
    (DataType(int64), TimestampType(timestamp[us]))
    """
    tp = strip_optional(annotation)
    if tp in _SCALARS:
        return _SCALARS[tp]
    if tp in _UNSTORABLE:
        raise SchemaError(f"annotation {annotation!r} is not supported: {_UNSTORABLE[tp]}")
    if isinstance(tp, pa.DataType):
        return storable_type(tp, f"type {tp}")
    origin = typing.get_origin(tp)
    if origin in (set, frozenset, typing.Set, typing.FrozenSet):  # noqa: UP006
        raise SchemaError(f"annotation {annotation!r} is not supported: a set has no order, so it "
                          "has no stable hash; use list[T] and return sorted(values)")
    if origin in (list, typing.List):  # noqa: UP006
        (item,) = typing.get_args(tp) or (None,)
        if item is None:
            raise SchemaError("list annotations need an item type, e.g. list[int]")
        # Items are nullable in Arrow (as Polars writes them); values are checked on output.
        return pa.large_list(arrow_type(item))
    if _is_model(tp) or _is_typeddict(tp) or dataclasses.is_dataclass(tp):
        return pa.struct([arrow_field(n, t) for n, t in _struct_fields(tp).items()])
    raise SchemaError(f"annotation {annotation!r} has no Arrow type (supported: "
                      "int, float, str, bool, bytes, date, datetime, Decimal, Path, list[T], "
                      "T | None, pydantic models, dataclasses, TypedDicts, Arrow types)")


def is_path_annotation(annotation: Any) -> bool:
    """``Path`` or a list of paths at any depth (``list[Path]``, ``list[list[Path | None]]``),
    optional or not: a column of files, hashed by content.

    >>> is_path_annotation(list[pathlib.Path | None]), is_path_annotation(list[str])
    (True, False)
    """
    tp = strip_optional(annotation)
    if tp is pathlib.Path:
        return True
    args = typing.get_args(tp)
    return typing.get_origin(tp) in (list, typing.List) and len(args) == 1 and is_path_annotation(args[0])  # noqa: UP006


def arrow_field(name: str, annotation: Any) -> pa.Field:
    """An Arrow field for ``annotation``: nullable iff Optional, path metadata for ``Path`` and
    lists of paths (:func:`is_path_annotation`)."""
    try:
        tp = arrow_type(annotation)
        metadata = PATH_METADATA if is_path_annotation(annotation) else None
    except SchemaError as exc:
        raise SchemaError(f"{name!r}: {exc}") from exc
    return pa.field(name, tp, nullable=is_optional(annotation), metadata=metadata)


def _converter(annotation: Any):
    """A function turning an Arrow-to-Python value (``to_pylist`` output) into ``annotation``."""
    tp = strip_optional(annotation)
    if tp is pathlib.Path:
        return pathlib.Path
    if _is_model(tp):
        return tp.model_validate
    if dataclasses.is_dataclass(tp) or _is_typeddict(tp):
        # convert each field too (a Path inside a dataclass or TypedDict arrives as str)
        fields = {n: _converter(t) for n, t in _struct_fields(tp).items()}
        return lambda v: tp(**{k: x if x is None or fields.get(k) is None else fields[k](x) for k, x in v.items()})
    if typing.get_origin(tp) in (list, typing.List):  # noqa: UP006
        inner = _converter(typing.get_args(tp)[0])
        if inner is None:
            return None
        return lambda v: [None if x is None else inner(x) for x in v]
    return None


def to_python(column: pa.Array | pa.ChunkedArray, annotation: Any = None, *, path: bool = False) -> list:
    """Arrow column -> list of Python values of ``annotation`` (nulls stay ``None``)."""
    t = column.type
    if column.null_count == 0 and (pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t)):
        values = column.to_numpy(zero_copy_only=False).tolist()  # same values, ~10x faster than to_pylist
    else:
        values = column.to_pylist()
    convert = as_paths if path and annotation is None else _converter(annotation)
    if convert is None:
        return values
    return [None if v is None else convert(v) for v in values]


def as_paths(value: Any) -> Any:
    """A path column's value as ``Path``: the text, or each text of a list of them."""
    if isinstance(value, list):
        return [None if v is None else as_paths(v) for v in value]
    return pathlib.Path(value)


def _to_plain(value: Any) -> Any:
    if isinstance(value, set | frozenset):
        raise SchemaError("a set has no order, so its list would hash differently in every "
                          f"process; return sorted(...) or a list instead of {value!r:.60}")
    if isinstance(value, pathlib.PurePath):
        return str(value)
    if isinstance(value, pydantic.BaseModel):
        return _to_plain(value.model_dump())  # fields may hold Paths (or other models)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return _to_plain(dataclasses.asdict(value))
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


_ALLOWED: list[tuple[Callable[[pa.DataType], bool], tuple[type, ...]]] = [
    (pa.types.is_boolean, (bool, np.bool_)),
    (pa.types.is_integer, (int, np.integer)),
    (pa.types.is_floating, (float, int, np.floating, np.integer)),
    (lambda t: pa.types.is_string(t) or pa.types.is_large_string(t), (str, pathlib.PurePath)),
]


def _allowed_types(tp: pa.DataType) -> tuple[type, ...] | None:
    """Python types accepted for an Arrow type (None = let pyarrow decide)."""
    for test, allowed in _ALLOWED:
        if test(tp):
            return allowed
    return None


def _bad_value(v: Any, allowed: tuple[type, ...]) -> bool:
    # bool is an int subclass: refuse True for int/float outputs
    return not isinstance(v, allowed) or (isinstance(v, bool) and bool not in allowed)


def _needs_plain(field: pa.Field) -> bool:
    tp = field.type
    return bool(field.metadata) or pa.types.is_struct(tp) or pa.types.is_list(tp) or pa.types.is_large_list(tp)


def _plain_values(values: list, field: pa.Field) -> list:
    """``_to_plain`` of every value; a value that cannot be stored raises naming its row."""
    plain = []
    for i, v in enumerate(values):
        try:
            plain.append(_to_plain(v))
        except SchemaError as exc:
            err = SchemaError(f"output {field.name!r}: {exc}")
            err.row = i
            raise err from exc
    return plain


def to_arrow_array(values: list, field: pa.Field, failed: Sequence[bool] | None = None) -> pa.Array:
    """Python values -> Arrow array of ``field``'s type, strictly.

    Rows flagged in ``failed`` must be ``None`` and are exempt from the nullability rule. A bad
    value raises ``SchemaError`` with the index of the first bad row in ``.row`` (``None`` when
    no single value is at fault); callers turn that into a message naming the input tag.
    """
    allowed = _allowed_types(field.type)
    seen = set(map(type, values))  # one C-level pass; the per-row search below runs only if needed
    exact = allowed is None or seen <= {*allowed, type(None)}
    if exact and bool in seen and allowed is not None and bool not in allowed:
        exact = False
    if not exact or (type(None) in seen and not field.nullable):
        for i, v in enumerate(values):
            if v is None:
                if not field.nullable and not (failed and failed[i]):
                    err = SchemaError(f"output {field.name!r} is None but is not declared Optional")
                    err.row = i
                    raise err
            elif allowed is not None and _bad_value(v, allowed):
                err = SchemaError(f"output {field.name!r} should be {field.type}, got {type(v).__name__} {v!r:.60}")
                err.row = i
                raise err
    plain = _plain_values(values, field) if _needs_plain(field) else values
    try:
        return pa.array(plain, type=field.type)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError) as exc:
        for i, v in enumerate(plain):
            try:
                pa.array([v], type=field.type)
            except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
                err = SchemaError(f"output {field.name!r} should be {field.type}, got {v!r:.60}: {exc}")
                err.row = i
                raise err from exc
        err = SchemaError(f"output {field.name!r}: {exc}")
        err.row = None  # no single value is at fault: the whole column is
        raise err from exc


def type_kind(t: pa.DataType) -> str:
    """A coarse kind of Arrow type: values of one kind convert to another type of that kind."""
    checks = [("null", pa.types.is_null), ("bool", pa.types.is_boolean), ("int", pa.types.is_integer),
              ("float", pa.types.is_floating), ("decimal", pa.types.is_decimal),
              ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x) or pa.types.is_string_view(x)),
              ("binary", lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x)
               or pa.types.is_fixed_size_binary(x) or pa.types.is_binary_view(x)),
              ("date", pa.types.is_date), ("timestamp", pa.types.is_timestamp),
              ("list", lambda x: pa.types.is_list(x) or pa.types.is_large_list(x) or pa.types.is_fixed_size_list(x)
               or pa.types.is_list_view(x)),
              ("struct", pa.types.is_struct)]
    if pa.types.is_dictionary(t):
        return type_kind(t.value_type)
    return next((name for name, check in checks if check(t)), str(t))


def accepts(declared: pa.DataType, actual: pa.DataType) -> bool:
    """Whether a parameter declared as ``declared`` can take a column of type ``actual``:
    same kind (an int column for a float parameter too), recursively for lists and structs;
    an all-null column fits anything.

    >>> accepts(pa.float64(), pa.int32()), accepts(pa.int64(), pa.large_string())
    (True, False)
    """
    have, want = type_kind(actual), type_kind(declared)
    if have == "null" or have == want and want not in ("list", "struct"):
        return True
    if (have, want) in (("int", "float"), ("int", "decimal")):
        return True
    if have == want == "list":
        return accepts(declared.value_type, actual.value_type)
    if have == want == "struct":
        fields = {f.name: f.type for f in actual}
        return all(f.name in fields and accepts(f.type, fields[f.name]) for f in declared)
    return False
