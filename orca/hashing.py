"""Canonical content hashes of packets (rows), files and bytes: the encoding ``orca-hash-1``.

A packet's hash is xxh3-128 over a canonical byte encoding of its columns (sorted by name),
each contributing its name, its *logical* type and its value. The encoding is specified in
``docs/hashing.md`` and pinned by the golden vectors in ``tests/golden_hashes.json``; a change
to any byte produced here is a new ``ENCODING_VERSION``.

Rows are encoded column-wise with pyarrow.compute and numpy; the only per-row Python is the
final digest loop (and one ``hash_file`` call per distinct path in a path column).
"""

from __future__ import annotations

import binascii
import concurrent.futures
import dataclasses
import os
import stat
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import polars as pl
import polars_hash as plh
import pyarrow as pa
import pyarrow.compute as pc
import xxhash

from orca.errors import HashingError

ENCODING_VERSION = "orca-hash-1"
PATH_METADATA = {b"orca.type": b"path"}

_BIN = pa.large_binary()
_NULL = pa.scalar(b"\x00", _BIN)  # enc_value of a null
_SEP = pa.scalar(b"", _BIN)
_MAX_ROWS = (2**31 - 1) // 32  # the hex output is a pa.string() array (int32 offsets)
_BLOCK = 1 << 20
_CHUNK_ROWS = 1 << 17  # rows encoded and hashed at a time (bounds the memory of the bytes)
_HASH_THREADS = min(4, os.cpu_count() or 1)
_TWO_64 = pl.lit(2**64, dtype=pl.UInt128)
HASH_KEY = "__hash_key"
_UNIT_PER_SECOND = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}
_CANONICAL_NAN = np.uint64(0x7FF8000000000000)

# An encoder returns its bytes as a list of *parts*, concatenated row-wise by _join:
#   bytes       the same bytes in every row (names, types, markers)
#   np.ndarray  one little-endian value per row: 1-D of any dtype, or 2-D uint8 (n, width)
#   pa.Array    one large_binary value per row (variable width)
# Runs of bytes and ndarrays are packed into one fixed-width numpy record per row, so a
# table of fixed-width columns becomes a single buffer with no per-column copies.

Part = bytes | np.ndarray | pa.Array

# resolved file path -> (size, mtime_ns, 16-byte digest); see hash_file
_FILE_DIGESTS: dict[str, tuple[int, int, bytes]] = {}


# ---------------------------------------------------------------------------------- public API


def is_path_field(field: pa.Field) -> bool:
    """True if ``field`` carries ``PATH_METADATA``: its values are paths hashed by content (or,
    in a list field, at any depth of lists, its elements are).

    Examples
    --------
    >>> is_path_field(pa.field("img", pa.string(), metadata=PATH_METADATA))
    True
    >>> is_path_field(pa.field("img", pa.string()))
    False
    """
    metadata = field.metadata or {}
    return metadata.get(b"orca.type") == PATH_METADATA[b"orca.type"]


def hash_bytes(data: bytes) -> str:
    """xxh3-128 (seed 0) of raw bytes as 32 lowercase hex characters.

    Examples
    --------
    >>> hash_bytes(b"")
    '99aa06d3014798d86001c324468d497f'
    """
    return xxhash.xxh3_128_hexdigest(data)


def hash_file(path: str | os.PathLike) -> str:
    """Content hash (32 hex characters) of a file, or of a directory's files.

    A file hashes its bytes; a directory hashes its regular files (recursively) by sorted
    relative POSIX path and content. Names of the file or directory itself never matter.
    File digests are memoised by (resolved path, size, mtime_ns), so an unchanged file is not
    re-read; a directory is listed again on every call.
    """
    return _content_digest(path).hex()


def file_facts(paths: Sequence[str | None]) -> list[tuple[int, int, str] | None]:
    """(size, mtime_ns, content hash) of each file, from the memo where the file is unchanged
    (else read and hashed now); None for a path that is not a regular file."""
    return [None if found is None else (found[1].st_size, found[1].st_mtime_ns, _file_digest(*found).hex())
            for found in resolve_files(paths)]


def resolve_files(paths: Iterable[str | None]) -> Iterator[tuple[str, os.stat_result] | None]:
    """(resolved path, stat) of each path that names a regular file (symlinks followed), else None.

    The resolved path is ``str(pathlib.Path(path).resolve())``: absolute, with no symlink, ``.``
    or ``..`` in it -- what the file-hash memo is keyed by, and what ``GlobSource`` stores.

    >>> import tempfile
    >>> folder = tempfile.mkdtemp()
    >>> _ = open(os.path.join(folder, "a.txt"), "w").close()
    >>> [None if f is None else f[0] == os.path.realpath(os.path.join(folder, "a.txt"))
    ...  for f in resolve_files([os.path.join(folder, ".", "a.txt"), folder, None])]
    [True, None, None]
    """
    folders: dict[str, str] = {}
    for path in paths:
        try:
            resolved, st = _resolve(path, folders)
        except (OSError, TypeError, ValueError, RuntimeError):  # missing, None, a NUL, a symlink loop
            yield None
            continue
        yield (resolved, st) if stat.S_ISREG(st.st_mode) else None


