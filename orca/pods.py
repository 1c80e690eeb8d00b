"""Function pods: plain Python functions lifted to map packets to packets.

>>> import orca
>>> @orca.function_pod(output_keys="z")
... def add(x: float, y: int) -> float:
...     return x * 2 + y
>>> add(1.5, 1)                      # still a plain function
4.0
>>> src = orca.DictSource([{"id": 1, "x": 1.5, "y": 1}], tags=["id"], source_id="demo")
>>> add.pod(src).to_polars()
shape: (1, 2)
┌─────┬─────┐
│ id  ┆ z   │
│ --- ┆ --- │
│ i64 ┆ f64 │
╞═════╪═════╡
│ 1   ┆ 4.0 │
└─────┴─────┘

The function's parameters name the packet columns it reads; its annotations give the Arrow
schema of inputs and outputs. A pod's identity (``pod.identity``) is its name, version, a
hash of its normalised source (AST without docstrings or comments) and its output schema.
"""

from __future__ import annotations

import asyncio
import inspect
import time
import traceback
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from orca import _context
from orca.errors import PodError, SchemaError
from orca.executors import run_async_rows
from orca.hashing import (
    HASH_KEY,
    PATH_METADATA,
    digests_hex,
    hash_bytes,
    hash_keys,
    hash_packets,
    hex_digests,
    is_path_field,
    key_digests,
)
from orca.identity import FunctionIdentity, function_identity
from orca.streams import Stream, source_column
from orca.types import arrow_field, is_optional, strip_optional, to_arrow_array, to_python

__all__ = ["function_pod", "FunctionPod", "FunctionIdentity"]

# Columns of the table a chunk of work returns (besides the outputs).
ROW = "__row"
OK = "__ok"
DURATION = "__duration_s"
ATTEMPTS = "__attempts"
ERROR_COLUMNS = ("__error_type", "__error_message", "__traceback")
ASYNC_CONCURRENCY = 32


def _output_annotations(fn: Callable, hints: dict, keys: tuple[str, ...], output_types: Mapping | None) -> dict:
    if output_types is not None:
        missing = [k for k in keys if k not in output_types]
        if missing:
            raise PodError(f"function {fn.__name__!r}: output_types lacks output key(s) {missing}")
        return {k: output_types[k] for k in keys}
    if "return" not in hints:
        raise PodError(f"function {fn.__name__!r} has no return annotation; annotate it or pass output_types=")
    ret = hints["return"]
    if len(keys) == 1:
        return {keys[0]: ret}
    if typing.get_origin(ret) is tuple:
        args = typing.get_args(ret)
        if len(args) != len(keys) or Ellipsis in args:
            raise PodError(f"function {fn.__name__!r}: return annotation {ret!r} does not match output keys {list(keys)}")
        return dict(zip(keys, args, strict=True))
    if isinstance(ret, type) and issubclass(ret, dict) and hasattr(ret, "__annotations__"):
        fields = typing.get_type_hints(ret)
        missing = [k for k in keys if k not in fields]
        if missing:
            raise PodError(f"function {fn.__name__!r}: return type {ret.__name__} lacks output key(s) {missing}")
        return {k: fields[k] for k in keys}
    raise PodError(
        f"function {fn.__name__!r} has several output keys {list(keys)}: annotate the return as "
        "tuple[...] or a TypedDict, or pass output_types="
    )


