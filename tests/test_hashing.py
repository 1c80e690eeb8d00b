"""Tests for orca.hashing: the orca-hash-1 encoding, its golden vectors, files, and invariants.

``reference_hash`` below is a slow, per-value transcription of docs/hashing.md written
independently of the vectorised code; the golden vectors and hypothesis tests check that
both agree. Regenerate tests/golden_hashes.json only together with a new ENCODING_VERSION:
``python tests/test_hashing.py --write-golden``.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import struct
import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
import xxhash
from hypothesis import given, settings
from hypothesis import strategies as st

from orca import hashing
from orca.errors import HashingError
from orca.hashing import (
    ENCODING_VERSION,
    PATH_METADATA,
    hash_bytes,
    hash_file,
    hash_packet,
    hash_packet_keys,
    hash_packets,
    is_path_field,
)

GOLDEN = Path(__file__).with_name("golden_hashes.json")
FILE_CONTENT = b"hello orca\n"

# ---------------------------------------------------------------------- reference encoder

_PER_SECOND = {"s": 1, "ms": 10**3, "us": 10**6, "ns": 10**9}


def _enc_str(s: str) -> bytes:
    data = s.encode("utf-8")
    return struct.pack("<I", len(data)) + data


def _ref_type(t: pa.DataType, field: pa.Field | None = None) -> str:
    if field is not None and is_path_field(field):
        return f"list<{_ref_type(t.value_type, _path_items(t))}>" if hasattr(t, "value_field") else "path"
    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_null(t):
        return "null"
    if pa.types.is_boolean(t):
        return "bool"
    if pa.types.is_integer(t):
        return "int"
    if pa.types.is_floating(t):
        return "float"
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return "string"
    if pa.types.is_decimal(t):
        return f"decimal({t.scale})"
    if pa.types.is_date(t):
        return "date"
    if pa.types.is_timestamp(t):
        return "timestamp" if t.tz is None else "timestamp[UTC]"
    if pa.types.is_time(t):
        return "time"
    if pa.types.is_duration(t):
        return "duration"
    if pa.types.is_struct(t):
        fields = sorted((t.field(i) for i in range(t.num_fields)), key=lambda f: f.name)
        return "struct<" + ",".join(f"{f.name}:{_ref_type(f.type, f)}" for f in fields) + ">"
    if hasattr(t, "value_field"):
        return f"list<{_ref_type(t.value_type, t.value_field)}>"
    return "binary"


def _path_items(t: pa.DataType) -> pa.Field:
    """The items of a list marked as paths: paths themselves."""
    return t.value_field.with_metadata(PATH_METADATA)


def _ref_file_digest(path: Path) -> bytes:
    if path.is_dir():
        files = sorted(
            (p.relative_to(path).as_posix().encode(), p) for p in path.rglob("*") if p.is_file()
        )
        body = b"".join(struct.pack("<I", len(rel)) + rel + _ref_file_digest(p) for rel, p in files)
        return xxhash.xxh3_128_digest(body)
    return xxhash.xxh3_128_digest(path.read_bytes())


def _ref_value(s: pa.Scalar, t: pa.DataType, field: pa.Field | None = None) -> bytes:
    if not s.is_valid:
        return b"\x00"
    if pa.types.is_dictionary(t):
        s, t = s.value, t.value_type
    kind = _ref_type(t, field)
    if kind == "path":
        payload = _ref_file_digest(Path(s.as_py()))
    elif kind == "bool":
        payload = bytes([s.as_py()])
    elif kind == "int":
        payload = s.as_py().to_bytes(16, "little", signed=True)
    elif kind == "float":
        v = float(s.as_py())
        payload = struct.pack("<Q", 0x7FF8000000000000) if v != v else struct.pack("<d", v + 0.0)
    elif kind in ("string", "binary"):
        data = s.as_py().encode() if kind == "string" else s.as_py()
        payload = struct.pack("<Q", len(data)) + data
    elif kind.startswith("decimal"):
        sign, digits, exponent = s.as_py().as_tuple()
        unscaled = int("".join(map(str, digits)) or "0") * 10 ** (exponent + t.scale)
        payload = (-unscaled if sign else unscaled).to_bytes(16, "little", signed=True)
    elif kind == "date":
        payload = struct.pack("<q", (s.as_py() - dt.date(1970, 1, 1)).days)
    elif kind in ("timestamp", "timestamp[UTC]", "duration"):
        seconds, rest = divmod(s.value, _PER_SECOND[t.unit])
        payload = struct.pack("<qq", seconds, rest * (10**9 // _PER_SECOND[t.unit]))
    elif kind == "time":
        payload = struct.pack("<q", s.value * (10**9 // _PER_SECOND[t.unit]))
    elif kind.startswith("struct"):
        fields = sorted((t.field(i) for i in range(t.num_fields)), key=lambda f: f.name)
        payload = b"".join(_enc_str(f.name) + _ref_value(s[f.name], f.type, f) for f in fields)
    else:  # list (of paths when the field is marked)
        item_field = _path_items(t) if field is not None and is_path_field(field) else t.value_field
        items = [_ref_value(item, t.value_type, item_field) for item in s]
        payload = struct.pack("<Q", len(items)) + b"".join(items)
    return b"\x01" + payload


def reference_hash(table: pa.Table, row: int) -> str:
    data = _enc_str(ENCODING_VERSION)
    for name in sorted(table.column_names):
        field = table.schema.field(name)
        data += _enc_str(name) + _enc_str(_ref_type(field.type, field))
        data += _ref_value(table.column(name)[row], field.type, field)
    return xxhash.xxh3_128_hexdigest(data)


def one_row(value, type_: pa.DataType, *, name: str = "v", metadata=None) -> pa.Table:
    field = pa.field(name, type_, metadata=metadata)
    return pa.Table.from_arrays([pa.array([value], type_)], schema=pa.schema([field]))


def h(value, type_: pa.DataType) -> str:
    return hash_packets(one_row(value, type_))[0].as_py()


# -------------------------------------------------------------------------- golden vectors

UTC, PARIS = "UTC", "Europe/Paris"
INSTANT = dt.datetime(2024, 1, 2, 3, 4, 5, 678901)
CASES: dict[str, tuple] = {
    "null": (None, pa.null()),
    "bool_true": (True, pa.bool_()),
    "bool_false": (False, pa.bool_()),
    "bool_null": (None, pa.bool_()),
    "int64_1": (1, pa.int64()),
    "int64_0": (0, pa.int64()),
    "int64_minus_1": (-1, pa.int64()),
    "int64_min": (-(2**63), pa.int64()),
    "int8_min": (-128, pa.int8()),
    "uint64_max": (2**64 - 1, pa.uint64()),
    "int32_null": (None, pa.int32()),
    "float64_1_5": (1.5, pa.float64()),
    "float64_0": (0.0, pa.float64()),
    "float64_minus_0": (-0.0, pa.float64()),
    "float64_nan": (float("nan"), pa.float64()),
    "float64_inf": (float("inf"), pa.float64()),
    "float64_minus_inf": (float("-inf"), pa.float64()),
    "float32_0_1": (0.1, pa.float32()),
    "float16_0_5": (np.float16(0.5), pa.float16()),
    "float64_null": (None, pa.float64()),
    "string_empty": ("", pa.string()),
    "string_1": ("1", pa.string()),
    "string_unicode": ("héllo wörld ✓ 日本 🐋", pa.string()),
    "large_string_abc": ("abc", pa.large_string()),
    "string_null": (None, pa.string()),
    "binary_bytes": (b"\x00\xff\x01", pa.binary()),
    "binary_empty": (b"", pa.binary()),
    "decimal_12_34": (Decimal("12.34"), pa.decimal128(10, 2)),
    "decimal_minus_0_01": (Decimal("-0.01"), pa.decimal128(5, 2)),
    "decimal_38_digits": (Decimal("9" * 38), pa.decimal128(38, 0)),
    "date_leap_day": (dt.date(2024, 2, 29), pa.date32()),
    "date_before_epoch": (dt.date(1969, 12, 31), pa.date32()),
    "timestamp_us": (INSTANT, pa.timestamp("us")),
    "timestamp_ns_before_epoch": (-1, pa.timestamp("ns")),
    "timestamp_utc": (INSTANT, pa.timestamp("us", tz=UTC)),
    "timestamp_paris": (INSTANT, pa.timestamp("us", tz=PARIS)),
    "time_us": (dt.time(12, 34, 56, 789012), pa.time64("us")),
    "duration_ms": (dt.timedelta(days=-1, milliseconds=5), pa.duration("ms")),
    "list_int": ([1, 2, None], pa.list_(pa.int64())),
    "list_empty": ([], pa.list_(pa.int64())),
    "list_null": (None, pa.list_(pa.int64())),
    "list_list_string": ([["a"], [], None], pa.list_(pa.list_(pa.string()))),
    "struct": ({"b": "x", "a": 1}, pa.struct([("b", pa.string()), ("a", pa.int64())])),
    "struct_null_field": ({"a": None}, pa.struct([("a", pa.float64())])),
    "struct_null": (None, pa.struct([("a", pa.float64())])),
}
PACKETS: dict[str, dict] = {
    "empty_packet": {},
    "three_columns": {"z": [1.5], "x": 1, "y": "a"},
}


def _path_case(tmp: Path) -> dict[str, str]:
    """Path vectors: a file and a directory with fixed contents at a varying location."""
    (tmp / "file.txt").write_bytes(FILE_CONTENT)
    (tmp / "dir" / "sub").mkdir(parents=True)
    (tmp / "dir" / "a.txt").write_bytes(b"a")
    (tmp / "dir" / "sub" / "b.txt").write_bytes(b"b")
    tables = {
        name: one_row(str(tmp / name), pa.string(), metadata=PATH_METADATA)
        for name in ("file.txt", "dir")
    }
    listed = one_row([[str(tmp / "file.txt"), None], [], None, [str(tmp / "dir")]],
                     pa.large_list(pa.list_(pa.string())), metadata=PATH_METADATA)
    return {
        "path_list": hash_packets(listed)[0].as_py(),
        "path_list_reference": reference_hash(listed, 0),
        "path_list_of_paths": hash_packet({"v": [[tmp / "file.txt", None], [], None, [tmp / "dir"]]}),
        "path_file": hash_packets(tables["file.txt"])[0].as_py(),
        "path_dir": hash_packets(tables["dir"])[0].as_py(),
        "path_file_reference": reference_hash(tables["file.txt"], 0),
        "path_dir_reference": reference_hash(tables["dir"], 0),
        "hash_file": hash_file(tmp / "file.txt"),
        "hash_file_dir": hash_file(tmp / "dir"),
    }


def compute_golden(tmp: Path) -> dict:
    cases = {
        name: {"value": repr(value), "arrow_type": str(type_), "hash": h(value, type_)}
        for name, (value, type_) in CASES.items()
    }
    cases |= {name: {"packet": repr(p), "hash": hash_packet(p)} for name, p in PACKETS.items()}
    paths = _path_case(tmp)
    cases["path_file"] = {"content": FILE_CONTENT.decode(), "hash": paths["path_file"]}
    cases["path_dir"] = {"files": {"a.txt": "a", "sub/b.txt": "b"}, "hash": paths["path_dir"]}
    cases["path_list"] = {"value": "[[file, None], [], None, [dir]]", "hash": paths["path_list"]}
    cases["hash_file"] = {"content": FILE_CONTENT.decode(), "hash": paths["hash_file"]}
    cases["hash_file_dir"] = {
        "files": {"a.txt": "a", "sub/b.txt": "b"},
        "hash": paths["hash_file_dir"],
    }
    cases["hash_bytes_abc"] = {"bytes": "abc", "hash": hash_bytes(b"abc")}
    return {"encoding": ENCODING_VERSION, "cases": cases}


@pytest.fixture(scope="module")
def golden() -> dict:
    return json.loads(GOLDEN.read_text())


def test_golden_file_covers_every_case(golden):
    assert golden["encoding"] == ENCODING_VERSION
    expected = set(CASES) | set(PACKETS) | {"path_file", "path_dir", "path_list", "hash_file", "hash_file_dir"}
    assert set(golden["cases"]) == expected | {"hash_bytes_abc"}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden_value(golden, name):
    value, type_ = CASES[name]
    want = golden["cases"][name]
    assert (want["value"], want["arrow_type"]) == (repr(value), str(type_))
    table = one_row(value, type_)
    assert hash_packets(table)[0].as_py() == want["hash"]
    assert reference_hash(table, 0) == want["hash"]
    assert hash_packet({"v": table.column(0)[0]}) == want["hash"]


@pytest.mark.parametrize("name", sorted(PACKETS))
def test_golden_packet(golden, name):
    assert hash_packet(PACKETS[name]) == golden["cases"][name]["hash"]


def test_golden_files(golden, tmp_path):
    got = _path_case(tmp_path)
    cases = golden["cases"]
    assert got["path_file"] == got["path_file_reference"] == cases["path_file"]["hash"]
    assert got["path_dir"] == got["path_dir_reference"] == cases["path_dir"]["hash"]
    assert got["path_list"] == got["path_list_reference"] == got["path_list_of_paths"] == cases["path_list"]["hash"]
    assert got["hash_file"] == cases["hash_file"]["hash"] == xxhash.xxh3_128_hexdigest(FILE_CONTENT)
    assert got["hash_file_dir"] == cases["hash_file_dir"]["hash"]
    assert hash_bytes(b"abc") == cases["hash_bytes_abc"]["hash"]


def test_encoding_by_hand():
    """The spec, spelled out once: {"x": 1} as int64."""
    data = (
        b"\x0b\x00\x00\x00orca-hash-1"
        + b"\x01\x00\x00\x00x"
        + b"\x03\x00\x00\x00int"
        + b"\x01"
        + (1).to_bytes(16, "little")
    )
    assert hash_packet({"x": 1}) == xxhash.xxh3_128_hexdigest(data)


# ------------------------------------------------------------------------------ type rules


def test_one_float_string_bool_all_differ():
    assert len({hash_packet({"v": v}) for v in (1, 1.0, "1", True)}) == 4


@pytest.mark.parametrize(
    ("zero", "type_"),
    [
        (0, pa.int64()),
        ("", pa.string()),
        (b"", pa.binary()),
        (False, pa.bool_()),
        (0.0, pa.float64()),
        ([], pa.list_(pa.int64())),
        ({"a": None}, pa.struct([("a", pa.int8())])),
    ],
)
def test_null_differs_from_every_value(zero, type_):
    assert h(None, type_) != h(zero, type_)
    assert h(None, pa.null()) not in (h(zero, type_), h(None, type_))


@pytest.mark.parametrize(
    "type_", [pa.int8(), pa.int16(), pa.int32(), pa.uint8(), pa.uint16(), pa.uint32(), pa.uint64()]
)
def test_integer_width_does_not_matter(type_):
    assert h(1, type_) == h(1, pa.int64()) == hash_packet({"v": 1})
    if pa.types.is_signed_integer(type_):
        assert h(-5, type_) == h(-5, pa.int64())


def test_large_unsigned_is_not_negative():
    assert h(2**64 - 1, pa.uint64()) != h(-1, pa.int64())
    assert h(2**63, pa.uint64()) != h(-(2**63), pa.int64())


@pytest.mark.parametrize("type_", [pa.float16(), pa.float32()])
def test_float_width_does_not_matter(type_):
    assert h(np.float16(1.5) if pa.types.is_float16(type_) else 1.5, type_) == h(1.5, pa.float64())


def test_negative_zero_and_nans_are_normalised():
    assert h(-0.0, pa.float64()) == h(0.0, pa.float64()) == h(-0.0, pa.float32())
    nans = np.array([0x7FF8000000000000, 0xFFF8000000000000, 0x7FF0000000000001], np.uint64)
    table = pa.table({"v": pa.array(nans.view(np.float64))})
    assert len(set(hash_packets(table).to_pylist())) == 1
    assert h(float("nan"), pa.float32()) == hash_packets(table)[0].as_py()
    assert h(float("nan"), pa.float64()) != h(float("inf"), pa.float64())


def test_time_zone_and_unit_normalisation():
    utc = dt.datetime(2024, 6, 1, 12, 0, tzinfo=dt.UTC)
    paris = utc.astimezone(dt.timezone(dt.timedelta(hours=2)))
    assert h(utc, pa.timestamp("us", tz="UTC")) == h(paris, pa.timestamp("us", tz="Europe/Paris"))
    assert h(utc, pa.timestamp("ms", tz="UTC")) == h(utc, pa.timestamp("ns", tz="Asia/Tokyo"))
    naive = utc.replace(tzinfo=None)
    assert h(naive, pa.timestamp("us")) != h(utc, pa.timestamp("us", tz="UTC"))
    assert (
        h(naive, pa.timestamp("ms")) == h(naive, pa.timestamp("us")) == h(naive, pa.timestamp("s"))
    )
    assert h(-1500, pa.timestamp("ms")) == h(-1_500_000, pa.timestamp("us"))
    assert h(-1500, pa.duration("ms")) == h(-1_500_000_000, pa.duration("ns"))
    assert h(-1500, pa.duration("ms")) != h(-1500, pa.timestamp("ms"))
    assert h(dt.time(1, 2, 3), pa.time32("s")) == h(dt.time(1, 2, 3), pa.time64("ns"))


def test_date_kinds_agree():
    day = dt.date(1960, 5, 17)
    assert h(day, pa.date32()) == h(day, pa.date64())
    assert h(day, pa.date32()) != h(dt.datetime(1960, 5, 17), pa.timestamp("s"))


def test_decimal_scale_matters_precision_does_not():
    assert h(Decimal("1.50"), pa.decimal128(5, 2)) == h(Decimal("1.50"), pa.decimal128(30, 2))
    assert h(Decimal("1.50"), pa.decimal32(5, 2)) == h(Decimal("1.50"), pa.decimal64(12, 2))
    assert h(Decimal("1.50"), pa.decimal256(60, 2)) == h(Decimal("1.50"), pa.decimal128(5, 2))
    assert h(Decimal("1.5"), pa.decimal128(5, 1)) != h(Decimal("1.50"), pa.decimal128(5, 2))
    with pytest.raises(HashingError, match="'v'"):
        h(Decimal("1" * 50), pa.decimal256(60, 0))


def test_string_and_binary_kinds():
    s = h("abc", pa.string())
    assert s == h("abc", pa.large_string()) == h("abc", pa.string_view())
    dictionary = pa.table({"v": pa.array(["abc", "x", "abc"]).dictionary_encode()})
    assert hash_packets(dictionary).to_pylist()[::2] == [s, s]
    chunks = pa.chunked_array(
        [pa.array(["x", "abc"]).dictionary_encode(), pa.array(["abc", None]).dictionary_encode()]
    )
    assert (
        hash_packets(pa.table({"v": chunks})).to_pylist()
        == hash_packets(pa.table({"v": ["x", "abc", "abc", None]})).to_pylist()
    )
    b = h(b"abc", pa.binary())
    assert (
        b == h(b"abc", pa.large_binary()) == h(b"abc", pa.binary(3)) == h(b"abc", pa.binary_view())
    )
    assert b != s


@settings(max_examples=80, deadline=None)
@given(width=st.integers(0, 40), data=st.data())
def test_values_of_one_width_hash_as_any_other_values(width, data):
    """Values that all have one width are hashed from a view of their buffer (no cast): the same
    hashes as the view types, which take the general path, for every kind, slice and null."""
    n = data.draw(st.integers(1, 12))
    values = [data.draw(st.binary(min_size=width, max_size=width)) for _ in range(n)]
    odd = data.draw(st.sampled_from([None, "null", "longer"]))
    if odd is not None:
        values[data.draw(st.integers(0, n - 1))] = None if odd == "null" else b"x" * (width + 1)
    start = data.draw(st.integers(0, n - 1))
    expected = hash_packets(pa.table({"v": pa.array(values, pa.binary_view()).slice(start)})).to_pylist()
    kinds = [pa.binary(), pa.large_binary()] + ([pa.binary(width)] if odd != "longer" else [])
    for kind in kinds:
        got = hash_packets(pa.table({"v": pa.array(values, kind).slice(start)})).to_pylist()
        assert got == expected, kind
    text = [None if v is None else v.hex()[:len(v)] for v in values]
    expected = hash_packets(pa.table({"v": pa.array(text, pa.string_view()).slice(start)})).to_pylist()
    for kind in (pa.string(), pa.large_string()):
        assert hash_packets(pa.table({"v": pa.array(text, kind).slice(start)})).to_pylist() == expected


def test_list_kinds_agree():
    values = [1, None, 3]
    expected = h(values, pa.list_(pa.int64()))
    for type_ in (
        pa.large_list(pa.int32()),
        pa.list_(pa.int8(), 3),
        pa.list_view(pa.int64()),
        pa.large_list_view(pa.uint16()),
    ):
        assert h(values, type_) == expected, type_
    assert h([], pa.list_(pa.int64())) != h(None, pa.list_(pa.int64()))
    assert h([None], pa.list_(pa.int64())) != h([], pa.list_(pa.int64()))
    assert h([1], pa.list_(pa.int64())) != h([1], pa.list_(pa.float64()))


def test_struct_field_order_does_not_matter():
    ab = pa.struct([("a", pa.int64()), ("b", pa.string())])
    ba = pa.struct([("b", pa.string()), ("a", pa.int64())])
    assert h({"a": 1, "b": "x"}, ab) == h({"a": 1, "b": "x"}, ba)
    assert h({"a": 1, "b": "x"}, ab) != h({"a": 1, "b": "y"}, ab)


def test_nullability_does_not_matter():
    nullable = pa.table({"v": [1, 2]})
    required = nullable.cast(pa.schema([pa.field("v", pa.int64(), nullable=False)]))
    assert hash_packets(required).equals(hash_packets(nullable))


@pytest.mark.parametrize(
    "array",
    [
        pa.array([{1: 2}], pa.map_(pa.int64(), pa.int64())),
        pa.RunEndEncodedArray.from_arrays(pa.array([1], pa.int32()), pa.array([1])),
        pa.UnionArray.from_sparse(pa.array([0], pa.int8()), [pa.array([1])]),
        pa.array([b"\x00" * 16], pa.uuid()),
    ],
    ids=["map", "run_end_encoded", "union", "extension"],
)
def test_unsupported_type_names_the_column(array):
    table = pa.table({"ok": [1], "weird_col": array})
    with pytest.raises(HashingError, match="weird_col") as info:
        hash_packets(table)
    assert str(array.type) in str(info.value)
    nested = pa.StructArray.from_arrays([array], names=["inner"])
    with pytest.raises(HashingError, match=r"outer\.inner"):
        hash_packets(pa.table({"outer": nested}))


def test_uninferable_python_value_raises():
    with pytest.raises(HashingError, match="'v'"):
        hash_packet({"v": object()})


# ------------------------------------------------------------------------- table handling


def test_unknown_column_lists_available():
    with pytest.raises(HashingError, match=r"'nope'.*\['a', 'b'\]"):
        hash_packets(pa.table({"a": [1], "b": [2]}), ["a", "nope"])


def test_empty_table_and_empty_packet():
    table = pa.table({"a": pa.array([], pa.int64())})
    result = hash_packets(table)
    assert result.type == pa.string() and len(result) == 0
    empty = mixed_table().slice(0, 0)
    assert len(hash_packets(empty)) == 0
    with pytest.raises(HashingError, match="m"):
        hash_packets(pa.table({"m": pa.array([], pa.map_(pa.int8(), pa.int8()))}))
    rows = hash_packets(pa.table({"a": [1, 2, 3]}), columns=[])
    assert rows.to_pylist() == [hash_packet({})] * 3


def test_output_shape():
    result = hash_packets(pa.table({"a": list(range(5))}))
    assert result.type == pa.string() and result.null_count == 0
    assert all(len(x) == 32 and x == x.lower() for x in result.to_pylist())
    assert len(set(result.to_pylist())) == 5


def test_column_subset_and_order():
    table = pa.table({"a": [1, 2], "b": ["x", "y"], "c": [0.5, None]})
    assert hash_packets(table, ["c", "a"]).equals(hash_packets(table, ["a", "c"]))
    assert hash_packets(table, ["a", "c"]).equals(hash_packets(table.select(["c", "a"])))
    assert hash_packets(table, ["a"])[1].as_py() == hash_packet({"a": 2})


def mixed_table(n: int = 23) -> pa.Table:
    rng = np.random.default_rng(1)
    ints = [None if i % 5 == 0 else int(x) for i, x in enumerate(rng.integers(-9, 9, n))]
    return pa.table(
        {
            "i": pa.array(ints, pa.int32()),
            "f": pa.array(rng.standard_normal(n)),
            "s": pa.array([None if i % 7 == 3 else "s" * (i % 4) for i in range(n)]),
            "l": pa.array([None if i % 6 == 1 else list(range(i % 3)) for i in range(n)]),
            "st": pa.array(
                [{"a": i, "b": [str(i)] * (i % 2)} if i % 4 else None for i in range(n)]
            ),
            "t": pa.array([i * 10**9 + 1 for i in range(n)], pa.timestamp("ns", tz="UTC")),
            "d": pa.array(
                [Decimal(i) / 4 if i % 3 else None for i in range(n)], pa.decimal128(9, 2)
            ),
        }
    )


def test_sliced_and_chunked_match_contiguous():
    table = mixed_table()
    expected = hash_packets(table).to_pylist()
    assert hash_packets(table.slice(5, 11)).to_pylist() == expected[5:16]
    batch = table.to_batches()[0].slice(3)
    assert hash_packets(batch).to_pylist() == expected[3:]
    chunked = pa.concat_tables([table.slice(0, 4), table.slice(4, 9), table.slice(13)])
    assert chunked.column(0).num_chunks == 3
    assert hash_packets(chunked).to_pylist() == expected
    sliced_columns = pa.table(
        {name: table.column(name).combine_chunks().slice(2, 10) for name in table.column_names}
    )
    assert hash_packets(sliced_columns).to_pylist() == expected[2:12]


def test_row_chunking_does_not_change_hashes(monkeypatch):
    table = mixed_table(50)
    expected = hash_packets(table).to_pylist()
    monkeypatch.setattr(hashing, "_CHUNK_ROWS", 7)
    assert hash_packets(table).to_pylist() == expected
    assert expected == [reference_hash(table, i) for i in range(len(table))]


def test_too_many_rows_raises(monkeypatch):
    monkeypatch.setattr(hashing, "_MAX_ROWS", 2)
    with pytest.raises(HashingError, match="batches"):
        hash_packets(pa.table({"a": [1, 2, 3]}))


def test_hash_packet_python_values():
    table = pa.table({"a": [1], "b": ["x"], "c": [[1.5]], "d": [dt.date(2020, 1, 1)]})
    assert (
        hash_packet({"d": dt.date(2020, 1, 1), "c": [1.5], "b": "x", "a": 1})
        == hash_packets(table)[0].as_py()
    )
    assert hash_packet({"v": None}) == h(None, pa.null())
    assert hash_packet({"a": pa.scalar(1, pa.uint8())}) == hash_packet({"a": 1})


# ------------------------------------------------------------------------------ hypothesis

SCALARS = {
    "int": (st.integers(-(2**63), 2**63 - 1), pa.int64()),
    "small": (st.integers(-128, 127), pa.int8()),
    "float": (st.floats(allow_nan=True), pa.float64()),
    "float32": (st.floats(width=32), pa.float32()),
    "str": (st.text(max_size=8), pa.string()),
    "bytes": (st.binary(max_size=8), pa.large_binary()),
    "bool": (st.booleans(), pa.bool_()),
    "list": (st.lists(st.integers(-5, 5), max_size=4), pa.list_(pa.int16())),
    "ts": (st.integers(-(2**62), 2**62), pa.timestamp("us", tz="UTC")),
    "date": (st.dates(), pa.date32()),
    "struct": (
        st.fixed_dictionaries({"a": st.booleans(), "z": st.text(max_size=3)}),
        pa.struct([("z", pa.string()), ("a", pa.bool_())]),
    ),
}


@st.composite
def tables(draw):
    kinds = draw(st.lists(st.sampled_from(sorted(SCALARS)), min_size=1, max_size=5))
    n = draw(st.integers(1, 6))
    columns = {}
    for i, kind in enumerate(kinds):
        values, type_ = SCALARS[kind]
        columns[f"{kind}_{i}"] = pa.array(
            draw(st.lists(st.none() | values, min_size=n, max_size=n)), type_
        )
    return pa.table(columns)


@settings(max_examples=60, deadline=None)
@given(tables(), st.randoms())
def test_vectorised_agrees_with_reference_and_hash_packet(table, random):
    hashes = hash_packets(table).to_pylist()
    for row in range(table.num_rows):
        assert hashes[row] == reference_hash(table, row)
        packet = {name: table.column(name)[row] for name in table.column_names}
        assert hash_packet(packet) == hashes[row]
    names = table.column_names[:]
    random.shuffle(names)
    assert hash_packets(table.select(names)).to_pylist() == hashes


def _canonical(x):
    if isinstance(x, float):
        return "nan" if x != x else x + 0.0
    return x


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(sorted(SCALARS)).flatmap(
        lambda k: st.tuples(st.just(k), st.none() | SCALARS[k][0], st.none() | SCALARS[k][0])
    )
)
def test_equal_values_iff_equal_hashes(case):
    kind, a, b = case
    type_ = SCALARS[kind][1]
    ha, hb = h(a, type_), h(b, type_)
    same = pa.array([a], type_).equals(pa.array([b], type_)) or _canonical(a) == _canonical(b)
    assert (ha == hb) == same


# ------------------------------------------------------------------------------------ files


def test_file_hash_is_content_not_name(tmp_path):
    a, b = tmp_path / "a.bin", tmp_path / "sub" / "other.txt"
    b.parent.mkdir()
    a.write_bytes(b"same")
    b.write_bytes(b"same")
    assert hash_file(a) == hash_file(str(b)) == xxhash.xxh3_128_hexdigest(b"same")
    paths = pa.table(
        {"p": [str(a), str(b), None]},
        schema=pa.schema([pa.field("p", pa.string(), metadata=PATH_METADATA)]),
    )
    hashes = hash_packets(paths).to_pylist()
    assert hashes[0] == hashes[1] == hash_packet({"p": b}) != hashes[2]
    assert hash_packet({"p": a}) != hash_packet({"p": str(a)})  # a str is just a string
    before = hash_file(a)
    a.write_bytes(b"edited")
    os.utime(a, ns=(1, 1))  # a new mtime, whatever the clock granularity
    assert hash_file(a) != before


def test_big_file_is_streamed(tmp_path):
    data = np.random.default_rng(0).bytes(3 * 2**20 + 17)
    (tmp_path / "big").write_bytes(data)
    assert hash_file(tmp_path / "big") == xxhash.xxh3_128_hexdigest(data)


def test_directory_hash(tmp_path):
    d = tmp_path / "d"
    (d / "x").mkdir(parents=True)
    (d / "a.txt").write_text("a")
    (d / "x" / "b.txt").write_text("b")
    first = hash_file(d)
    assert first == _ref_file_digest(d).hex()
    moved = tmp_path / "elsewhere"
    d.rename(moved)
    assert hash_file(moved) == first
    (moved / "x" / "b.txt").rename(moved / "x" / "c.txt")
    assert hash_file(moved) != first
    (moved / "x" / "c.txt").rename(moved / "x" / "b.txt")
    assert hash_file(moved) == first
    (moved / "x" / "new.txt").write_text("")
    assert hash_file(moved) != first
    (tmp_path / "empty").mkdir()
    assert hash_file(tmp_path / "empty") == xxhash.xxh3_128_hexdigest(b"")


def test_file_digests_are_memoised(tmp_path, monkeypatch):
    f = tmp_path / "f.txt"
    f.write_bytes(b"one")
    opened = []
    monkeypatch.setattr(
        hashing, "open", lambda *a, **k: opened.append(a[0]) or open(*a, **k), raising=False
    )
    first = hash_file(f)
    table = pa.table(
        {"p": [str(f)] * 3}, schema=pa.schema([pa.field("p", pa.string(), metadata=PATH_METADATA)])
    )
    hash_packets(table)
    hash_file(tmp_path)
    assert hash_file(f) == first and len(opened) == 1
    f.write_bytes(b"two")
    os.utime(f, ns=(5, 5))
    assert hash_file(f) != first and len(opened) == 2


def test_paths_resolve_as_pathlib_does_and_share_one_memo_entry(tmp_path, monkeypatch):
    (tmp_path / "d" / "e").mkdir(parents=True)
    (tmp_path / "d" / "f.txt").write_bytes(FILE_CONTENT)
    (tmp_path / "link.txt").symlink_to(tmp_path / "d" / "f.txt")
    (tmp_path / "dlink").symlink_to(tmp_path / "d")
    monkeypatch.chdir(tmp_path)
    spellings = ["d/f.txt", "./d/f.txt", "d//f.txt", "d/e/../f.txt", "d/f.txt/", "dlink/f.txt", "dlink/e/../f.txt",
                 "link.txt", str(tmp_path / "dlink" / "f.txt")]
    resolved = os.path.realpath(tmp_path / "d" / "f.txt")
    assert [found[0] for found in hashing.resolve_files(spellings)] == [resolved] * len(spellings)
    assert [str(Path(s).resolve()) for s in spellings] == [resolved] * len(spellings)
    assert list(hashing.resolve_files(["d", "missing.txt", "", None, "dlink"])) == [None] * 5
    hashing.forget_files()
    assert {hash_file(s) for s in spellings} == {xxhash.xxh3_128_hexdigest(FILE_CONTENT)}
    assert list(hashing._FILE_DIGESTS) == [resolved]


def test_hashing_a_column_of_files_costs_one_lstat_per_file(tmp_path, monkeypatch):
    files = [tmp_path / f"{i}.txt" for i in range(50)]
    for i, f in enumerate(files):
        f.write_text(str(i))
    table = pa.table({"p": [str(f) for f in files]},
                     schema=pa.schema([pa.field("p", pa.string(), metadata=PATH_METADATA)]))
    hash_packets(table)  # (the memo is filled: what follows is a rerun)
    calls = []
    real_lstat = os.lstat
    monkeypatch.setattr(os, "lstat", lambda path, *a, **k: calls.append(path) or real_lstat(path, *a, **k))
    hash_packets(table)
    # one per file, plus the folder's components once (Path.resolve took every component per file)
    assert len(calls) <= len(files) + len(tmp_path.parts) + 1


def test_missing_file_names_path_and_column(tmp_path):
    missing = tmp_path / "missing.csv"
    with pytest.raises(HashingError, match="missing.csv"):
        hash_file(missing)
    table = pa.table(
        {"input_file": [str(missing)]},
        schema=pa.schema([pa.field("input_file", pa.string(), metadata=PATH_METADATA)]),
    )
    with pytest.raises(HashingError, match=r"input_file.*missing\.csv"):
        hash_packets(table)
    with pytest.raises(HashingError, match="empty path"):
        hash_file("")


def test_nested_path_fields(tmp_path):
    (tmp_path / "a").write_bytes(b"A")
    (tmp_path / "b").write_bytes(b"A")
    item = pa.field("item", pa.string(), metadata=PATH_METADATA)
    lists = pa.table(
        {"v": pa.array([[str(tmp_path / "a")], [str(tmp_path / "b")]], pa.list_(item))}
    )
    hashes = hash_packets(lists).to_pylist()
    assert hashes[0] == hashes[1] == reference_hash(lists, 0)
    assert hashes[0] != h([str(tmp_path / "a")], pa.list_(pa.string()))
    struct = pa.struct([pa.field("f", pa.string(), metadata=PATH_METADATA)])
    missing = pa.table({"s": pa.array([{"f": str(tmp_path / "nope")}], struct)})
    with pytest.raises(HashingError, match=r"s\.f.*nope"):
        hash_packets(missing)


def test_path_field_must_be_strings():
    field = pa.field("p", pa.int64(), metadata=PATH_METADATA)
    assert is_path_field(field) and not is_path_field(pa.field("p", pa.string()))
    with pytest.raises(HashingError, match="'p'"):
        hash_packets(pa.table([pa.array([1])], schema=pa.schema([field])))


# ------------------------------------------------------------------------ across processes

_CHILD = """
import json, sys
import polars as pl
import pyarrow as pa
from orca.hashing import hash_packets
names = json.loads(sys.argv[1])
data = {"a": [1, None, 3], "b": ["x", "yy", None], "c": [[1.5], [], None],
        "d": [{"k": 1}, None, {"k": 2}], "e": [True, False, None]}