def remember_files(paths: Sequence[str], sizes: Sequence[int], mtimes: Sequence[int],
                   digests: Sequence[str]) -> None:
    """Seed the memo of file content hashes (e.g. from a store's ``sources/`` tables), so that a
    new process re-reads only files whose size or mtime changed. ``forget_files()`` undoes it.

    Each path is resolved without asking whether its last component is a symlink (that would be
    a system call per file): a file recorded under a symlink's name is remembered under that name,
    which the memo never looks up (lookups follow links), so it is read again. The recorded facts
    describe the file the link pointed to then, not necessarily the one it points to now."""
    folders: dict[str, str] = {}
    for path, size, mtime, digest in zip(paths, sizes, mtimes, digests, strict=True):
        _FILE_DIGESTS.setdefault(_resolved_in_folder(path, folders), (int(size), int(mtime), bytes.fromhex(digest)))


def forget_files() -> None:
    """Empty the memo of file content hashes: every file is read again when next hashed."""
    _FILE_DIGESTS.clear()


def hash_packets(
    table: pa.Table | pa.RecordBatch, columns: Sequence[str] | None = None
) -> pa.Array:
    """One packet hash per row: a ``pa.string()`` array of 32-character lowercase hex digests.

    Parameters
    ----------
    table
        The rows to hash (a Table, chunked or not, or a RecordBatch).
    columns
        The packet columns, in any order (default: every column). ``[]`` hashes the empty
        packet for every row.

    Raises
    ------
    HashingError
        A column is unknown or duplicated, has a type with no canonical encoding, or is a
        path column naming a missing file.

    Examples
    --------
    >>> t = pa.table({"x": [1, 2], "y": ["a", "b"]})
    >>> hashes = hash_packets(t)
    >>> hashes.to_pylist() == [hash_packet({"x": 1, "y": "a"}), hash_packet({"y": "b", "x": 2})]
    True
    >>> hash_packets(t, ["x"])[0].as_py() == hash_packet({"x": 1})
    True
    """
    return keys_hex(hash_packet_keys(table, columns))


def hash_packet_keys(
    table: pa.Table | pa.RecordBatch | pl.DataFrame, columns: Sequence[str] | None = None
) -> pl.Series:
    """:func:`hash_packets` as ``UInt128`` keys (see :func:`hash_keys`), skipping the hex text.

    >>> t = pa.table({"x": [1, 2]})
    >>> keys_hex(hash_packet_keys(t)).equals(hash_packets(t))
    True
    """
    if isinstance(table, pl.DataFrame):
        objects = object_columns(table.schema)
        if objects:  # Polars exports Object values as 8-byte pointers: a new hash every process
            raise HashingError(f"columns {objects} hold Python objects (Polars Object dtype), which "
                               "have no canonical encoding; convert them to Arrow-typed columns")
        table = table.to_arrow()
    if not isinstance(table, pa.Table | pa.RecordBatch):
        raise HashingError(f"hash_packets takes a pyarrow Table/RecordBatch or a polars DataFrame, "
                           f"got {type(table).__name__}")
    n = table.num_rows
    if n > _MAX_ROWS:
        raise HashingError(f"cannot hash {n} rows at once (at most {_MAX_ROWS}); pass batches")
    packet = []
    for name in sorted(_packet_columns(table, columns)):
        index = table.schema.get_field_index(name)
        packet.append((name, table.schema.field(index), _column(table, index)))
    if n == 0:
        for name, field, array in packet:  # an unsupported type raises even with no rows
            _enc_values(array, field, name)
        return pl.Series(HASH_KEY, [], pl.UInt128)

    # Encode in chunks (bounded memory); each chunk's rows are digested in one call. Chunks run
    # on a few threads: the encoding (pyarrow compute, numpy) and the digests (native code)
    # release the GIL, so 1M rows hash ~1.6x faster on two cores.
    def chunk(start: int) -> pl.Series:
        return _digest_rows(_encode_rows(packet, start, min(_CHUNK_ROWS, n - start)))

    starts = range(0, n, _CHUNK_ROWS)
    keys = list(_hash_pool().map(chunk, starts) if len(starts) > 1 else map(chunk, starts))
    return (keys[0] if len(keys) == 1 else pl.concat(keys, rechunk=True)).alias(HASH_KEY)


_pool: concurrent.futures.ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def object_columns(schema: pl.Schema | Mapping[str, pl.DataType]) -> list[str]:
    """Names of the columns of a Polars schema holding ``pl.Object`` anywhere (even nested).

    Polars exports an Object column to Arrow as ``fixed_size_binary[8]`` *pointers*, which look
    like bytes but differ in every process, so such columns must be refused before ``to_arrow``.

    >>> object_columns(pl.DataFrame({"a": [1], "o": pl.Series([object()], dtype=pl.Object)}).schema)
    ['o']
    """
    return [name for name, dtype in schema.items() if _holds_object(dtype)]