class FunctionPod:
    """A function lifted to map each packet of a stream to an output packet.

    Build one with :func:`function_pod`. ``pod(stream)`` returns a lazy stream with the input's
    tags and the outputs as packet; ``pod.cached(store)`` adds a result cache.
    """

    def __init__(
        self,
        function: Callable,
        *,
        output_keys: str | Sequence[str],
        version: str = "1",
        name: str | None = None,
        code_hash: bool = True,
        input_types: Mapping[str, Any] | None = None,
        output_types: Mapping[str, Any] | None = None,
        deps: Sequence[Any] = (),
    ) -> None:
        self.function = function
        self.name = name or function.__name__
        self.version = str(version)
        self.output_keys: tuple[str, ...] = (output_keys,) if isinstance(output_keys, str) else tuple(output_keys)
        if not self.output_keys or len(set(self.output_keys)) != len(self.output_keys):
            raise PodError(f"function {self.name!r}: output_keys must be distinct and non-empty, got {output_keys!r}")
        bad = [k for k in self.output_keys if k.startswith("__")]
        if bad:
            raise PodError(f"function {self.name!r}: output keys may not start with '__': {bad}")
        self.is_async = inspect.iscoroutinefunction(function)

        signature = inspect.signature(function)
        varargs = [p.name for p in signature.parameters.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if varargs:
            raise PodError(f"function {self.name!r}: *args/**kwargs ({varargs}) cannot name packet columns")
        try:
            hints = typing.get_type_hints(function)
        except Exception as exc:  # unresolvable forward references
            raise PodError(f"function {self.name!r}: cannot resolve annotations: {exc}") from exc
        hints.update(input_types or {})
        self.parameters: dict[str, Any] = {}
        self.defaults: dict[str, Any] = {}
        self.positional = all(p.kind == p.POSITIONAL_OR_KEYWORD for p in signature.parameters.values())
        for p in signature.parameters.values():
            if p.name not in hints:
                raise PodError(f"function {self.name!r}: parameter {p.name!r} has no annotation; annotate it or pass input_types=")
            self.parameters[p.name] = hints[p.name]
            if p.default is not p.empty:
                self.defaults[p.name] = p.default
        try:
            self.input_fields = {n: arrow_field(n, t) for n, t in self.parameters.items()}
            self.output_fields = [arrow_field(k, t) for k, t in
                                  _output_annotations(function, hints, self.output_keys, output_types).items()]
        except SchemaError as exc:
            raise PodError(f"function {self.name!r}: {exc}") from exc

        self.deps = tuple(deps)
        self.identity = function_identity(function, name=self.name, version=self.version, code_hash=code_hash,
                                          output_fields=self.output_fields, deps=self.deps)

    @property
    def output_schema(self) -> pa.Schema:
        return pa.schema(self.output_fields)

    @property
    def results_table(self) -> str:
        """Store table holding this function's results (see docs/stores.md)."""
        return f"results/{self.name}/{self.identity.hash}"

    def __repr__(self) -> str:
        return (f"FunctionPod({self.name!r}, version={self.version!r}, inputs={list(self.parameters)}, "
                f"outputs={list(self.output_keys)}, hash={self.identity.hash[:12]})")

    # -- applying to streams --------------------------------------------------------------
    def check_input(self, stream: Stream) -> None:
        """Every parameter without a default must name a packet column of ``stream``."""
        clash = [k for k in self.output_keys if k in stream.tag_columns]
        if clash:
            raise PodError(f"function {self.name!r}: output key(s) {clash} are tag columns of the input stream")
        missing = [p for p in self.parameters if p not in stream.packet_columns and p not in self.defaults]
        if missing:
            raise PodError(f"function {self.name!r} reads packet column(s) {missing} that the input stream lacks; "
                           f"its packet columns are {list(stream.packet_columns)}")

    @property
    def path_outputs(self) -> list[str]:
        """Output keys declared as ``pathlib.Path``."""
        return [f.name for f in self.output_fields if is_path_field(f)]

    def stream_identity(self, stream: Stream) -> str:
        """Identity of this pod's output over ``stream`` (structural, like every stream identity)."""
        return hash_bytes(f"pod\x00{self.identity.hash}\x00{stream.identity}".encode())

    def output_stream(self, stream: Stream, frame: Callable[[], pl.DataFrame], producer: Any) -> Stream:
        """The (lazy) stream of this pod's outputs over ``stream``.

        ``frame`` computes the tags, system tags and outputs, plus ``__hash_key`` (each row's
        input packet hash, see :func:`orca.hashing.hash_keys`). The ``__source__<output>``
        references are derived from it lazily: only when a collect asks for system columns.
        """
        schema = self.output_stream_schema(stream)
        sources = [source_column(k) for k in self.output_keys]
        base = {n: t for n, t in pl.from_arrow(schema.empty_table()).schema.items() if n not in sources}
        refs = pl.col(HASH_KEY).map_batches(
            lambda keys: pl.Series(result_references(self, keys)), return_dtype=pl.String)
        lazy = pl.defer(frame, schema={**base, HASH_KEY: pl.UInt128})
        lazy = lazy.with_columns(refs.alias(s) for s in sources).drop(HASH_KEY)
        return Stream(lazy, tag_columns=stream.tag_columns, packet_columns=self.output_keys,
                      path_columns=self.path_outputs, schema=schema,
                      identity=self.stream_identity(stream), producer=producer)

    def output_stream_schema(self, stream: Stream) -> pa.Schema:
        full = stream.full_schema
        fields = [full.field(n) for n in (*stream.tag_columns, *stream.system_tag_columns)]
        fields += self.output_fields
        fields += [pa.field(source_column(k), pa.large_string()) for k in self.output_keys]
        return pa.schema(fields)

    def __call__(self, *streams: Stream) -> Stream:
        """Apply the pod to a stream (several streams are joined on their shared tags first)."""
        stream = streams[0].join(*streams[1:]) if len(streams) > 1 else streams[0]
        if not isinstance(stream, Stream):
            raise PodError(f"function {self.name!r} takes streams, got {type(stream).__name__}")
        self.check_input(stream)
        output = self.output_stream(stream, lambda: _compute_uncached(self, stream), producer=self)
        return _context.recorded(self, (stream,), output)

    def cached(self, store: Any = None, **options: Any):
        """Shorthand for :class:`orca.CachedFunctionPod` ``(self, store=store, **options)``."""
        from orca.cache import CachedFunctionPod  # cache sits above pods; avoid an import cycle

        return CachedFunctionPod(self, store=store, **options)


def function_pod(
    output_keys: str | Sequence[str],
    *,
    version: str = "1",
    name: str | None = None,
    code_hash: bool = True,
    input_types: Mapping[str, Any] | None = None,
    output_types: Mapping[str, Any] | None = None,
    deps: Sequence[Any] = (),
) -> Callable[[Callable], Callable]:
    """Decorate a function to make it a function pod, available as ``f.pod``.

    Parameters
    ----------
    output_keys
        Name(s) of the output packet columns. With several, the function returns a tuple (in
        this order) or a dict with these keys.
    version
        Bump it to recompute results although the code did not change.
    name
        Defaults to the function's name; names the result table.
    code_hash
        ``False`` pins the identity to name + version (edits then reuse old results).
    input_types, output_types
        Annotations for parameters / outputs the function does not annotate itself.
    deps
        What the function depends on that its code does not show (see
        ``docs/pods-and-caching.md``); part of its identity.
    """

    def decorate(function: Callable) -> Callable:
        function.pod = FunctionPod(function, output_keys=output_keys, version=version, name=name,
                                   code_hash=code_hash, input_types=input_types, output_types=output_types,
                                   deps=deps)
        return function

    return decorate


# -- running the function over a chunk of packets ------------------------------------------
def _as_outputs(pod: FunctionPod, result: Any) -> tuple:
    keys = pod.output_keys
    if len(keys) == 1:
        return (result,)
    if isinstance(result, Mapping):
        missing = [k for k in keys if k not in result]
        if missing:
            raise SchemaError(f"returned a dict without output key(s) {missing}")
        return tuple(result[k] for k in keys)
    if isinstance(result, tuple | list) and len(result) == len(keys):
        return tuple(result)
    raise SchemaError(f"should return a tuple or dict of {list(keys)}, got {type(result).__name__}")


def _backoff(attempt: int) -> float:
    """Seconds to wait before retry number ``attempt`` (1, 2, ...): 0.05 s doubling, at most 2 s."""
    return min(0.05 * 2 ** (attempt - 1), 2.0)


_FAST_CALL = 20e-6  # seconds: calls faster than this on average are timed in blocks
_BLOCK = 64


def _call_sync(pod: FunctionPod, columns: list[list], n: int, retries: int) -> tuple[list, dict, dict, np.ndarray]:
    """Call the function on each of ``n`` rows of argument ``columns`` (signature order),
    retrying failures with backoff.

    Returns (return values, ``{call: last error}``, ``{call: attempts}`` for calls that needed
    more than one, seconds per call). A failed call's value is None.

    Calls are timed one by one until a function proves fast (under ``_FAST_CALL`` on average
    over ``4 * _BLOCK`` calls); then they are timed in blocks of ``_BLOCK`` and each call gets
    its block's mean: reading the clock costs about as much as such a call, and halves the
    rate of a cheap function. A block slower than that on average switches back.
    """
    names = list(pod.parameters)
    fn = pod.function if pod.positional else (lambda *a: pod.function(**dict(zip(names, a, strict=True))))
    if not columns:  # no parameters: map() needs at least one column to walk
        fn, columns = (lambda _: pod.function()), [[None] * n]
    values: list = []
    seconds = np.zeros(n)
    errors: dict[int, BaseException] = {}
    attempts: dict[int, int] = {}
    extend, clock = values.extend, time.perf_counter
    block, timed, count = 1, 0.0, 0  # calls per clock reading; calls timed one by one: time, number
    while len(values) < n:
        i = len(values)
        end = min(n, i + block)
        start = clock()
        try:  # the hot loop: map() calls fn on the columns' values with no argument tuples
            extend(map(fn, *[column[i:end] for column in columns]))
        except Exception as first:  # noqa: BLE001 - the user's function may raise anything
            k = len(values)  # (extend keeps the values made before the call that raised)
            seconds[i:k + 1] = (clock() - start) / (k + 1 - i)
            value, error, started = None, first, clock()
            for attempt in range(1, retries + 1):
                time.sleep(_backoff(attempt))
                try:
                    value, error = fn(*[column[k] for column in columns]), None
                    break
                except Exception as exc:  # noqa: BLE001
                    error = exc
            seconds[k] += clock() - started
            values.append(value)
            attempts[k] = attempt + 1 if retries else 1
            if error is not None:
                errors[k] = error
            continue
        elapsed = clock() - start
        seconds[i:end] = elapsed / (end - i)
        if block == 1:
            timed, count = timed + elapsed, count + 1
            if count == 4 * _BLOCK:  # fast enough on average to be timed in blocks?
                block = _BLOCK if timed < count * _FAST_CALL else 1
                timed, count = 0.0, 0
        elif elapsed > block * _FAST_CALL:
            block = 1
    return values, errors, attempts, seconds


def _call_async(pod: FunctionPod, columns: list[list], n: int, retries: int) -> tuple[list, dict, dict, np.ndarray]:
    """Like :func:`_call_sync` for a coroutine function: up to ``ASYNC_CONCURRENCY`` at once.

    Runs on :func:`orca.executors.run_async_rows`, which also works where an event loop is
    already running (a Jupyter cell).
    """
    names = list(pod.parameters)

    async def one(args: tuple) -> tuple[Any, BaseException | None, int, float]:
        start, error = time.perf_counter(), None
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(_backoff(attempt))
            try:
                value = await pod.function(**dict(zip(names, args, strict=True)))
                return value, None, attempt + 1, time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - the user's function may raise anything
                error = exc
        return None, error, retries + 1, time.perf_counter() - start

    calls = list(zip(*columns, strict=True)) if columns else [()] * n
    done = run_async_rows(one, calls, max_concurrency=ASYNC_CONCURRENCY)
    errors = {k: d[1] for k, d in enumerate(done) if d[1] is not None}
    attempts = {k: d[2] for k, d in enumerate(done) if d[2] != 1}
    return [d[0] for d in done], errors, attempts, np.array([d[3] for d in done], np.float64)


def _arguments(pod: FunctionPod, chunk: pa.Table) -> tuple[list[list], dict[int, BaseException]]:
    """Argument columns as Python lists (signature order), and errors for nulls in non-Optional
    parameters."""
    n = chunk.num_rows
    columns: list[list] = []
    errors: dict[int, BaseException] = {}
    for name, annotation in pod.parameters.items():
        if name not in chunk.column_names:
            columns.append([pod.defaults[name]] * n)
            continue
        column = chunk.column(name)
        columns.append(to_python(column, annotation, path=is_path_field(pod.input_fields[name])))
        if column.null_count and not is_optional(annotation):
            hint = getattr(strip_optional(annotation), "__name__", annotation)
            for i in pl.Series(column).is_null().arg_true().to_list():
                errors.setdefault(i, SchemaError(
                    f"packet column {name!r} is null but parameter {name!r} is not Optional "
                    f"(annotate it as {hint} | None)"))
    return columns, errors


def run_chunk(pod: FunctionPod, retries: int, chunk: pa.Table) -> pa.Table:
    """Run the function on every packet of ``chunk`` (parameter columns plus ``__row``).

    Never raises for a failing row: returns one row per input with ``__ok``, the outputs
    (null when failed), ``__duration_s``, ``__attempts`` and error details.
    """
    n = chunk.num_rows
    columns, errors = _arguments(pod, chunk)
    called = np.array([i for i in range(n) if i not in errors], np.int64) if errors else np.arange(n)
    if errors:
        columns = [[column[i] for i in called] for column in columns]
    values, failed, tries, seconds = (_call_async if pod.is_async else _call_sync)(pod, columns, len(called), retries)
    durations = np.zeros(n)
    durations[called] = seconds
    attempts = np.zeros(n, np.int64)
    attempts[called] = 1
    for k, count in tries.items():
        attempts[called[k]] = count
    for k, error in failed.items():
        errors[int(called[k])] = error
    if errors:  # failed rows (null inputs, raised) get null outputs
        full = [None] * n
        for k, i in enumerate(called.tolist()):
            full[i] = None if i in errors else values[k]
        values = full
    arrays = _output_arrays(pod, _output_columns(pod, values, errors), errors)
    error_list = [errors.get(i) for i in range(n)] if errors else None
    return pa.table({
        ROW: chunk.column(ROW),
        OK: pa.array([e is None for e in error_list], pa.bool_()) if errors else pa.repeat(pa.scalar(True), n),
        **arrays,
        DURATION: pa.array(durations, pa.float64()),
        ATTEMPTS: pa.array(attempts, pa.int64()),
        **_error_columns(error_list, n),
    })


def _output_columns(pod: FunctionPod, values: list, errors: dict[int, BaseException]) -> list[list]:
    """Return values -> one list per output key; a malformed return fails its row."""
    if len(pod.output_keys) == 1:
        return [values]
    rows: list[tuple | None] = []
    for i, value in enumerate(values):
        if i in errors:
            rows.append(None)
            continue
        try:
            rows.append(_as_outputs(pod, value))
        except SchemaError as exc:
            errors[i] = SchemaError(f"function {pod.name!r} returned a bad output: {exc}")
            rows.append(None)
    return [[None if r is None else r[j] for r in rows] for j in range(len(pod.output_keys))]


def _error_columns(errors: list | None, n: int) -> dict[str, pa.Array]:
    if errors is None:
        return {c: pa.nulls(n, pa.large_string()) for c in ERROR_COLUMNS}
    return {
        ERROR_COLUMNS[0]: pa.array([None if e is None else type(e).__name__ for e in errors], pa.large_string()),
        ERROR_COLUMNS[1]: pa.array([None if e is None else str(e) for e in errors], pa.large_string()),
        ERROR_COLUMNS[2]: pa.array([None if e is None else "".join(traceback.format_exception(e)) for e in errors],
                                   pa.large_string()),
    }


def _output_arrays(pod: FunctionPod, columns: list[list], errors: dict[int, BaseException]) -> dict[str, pa.Array]:
    """Validate outputs against the declared schema; a bad value fails its row, not the chunk."""
    while True:
        failed = [i in errors for i in range(len(columns[0]))] if errors else None
        try:
            return {f.name: to_arrow_array(values, f, failed=failed) for f, values in zip(pod.output_fields, columns,
                                                                                      strict=True)}
        except SchemaError as exc:
            bad = [exc.row] if exc.row is not None else [i for i in range(len(columns[0])) if i not in errors]
            for row in bad:
                errors[row] = SchemaError(f"function {pod.name!r} returned a bad output: {exc}")
                for values in columns:
                    values[row] = None


def input_packets(pod: FunctionPod, frame: pl.DataFrame, path_columns: frozenset[str]) -> pa.Table:
    """The packet columns ``pod`` reads, as Arrow, with path columns marked for hashing."""
    table = frame.select([p for p in pod.parameters if p in frame.columns]).to_arrow()
    fields = [f.with_metadata(PATH_METADATA) if f.name in path_columns else f for f in table.schema]
    return table.cast(pa.schema(fields))


def _compute_uncached(pod: FunctionPod, stream: Stream) -> pl.DataFrame:
    """The uncached pod: compute every row in process; a failure raises, naming the tag."""
    frame = stream.to_polars(include_system=True)
    table = input_packets(pod, frame, stream.path_columns)
    chunk = table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64)))
    out = run_chunk(pod, 0, chunk)
    failed = out.filter(pc.invert(out.column(OK)))
    if failed.num_rows:
        row = failed.column(ROW)[0].as_py()
        tag = {t: frame[t][row] for t in stream.tag_columns}
        raise PodError(f"function {pod.name!r} failed for tag {tag}: "
                       f"{failed.column(ERROR_COLUMNS[0])[0]}: {failed.column(ERROR_COLUMNS[1])[0]}")
    packet_hash = hash_packets(table)  # the parameters the stream has (defaults fill the others)
    return frame.select([*stream.tag_columns, *stream.system_tag_columns]).with_columns(
        [pl.Series(k, out.column(k)) for k in pod.output_keys]).with_columns(hash_keys(packet_hash))


def result_references(pod: FunctionPod, keys: pl.Series) -> pa.Array:
    """``"<results table>#<record id>"`` for each input packet hash key (see :func:`hash_keys`)."""
    ids = result_record_ids(pod.identity.hash, key_digests(keys))
    return pc.binary_join_element_wise(pa.scalar(pod.results_table + "#", pa.large_string()), ids,
                                       pa.scalar("", pa.large_string()))


def result_record_ids(function_hash: str, packet_hashes: pa.Array | pl.Series | np.ndarray) -> pa.Array:
    """Record id of each result row: the 128-bit XOR of function hash and input packet hash, in hex.

    Unique within a result table (a fixed XOR is a bijection) and, like a hash, across tables;
    computed in one vectorised pass. ``packet_hashes`` may also be given as an ``(n, 16)``
    uint8 array of digests (see :func:`hex_digests`).

    >>> result_record_ids("0" * 31 + "1", pa.array(["f" * 32])).to_pylist()
    ['fffffffffffffffffffffffffffffffe']
    """
    packets = packet_hashes if isinstance(packet_hashes, np.ndarray) else hex_digests(packet_hashes)
    digests = packets ^ hex_digests(pa.array([function_hash]))
    return digests_hex(digests)