print(json.dumps(hash_packets(pa.table({n: data[n] for n in names})).to_pylist()))
"""


def test_hashes_identical_across_processes_and_hash_seeds():
    root = Path(hashing.__file__).parent.parent  # the directory holding the orca package
    outputs = []
    for seed, names in [("1", "abcde"), ("2", "edcba"), ("random", "cadbe")]:
        env = {
            **os.environ,
            "PYTHONHASHSEED": seed,
            "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
        }
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, json.dumps(list(names))],
            env=env,
            cwd=root,
            capture_output=True,
            text=True,
            check=True,
        )
        outputs.append(json.loads(result.stdout))
    assert outputs[0] == outputs[1] == outputs[2]
    assert len(set(outputs[0])) == 3


# ----------------------------------------------------------------------------- regenerate

if __name__ == "__main__" and sys.argv[1:] == ["--write-golden"]:
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(
            json.dumps(compute_golden(Path(tmp)), indent=1, ensure_ascii=False) + "\n"
        )
    print(f"wrote {GOLDEN}")


def test_hash_packets_takes_polars_frames_and_refuses_other_things():
    import polars as pl

    frame = pl.DataFrame({"x": [1, 2], "y": ["a", "b"]})
    assert hash_packets(frame).to_pylist() == hash_packets(frame.to_arrow()).to_pylist()
    with pytest.raises(HashingError, match="hash_packets takes"):
        hash_packets({"x": [1]})


# ----------------------------------------------- values and types with no stable encoding


def test_dictionary_of_any_type_hashes_as_its_values():
    plain = pa.array([3, None, 3, 7], pa.int64())
    encoded = plain.dictionary_encode()
    assert hash_packets(pa.table({"v": encoded})).equals(hash_packets(pa.table({"v": plain})))
    # a null among the dictionary's *values* (not its indices) is a null too
    odd = pa.DictionaryArray.from_arrays(pa.array([0, 1], pa.int8()), pa.array([None, 5]))
    assert hash_packets(pa.table({"v": odd})).equals(hash_packets(pa.table({"v": pa.array([None, 5])})))


@pytest.mark.parametrize("value", [{"a", "b"}, frozenset({1}), [1, {"x"}], {"k": {"y", "z"}}],
                         ids=["set", "frozenset", "nested_in_list", "nested_in_dict"])
def test_sets_are_refused_naming_the_column(value):
    # pyarrow would turn a set into a list in iteration order, which changes with PYTHONHASHSEED
    with pytest.raises(HashingError, match=r"'labels.*set has no order"):
        hash_packet({"labels": value})


def test_polars_object_columns_are_refused_naming_the_column():
    # Polars exports Object values as 8-byte pointers (a different "hash" every process)
    frame = pl.DataFrame({"x": [1, 2], "blob": pl.Series([object(), {1, 2}], dtype=pl.Object)})
    with pytest.raises(HashingError, match=r"\['blob'\].*Object"):
        hash_packet_keys(frame)
    assert len(hash_packet_keys(frame.select("x"))) == 2


def test_non_string_dict_keys_are_refused_naming_the_column():
    with pytest.raises(HashingError, match="'meta'"):
        hash_packet({"meta": {1: "a"}})


def test_values_of_one_length_hash_as_any_text_does():
    # Ids and codes all of one length take the fixed-width path (no per-row join): same bytes.
    ids = [f"{i:032x}" for i in range(5)]
    table = pa.table({"s": ids, "b": pa.array([i.encode()[:7] for i in ids], pa.binary()), "k": range(5)})
    sliced = pa.concat_tables([table.slice(0, 2), table.slice(2)])  # chunks start at an offset
    expected = [reference_hash(table, i) for i in range(5)]
    assert hash_packets(table).to_pylist() == expected
    assert hash_packets(sliced).to_pylist() == expected
    mixed = pa.table({"s": ["ab", "abc", "ab"]})  # lengths differ: the general path
    assert hash_packets(mixed).to_pylist() == [reference_hash(mixed, i) for i in range(3)]
    empty = pa.table({"s": ["", ""]})  # all of length zero
    assert hash_packets(empty).to_pylist() == [reference_hash(empty, i) for i in range(2)]