def _holds_object(dtype: pl.DataType) -> bool:
    if dtype == pl.Object:
        return True
    if isinstance(dtype, pl.List | pl.Array):
        return _holds_object(dtype.inner)
    if isinstance(dtype, pl.Struct):
        return any(_holds_object(f.dtype) for f in dtype.fields)
    return False


def check_ordered(value: Any, column: str) -> None:
    """Raise ``HashingError`` if ``value`` holds a ``set``/``frozenset``, at any depth.

    pyarrow turns a set into a list in iteration order, which for strings changes with
    ``PYTHONHASHSEED``: the same set would hash differently in every process. orca refuses
    sets rather than sorting them (a sort is not defined for mixed or unorderable items, and
    would hide that the list's order carries no meaning). One Python pass over the value, for
    Python values only (``hash_packet``, ``DictSource`` rows); Arrow columns cannot hold sets.

    >>> check_ordered([{"b", "a"}], "tags")
    Traceback (most recent call last):
    ...
    orca.errors.HashingError: column 'tags': a set has no order, so it has no stable hash; pass sorted(...) or a list
    """
    if isinstance(value, set | frozenset):
        raise HashingError(f"column {column!r}: a set has no order, so it has no stable hash; "
                           "pass sorted(...) or a list")
    if isinstance(value, list | tuple):
        for item in value:
            check_ordered(item, column)
    elif isinstance(value, Mapping):
        for key, item in value.items():
            check_ordered(item, f"{column}.{key}")


def _hash_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The threads shared by every ``hash_packets`` call (its tasks never wait on each other)."""
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = concurrent.futures.ThreadPoolExecutor(_HASH_THREADS, thread_name_prefix="orca-hash")
        return _pool


def hash_packet(mapping: Mapping[str, Any]) -> str:
    """The hash of one packet given as Python values; equal to ``hash_packets`` on the same row.

    Values are typed as pyarrow infers them (``1`` is int, ``1.0`` float, ``"1"`` string),
    ``None`` has the null type, a ``pathlib.Path`` is a path column hashed by file content,
    and a pyarrow scalar keeps its own type.

    Examples
    --------
    >>> hash_packet({"x": 1})
    'c08a31aa1a987ec33c0f4e55a1a59eae'
    >>> hash_packet({"x": 1, "y": "a"}) == hash_packet({"y": "a", "x": pa.scalar(1, pa.int32())})
    True
    >>> len({hash_packet({"x": v}) for v in (1, 1.0, "1", True, None)})
    5
    """
    arrays, fields = [], []
    for name, value in mapping.items():
        if not isinstance(name, str):
            raise HashingError(f"packet column names must be str, got {name!r}")
        paths = _as_path_text(value)
        array = _one_value_array(name, value if paths is None else paths)
        metadata = PATH_METADATA if paths is not None else None
        arrays.append(array)
        fields.append(pa.field(name, array.type, metadata=metadata))
    if not fields:  # a batch with no columns has no rows; the empty packet is still one row
        return hash_packets(pa.RecordBatch.from_pydict({"_": [None]}), columns=[])[0].as_py()
    return hash_packets(pa.RecordBatch.from_arrays(arrays, schema=pa.schema(fields)))[0].as_py()


# ------------------------------------------------------------------------------ table plumbing


def _packet_columns(table: pa.Table | pa.RecordBatch, columns: Sequence[str] | None) -> list[str]:
    if isinstance(columns, str):
        raise HashingError(f"columns must be a sequence of names, not the string {columns!r}")
    available = table.schema.names
    names = list(available if columns is None else columns)
    for name in names:
        if name not in available:
            raise HashingError(f"unknown column {name!r}; available columns: {available}")
        if names.count(name) > 1 or available.count(name) > 1:
            raise HashingError(f"column {name!r} appears more than once")
    return names


def _column(table: pa.Table | pa.RecordBatch, index: int) -> pa.Array:
    column = table.column(index)
    if isinstance(column, pa.ChunkedArray):
        return column.chunk(0) if column.num_chunks == 1 else column.combine_chunks()
    return column


def _as_path_text(value: Any) -> Any:
    """A ``Path``, or a list (at any depth) of ``Path`` and ``None`` holding at least one, as
    text in the same shape: a path column's value; None for any other value."""
    text = _path_text(value)
    return None if text is _NOT_PATHS or not _holds_path(value) else text


_NOT_PATHS = object()


def _path_text(value: Any) -> Any:
    """``value`` with each ``Path`` as text, or ``_NOT_PATHS`` at its first leaf that is neither a
    ``Path`` nor None (empty and all-None lists fit any list of paths)."""
    if isinstance(value, PurePath):
        return os.fspath(value)
    if value is None:
        return None
    if not isinstance(value, list | tuple):
        return _NOT_PATHS
    texts = []
    for item in value:
        text = _path_text(item)
        if text is _NOT_PATHS:
            return _NOT_PATHS
        texts.append(text)
    return texts


def _holds_path(value: Any) -> bool:
    return isinstance(value, PurePath) or isinstance(value, list | tuple) and any(map(_holds_path, value))


