"""Python annotations <-> Arrow types.

Function pods declare their inputs and outputs with ordinary annotations; this module turns
them into Arrow fields and converts values at the boundary between Arrow columns and Python
calls. ``pathlib.Path`` is a *logical* type: a string column whose field carries
``orca.hashing.PATH_METADATA`` so hashing reads the file's content, not its name.

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
]

_SCALARS: dict[Any, pa.DataType] = {
    int: pa.int64(),
    float: pa.float64(),
    str: pa.large_string(),
    bool: pa.bool_(),
    bytes: pa.large_binary(),
    datetime.date: pa.date32(),
    datetime.datetime: pa.timestamp("us"),
    datetime.time: pa.time64("us"),
    datetime.timedelta: pa.duration("us"),
    decimal.Decimal: pa.decimal128(38, 18),
    pathlib.Path: pa.large_string(),
}


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

    Supported: int, float, str, bool, bytes, date, datetime, time, timedelta, Decimal, Path,
    ``list[T]``, and pydantic models, dataclasses and TypedDicts as structs.
    """
    tp = strip_optional(annotation)
    if tp in _SCALARS:
        return _SCALARS[tp]
    if isinstance(tp, pa.DataType):
        return tp
    origin = typing.get_origin(tp)
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
                      "T | None, pydantic models, dataclasses, TypedDicts)")


def arrow_field(name: str, annotation: Any) -> pa.Field:
    """An Arrow field for ``annotation``: nullable iff Optional, path metadata for ``Path``."""
    metadata = PATH_METADATA if strip_optional(annotation) is pathlib.Path else None
    return pa.field(name, arrow_type(annotation), nullable=is_optional(annotation), metadata=metadata)


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
    convert = pathlib.Path if path and annotation is None else _converter(annotation)
    if convert is None:
        return values
    return [None if v is None else convert(v) for v in values]


def _to_plain(value: Any) -> Any:
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
    plain = [_to_plain(v) for v in values] if _needs_plain(field) else values
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