def _one_value_array(name: str, value: Any) -> pa.Array:
    if isinstance(value, PurePath):
        return pa.array([os.fspath(value)], pa.string())
    if isinstance(value, pa.Scalar):
        return pa.repeat(value, 1)
    if value is None:
        return pa.nulls(1)
    check_ordered(value, name)
    try:
        return pa.array([value])
    except (pa.ArrowException, TypeError, ValueError, OverflowError) as exc:
        raise HashingError(
            f"column {name!r}: cannot type {type(value).__name__} value {value!r} ({exc})"
        ) from exc


def _encode_rows(packet: list[tuple[str, pa.Field, pa.Array]], start: int, length: int) -> pa.Array:
    """The canonical bytes of rows start..start+length, one large_binary value per row."""
    parts: list[Part] = [_enc_str(ENCODING_VERSION)]
    for name, field, array in packet:
        type_name, values = _enc_values(array.slice(start, length), field, name)
        parts += [_enc_str(name) + _enc_str(type_name), *values]
    return _join(parts, length)


def _digest_rows(rows: pa.Array) -> pl.Series:
    """xxh3-128 of every value of ``rows``, as ``UInt128`` (see :func:`hash_keys`).

    The digests are computed by the polars-hash plugin (xxh3-128, seed 0, checked against the
    ``xxhash`` package in the tests) in native code: a Python loop calling xxhash per row
    spends most of its time in the interpreter, not in the hash.
    """
    return pl.from_arrow(pa.table({"b": rows})).select(plh.col("b").nchash.xxh3_128()).to_series()


# ------------------------------------------------------------------------ assembling the bytes
#


def _join(parts: list[Part], n: int) -> pa.Array:
    """Concatenate parts row-wise into one large_binary array of n rows."""
    segments: list[pa.Array | pa.Scalar] = []
    run: list[bytes | np.ndarray] = []
    for part in [*parts, None]:
        if isinstance(part, pa.Array) or part is None:
            if run:
                segments.append(_pack(run, n))
                run = []
            if part is not None:
                segments.append(part)
        else:
            run.append(part)
    if not any(isinstance(s, pa.Array) for s in segments):
        return pa.repeat(pa.scalar(b"".join(s.as_py() for s in segments), _BIN), n)
    if len(segments) == 1:
        return segments[0]
    return pc.binary_join_element_wise(*segments, _SEP)


def _pack(run: list[bytes | np.ndarray], n: int) -> pa.Array | pa.Scalar:
    """A run of constant and fixed-width parts as one binary value per row.

    The constants are laid down for all rows at once by repeating a template row; only the
    array parts are then written, through a numpy record view of the same buffer.
    """
    if all(isinstance(part, bytes) for part in run):
        return pa.scalar(b"".join(run), _BIN)
    template, fields = b"", []
    for part in run:
        if isinstance(part, bytes):
            template += part
        else:
            fields.append((f"f{len(fields)}", part, len(template)))
            template += bytes(part.dtype.itemsize * (part.shape[1] if part.ndim == 2 else 1))
    width = len(template)
    dtype = np.dtype(
        {
            "names": [name for name, _, _ in fields],
            "formats": [(part.dtype, part.shape[1:]) for _, part, _ in fields],
            "offsets": [offset for _, _, offset in fields],
            "itemsize": width,
        }
    )
    data = bytearray(template) * n
    rows = np.frombuffer(data, dtype)
    for name, part, _ in fields:
        rows[name] = part
    row_offsets = np.arange(0, width * (n + 1), width, dtype=np.int64)
    buffers = [None, pa.py_buffer(row_offsets), pa.py_buffer(data)]
    return pa.LargeBinaryArray.from_buffers(_BIN, n, buffers)


# ------------------------------------------------------------------------------ the encoding


def _enc_str(s: str) -> bytes:
    """u32 little-endian byte length + UTF-8 bytes."""
    data = s.encode("utf-8")
    return len(data).to_bytes(4, "little") + data


def _enc_values(arr: pa.Array, field: pa.Field, column: str) -> tuple[str, list[Part]]:
    """(logical type, parts of enc_value per element): ``\\x00`` if null, else ``\\x01`` + payload."""
    if pa.types.is_dictionary(arr.type):
        # A dictionary is a compression: hash the values it stands for. Decoded first, so a
        # null among the dictionary's values counts as a null (null_count sees only the indices).
        arr = arr.dictionary_decode()
    type_name, parts = _encode(arr, field, column)
    if arr.null_count and not pa.types.is_null(arr.type):
        parts = [pc.if_else(arr.is_valid(), _join(parts, len(arr)), _NULL)]
    return type_name, parts


def _encode(arr: pa.Array, field: pa.Field, column: str) -> tuple[str, list[Part]]:
    """(logical type, parts of ``\\x01`` + payload per element; anything under null slots)."""
    t = arr.type
    if is_path_field(field):
        if _is_list(t):  # lists of paths (a batch of files): each element is hashed by content
            return _encode_list(arr, column, paths=True)
        if not _is_string(t):
            raise HashingError(f"column {column!r}: a path column must hold strings or lists of them, not {t}")
        return "path", [b"\x01", _path_digests(arr, column)]
    if pa.types.is_null(t):
        return "null", [b"\x00"]
    if pa.types.is_boolean(t):
        return "bool", [b"\x01", arr.fill_null(False).to_numpy(zero_copy_only=False).view("u1")]
    if pa.types.is_integer(t):
        kind = "i" if pa.types.is_signed_integer(t) else "u"
        low = _values(arr, f"<{kind}{t.bit_width // 8}").astype("<i8")
        return "int", [b"\x01", low, _high_words(low) if kind == "i" else bytes(8)]
    if pa.types.is_floating(t):
        with np.errstate(invalid="ignore"):  # signalling NaNs
            values = _values(arr, f"<f{t.bit_width // 8}").astype("<f8") + 0.0  # -0.0 -> +0.0
        bits = values.view("<u8")
        bits[np.isnan(values)] = _CANONICAL_NAN
        return "float", [b"\x01", bits]
    if _is_string(t) or _is_binary(t):
        kind = "string" if _is_string(t) else "binary"
        # View types have no offsets buffer to read: they are laid out as large_binary first.
        data = arr.cast(_BIN) if pa.types.is_string_view(t) or pa.types.is_binary_view(t) else arr
        same = _same_width(data)
        if same is not None:  # one length: a fixed-width part, its length a constant (see _high_words)
            return kind, [b"\x01", same.shape[1].to_bytes(8, "little"), same]
        data = data.cast(_BIN)
        return kind, [b"\x01", pc.binary_length(data).fill_null(0).to_numpy().astype("<u8"), data]
    if pa.types.is_decimal(t):
        return f"decimal({t.scale})", [b"\x01", _decimal128_bytes(arr, column)]
    if pa.types.is_date32(t):
        return "date", [b"\x01", _values(arr, "<i4").astype("<i8")]
    if pa.types.is_date64(t):
        return "date", [b"\x01", _values(arr, "<i8") // 86_400_000]
    if pa.types.is_timestamp(t) or pa.types.is_duration(t):
        name = "duration" if pa.types.is_duration(t) else "timestamp"
        if pa.types.is_timestamp(t) and t.tz is not None:
            name = "timestamp[UTC]"  # Arrow stores UTC instants; the zone is only display
        per_second = _UNIT_PER_SECOND[t.unit]
        values = _values(arr, "<i8")
        nanos = (values % per_second) * (10**9 // per_second)
        return name, [b"\x01", values // per_second, nanos]
    if pa.types.is_time(t):
        values = _values(arr, f"<i{t.bit_width // 8}").astype("<i8")
        return "time", [b"\x01", values * (10**9 // _UNIT_PER_SECOND[t.unit])]
    if _is_list(t):
        return _encode_list(arr, column)
    if pa.types.is_struct(t):
        return _encode_struct(arr, column)
    raise HashingError(f"column {column!r}: Arrow type {t} has no canonical encoding")


def _is_string(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t)


def _is_binary(t: pa.DataType) -> bool:
    return (
        pa.types.is_binary(t)
        or pa.types.is_large_binary(t)
        or pa.types.is_binary_view(t)
        or pa.types.is_fixed_size_binary(t)
    )


def _is_list(t: pa.DataType) -> bool:
    return (
        pa.types.is_list(t)
        or pa.types.is_large_list(t)
        or pa.types.is_fixed_size_list(t)
        or pa.types.is_list_view(t)
        or pa.types.is_large_list_view(t)
    )


def _values(arr: pa.Array, dtype: str) -> np.ndarray:
    """The data buffer of a fixed-width array, zero-copy (slots under nulls are arbitrary)."""
    dtype = np.dtype(dtype)
    if len(arr) == 0:
        return np.empty(0, dtype)
    return np.frombuffer(
        arr.buffers()[1], dtype, count=len(arr), offset=arr.offset * dtype.itemsize
    )


def _high_words(low: np.ndarray) -> np.ndarray | bytes:
    """The sign words of signed ``low`` (0 or -1 each), as the constant bytes they are when no
    value is negative: a constant costs nothing per row in :func:`_pack`, an array part ~15 ms
    per million rows. (The same bytes either way: hashes do not change.)"""
    high = low >> 63
    return bytes(8) if len(low) and not high.any() else high


def _same_width(arr: pa.Array) -> np.ndarray | None:
    """The values of a string or binary array without nulls whose values all have one length,
    as an ``(n, width)`` uint8 view of its data buffer (no copy: ids and digests, e.g. the packet
    hash in every entry id, are hashed in place); None otherwise, and for view types."""
    n, t = len(arr), arr.type
    if n == 0 or arr.null_count:
        return None
    if pa.types.is_fixed_size_binary(t):
        width = t.byte_width
        data = np.frombuffer(arr.buffers()[1], np.uint8, count=n * width, offset=arr.offset * width)
        return data.reshape(n, width)
    if pa.types.is_string(t) or pa.types.is_binary(t):
        offsets = np.frombuffer(arr.buffers()[1], np.int32, count=n + 1, offset=arr.offset * 4)
    elif pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        offsets = np.frombuffer(arr.buffers()[1], np.int64, count=n + 1, offset=arr.offset * 8)
    else:
        return None
    first, last = int(offsets[0]), int(offsets[-1])
    width = int(offsets[1]) - first
    if last - first != n * width or not (np.diff(offsets) == width).all():
        return None
    if width == 0:
        return np.zeros((n, 0), np.uint8)
    return np.frombuffer(arr.buffers()[2], np.uint8, count=last - first, offset=first).reshape(n, width)


def _decimal128_bytes(arr: pa.Array, column: str) -> np.ndarray:
    """The unscaled values as (n, 16) little-endian two's complement bytes."""
    t = arr.type
    if not pa.types.is_decimal128(t):
        try:
            arr = arr.cast(pa.decimal128(38, t.scale))
        except (pa.ArrowInvalid, ValueError) as exc:
            raise HashingError(f"column {column!r}: {t} value does not fit decimal128") from exc
    if len(arr) == 0:
        return np.empty((0, 16), np.uint8)
    raw = np.frombuffer(arr.buffers()[1], np.uint8, count=16 * len(arr), offset=16 * arr.offset)
    return raw.reshape(len(arr), 16)


def _encode_list(arr: pa.Array, column: str, *, paths: bool = False) -> tuple[str, list[Part]]:
    """``paths``: the list is a path column, so are its elements (at any depth of lists)."""
    child = pc.list_flatten(arr)
    field = arr.type.value_field.with_metadata(PATH_METADATA) if paths else arr.type.value_field
    child_name, child_parts = _enc_values(child, field, f"{column}[]")
    lengths = pc.list_value_length(arr).fill_null(0).to_numpy().astype("<u8")
    offsets = pa.array(np.concatenate([[0], np.cumsum(lengths)]), pa.int64())
    elements = pa.LargeListArray.from_arrays(offsets, _join(child_parts, len(child)))
    return f"list<{child_name}>", [b"\x01", lengths, pc.binary_join(elements, _SEP)]


def _encode_struct(arr: pa.Array, column: str) -> tuple[str, list[Part]]:
    t = arr.type
    fields = sorted((t.field(i) for i in range(t.num_fields)), key=lambda f: f.name)
    names = [f.name for f in fields]
    if len(set(names)) != len(names):
        raise HashingError(f"column {column!r}: struct has duplicate field names {names}")
    parts: list[Part] = [b"\x01"]
    type_names = []
    for f in fields:
        child_name, child_parts = _enc_values(arr.field(f.name), f, f"{column}.{f.name}")
        parts += [_enc_str(f.name), *child_parts]
        type_names.append(f"{f.name}:{child_name}")
    return f"struct<{','.join(type_names)}>", parts


def _path_digests(arr: pa.Array, column: str) -> np.ndarray:
    """(n, 16) content digests: one hash_file per distinct path (memoised across calls)."""
    encoded = arr.cast(pa.large_string()).dictionary_encode()
    folders: dict[str, str] = {}  # (files share folders: each is resolved once per call)
    try:
        digests = [_content_digest(p, folders) for p in encoded.dictionary.to_pylist()]
    except HashingError as exc:
        raise HashingError(f"column {column!r}: {exc}") from exc
    table = np.frombuffer(b"".join(digests) or bytes(16), np.uint8).reshape(-1, 16)
    return table[encoded.indices.fill_null(0).to_numpy()]


# ------------------------------------------------------------------------------------- files


def _content_digest(path: str | os.PathLike, folders: dict[str, str] | None = None) -> bytes:
    if os.fspath(path) in ("", b""):
        raise HashingError("cannot hash the empty path ''")
    try:
        resolved, st = _resolve(os.fspath(path), {} if folders is None else folders)
    except FileNotFoundError as exc:
        raise HashingError(f"cannot hash {os.fspath(path)!r}: no such file or directory") from exc
    except OSError as exc:
        raise HashingError(f"cannot hash {os.fspath(path)!r}: {exc}") from exc
    if stat.S_ISDIR(st.st_mode):
        return _directory_digest(Path(resolved))
    if stat.S_ISREG(st.st_mode):
        return _file_digest(resolved, st)
    raise HashingError(f"cannot hash {os.fspath(path)!r}: not a regular file or directory")


def _resolve(path: str, folders: dict[str, str]) -> tuple[str, os.stat_result]:
    """``str(Path(path).resolve())`` and the stat of what it names.

    A regular file that is no symlink (nearly every path hashed) costs one ``lstat``: its folder
    is resolved once per ``folders`` (a cache for one call) and its name appended, which is what
    ``resolve`` gives when the last component is no link. ``resolve`` itself lstat's every
    component and stats the file again: a rerun over 100,000 unchanged files spent 3/4 of its
    time there. Anything else (a link, a directory, a missing path) is resolved the general way.
    """
    try:
        st = os.lstat(path)
    except OSError:
        st = None  # (the general way says why, or normalises what lstat refused, e.g. "a.txt/")
    if st is not None and stat.S_ISREG(st.st_mode):
        return _resolved_in_folder(path, folders), st
    resolved = str(Path(path).resolve())
    return resolved, os.stat(resolved)


def _resolved_in_folder(path: str, folders: dict[str, str]) -> str:
    """``path`` resolved, taking its last component to be no symlink: its folder's realpath
    (cached in ``folders``) joined with its name (by hand: ``os.path.split`` and ``join`` cost
    more than the ``lstat``)."""
    folder, sep, name = path.rpartition(os.sep)
    if name in ("", os.curdir, os.pardir):
        return os.path.realpath(path)
    folder += sep  # ("/" for "/a", "" for "a": the working directory)
    real = folders.get(folder)
    if real is None:
        real = os.path.realpath(folder or os.curdir)
        real = folders[folder] = real if real.endswith(os.sep) else real + os.sep
    return real + name


def _file_digest(path: str, st: os.stat_result) -> bytes:
    known = _FILE_DIGESTS.get(path)
    if known is not None and known[:2] == (st.st_size, st.st_mtime_ns):
        return known[2]
    hasher = xxhash.xxh3_128()
    try:
        with open(path, "rb") as f:
            while block := f.read(_BLOCK):
                hasher.update(block)
    except OSError as exc:
        raise HashingError(f"cannot read {path!r}: {exc}") from exc
    digest = hasher.digest()
    _FILE_DIGESTS[path] = (st.st_size, st.st_mtime_ns, digest)
    return digest


def _directory_digest(root: Path) -> bytes:
    """xxh3-128 over enc_str(relative POSIX path) + file digest, per regular file, sorted."""
    entries = []
    for dirpath, _dirnames, filenames in os.walk(root):
        for filename in filenames:
            full = os.path.join(dirpath, filename)
            try:
                st = os.stat(full)
            except OSError:  # a dangling symlink is not a regular file
                continue
            if stat.S_ISREG(st.st_mode):
                rel = (
                    Path(os.path.relpath(full, root)).as_posix().encode("utf-8", "surrogateescape")
                )
                entries.append((rel, full, st))
    hasher = xxhash.xxh3_128()
    for rel, full, st in sorted(entries, key=lambda e: e[0]):
        hasher.update(len(rel).to_bytes(4, "little") + rel + _file_digest(full, st))
    return hasher.digest()


# ------------------------------------------------------------------ ids: keys, bytes, hex
# A stored id (packet hash, entry id, record id) is 16 bytes (Delta ``binary``); in memory it is
# one ``UInt128`` (joins and ``is_in`` on integers are exact and fast); users see 32 lowercase
# hex digits. Stores written before ids were binary hold the hex text: every reader here takes
# either.


def id_digests(ids: pa.Array | pa.ChunkedArray | pl.Series) -> np.ndarray:
    """Ids (16-byte binary, or 32-hex-digit text) -> an ``(n, 16)`` uint8 array."""
    series = ids if isinstance(ids, pl.Series) else pl.Series(ids)
    if series.dtype == pl.UInt128:
        return key_digests(series)
    if series.dtype == pl.Binary:
        return key_digests(hash_keys(series))
    return hex_digests(series)


def hex_digests(hashes: pa.Array | pa.ChunkedArray | pl.Series) -> np.ndarray:
    """32-hex-digit hashes -> an ``(n, 16)`` uint8 array, in one C-level pass."""
    array = hashes.to_arrow() if isinstance(hashes, pl.Series) else hashes
    if isinstance(array, pa.ChunkedArray):
        array = array.combine_chunks()
    if not pa.types.is_large_string(array.type):
        array = array.cast(pa.large_string())
    n = len(array)
    if n == 0:
        return np.zeros((0, 16), np.uint8)
    offsets = np.frombuffer(array.buffers()[1], np.int64)[array.offset:array.offset + n + 1]
    if array.null_count or np.any(np.diff(offsets) != 32):
        raise ValueError("expected 32-hex-digit hashes without nulls")
    raw = binascii.unhexlify(memoryview(array.buffers()[2])[offsets[0]:offsets[-1]])
    return np.frombuffer(raw, np.uint8).reshape(n, 16)


def hash_keys(hashes: pa.Array | pa.ChunkedArray | pl.Series) -> pl.Series:
    """Ids as one ``UInt128`` each (equal iff the ids are): 16-byte binary values (how they are
    stored; a reinterpretation, ~20 ms per million) or 32 hex digits (what users see).

    >>> hash_keys(pl.Series(["0" * 31 + "f"])).to_list()
    [15]
    >>> hash_keys(pl.Series([bytes(15) + b"\\x0f"])).to_list()
    [15]
    """
    series = hashes if isinstance(hashes, pl.Series) else pl.Series(hashes)
    if series.dtype == pl.UInt128:
        return series.alias(HASH_KEY)
    if series.dtype == pl.Binary:
        keys = series.bin.reinterpret(dtype=pl.UInt128, endianness="big")
        if keys.null_count() != series.null_count():  # (a value of another length reads as null)
            raise ValueError("expected 16-byte ids")
        if series.null_count():
            raise ValueError("expected ids without nulls")
        return keys.alias(HASH_KEY)
    words = hex_digests(series).view(">u8").astype(np.uint64)
    frame = pl.DataFrame({"hi": words[:, 0], "lo": words[:, 1]}, schema={"hi": pl.UInt64, "lo": pl.UInt64})
    key = pl.col("hi").cast(pl.UInt128) * _TWO_64 + pl.col("lo").cast(pl.UInt128)
    return frame.select(key.alias(HASH_KEY)).to_series()


def key_digests(keys: pl.Series) -> np.ndarray:
    """The inverse of :func:`hash_keys`, as ``(n, 16)`` uint8 digests (see :func:`digests_hex`)."""
    parts = keys.to_frame("k").select((pl.col("k") // _TWO_64).cast(pl.UInt64).alias("hi"),
                                      (pl.col("k") % _TWO_64).cast(pl.UInt64).alias("lo"))
    words = np.empty((len(keys), 2), ">u8")
    words[:, 0], words[:, 1] = parts["hi"].to_numpy(), parts["lo"].to_numpy()
    return words.view(np.uint8).reshape(len(keys), 16)


@dataclasses.dataclass(frozen=True)
class KeySet:
    """An order-independent digest of a multiset of ``UInt128`` keys, made in parts:
    ``KeySet().add(a).add(b)`` equals ``KeySet().add(pl.concat([b, a]))``, so a run in slices
    digests its entries without holding them all, and nothing is sorted (~0.1 s per million).

    The parts are the count and, over the high and the low 64 bits of the keys, their sums
    (mod 2**64) and XORs; two different sets of hash keys agree on all of them by chance only
    (~2**-128).

    >>> a, b = pl.Series([1, 2], dtype=pl.UInt128), pl.Series([3], dtype=pl.UInt128)
    >>> KeySet().add(a).add(b).digest == KeySet().add(pl.concat([b, a])).digest
    True
    >>> KeySet().add(a).digest == KeySet().add(pl.Series([1, 1, 2], dtype=pl.UInt128)).digest
    False
    """

    count: int = 0
    lanes: tuple[int, int, int, int] = (0, 0, 0, 0)

    def add(self, keys: pl.Series) -> KeySet:
        """This set plus ``keys``."""
        if keys.len() == 0:
            return self
        parts = keys.to_frame("k").select((pl.col("k") // _TWO_64).cast(pl.UInt64).alias("hi"),
                                          (pl.col("k") % _TWO_64).cast(pl.UInt64).alias("lo"))
        return self.add_words(parts["hi"].to_numpy(), parts["lo"].to_numpy())

    def add_words(self, hi: np.ndarray, lo: np.ndarray) -> KeySet:
        """This set plus the keys whose high and low 64 bits are ``hi`` and ``lo`` (e.g. the
        two big-endian words of each of :func:`hex_digests`' rows: no ``UInt128`` made)."""
        if len(hi) == 0:
            return self
        sums = [int(np.add.reduce(x, dtype=np.uint64)) for x in (hi, lo)]  # (wraps: mod 2**64)
        xors = [int(np.bitwise_xor.reduce(x, dtype=np.uint64)) for x in (hi, lo)]
        mask = 2**64 - 1
        mine = self.lanes
        return KeySet(self.count + len(hi), ((mine[0] + sums[0]) & mask, (mine[1] + sums[1]) & mask,
                                             mine[2] ^ xors[0], mine[3] ^ xors[1]))

    @property
    def digest(self) -> str:
        return hash_bytes(f"{self.count}:{':'.join(map(str, self.lanes))}".encode())


def keys_binary(keys: pl.Series) -> pa.Array:
    """``UInt128`` keys -> a ``binary`` array of 16 bytes each (how ids are stored)."""
    return digests_binary(key_digests(keys))


def digests_binary(digests: np.ndarray) -> pa.Array:
    """``(n, 16)`` uint8 digests -> a ``binary`` array of 16 bytes each."""
    n = len(digests)
    offsets = np.arange(0, 16 * (n + 1), 16, dtype=np.int32)
    data = pa.py_buffer(np.ascontiguousarray(digests, np.uint8).tobytes())
    return pa.Array.from_buffers(pa.binary(), n, [None, pa.py_buffer(offsets), data])


def keys_hex(keys: pl.Series) -> pa.Array:
    """``UInt128`` keys -> a ``pa.string()`` array of 32 hex digits each (how users see ids)."""
    n = len(keys)
    data = binascii.hexlify(key_digests(keys).tobytes())
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int32)
    return pa.StringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data))


def digests_hex(digests: np.ndarray) -> pa.Array:
    """``(n, 16)`` uint8 digests -> a ``large_string`` array of 32 hex digits each."""
    n = len(digests)
    data = binascii.hexlify(np.ascontiguousarray(digests).tobytes())
    offsets = np.arange(0, 32 * (n + 1), 32, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(data)])
