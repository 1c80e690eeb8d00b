"""Calling a pod's function on a chunk of packets: arguments, sync/async calls, retries with
backoff, timing, output validation and error capture -- the one place orca calls user code.

:func:`run_chunk` never raises for a failing row: it returns one row per input with ``__ok``,
the outputs (null when failed), ``__duration_s``, ``__attempts`` and the error's type, message
and traceback. Executors ship it (with the pod) to wherever calls run, as a :class:`ChunkCall`.

A call can be given a time limit (``timeout=``, seconds per call). A synchronous call is then
made with a ``SIGALRM`` timer (``signal.setitimer``), so it must run on a process's main
thread: the in-process executor on the main thread, or a process-pool worker. The timer fires
only when Python bytecode runs; a call stuck in native code (no bytecode running) is noticed
by the process executor's watchdog, which kills and replaces the worker. A coroutine function
is awaited under ``asyncio.timeout``. With no ``timeout`` the hot loop neither reads the clock
nor sets a timer per call.
"""

from __future__ import annotations

import asyncio
import functools
import signal
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from orca._retry import backoff
from orca.errors import ExecutorError, PodError, SchemaError
from orca.executors import run_async_rows
from orca.hashing import PATH_METADATA, is_path_field, object_columns
from orca.names import ATTEMPTS, DURATION, ERROR_COLUMNS, OK, ROW
from orca.types import is_optional, strip_optional, to_arrow_array, to_python

if TYPE_CHECKING:
    from orca.pods import FunctionPod

__all__ = ["run_chunk", "ChunkCall", "chunk_call", "input_packets", "compute_all", "failed_for_tag", "error_text"]

ASYNC_CONCURRENCY = 32
_FAST_CALL = 20e-6  # seconds: calls faster than this on average are timed in blocks
_BLOCK = 64  # calls per clock reading once a function proves fast; doubled per fast block, up to:
_MAX_BLOCK = 1024  # (at 64 the readings and slicing around the blocks cost ~0.13 s per million calls)


def failed_for_tag(function: str, tag: Mapping[str, Any], error_type: str, message: str) -> PodError:
    """The error a run raises for a failed entry (``on_error="raise"``): it names the tag."""
    return PodError(f"function {function!r} failed for tag {dict(tag)}: {error_type}: {message}")


def error_text(error: BaseException) -> str:
    """``str(error)``, or a placeholder when the exception's own ``__str__`` raises."""
    try:
        return str(error)
    except Exception as exc:  # noqa: BLE001 - a broken __str__ must not abort the run
        return f"<{type(error).__name__}.__str__ raised {type(exc).__name__}>"


def _traceback_text(error: BaseException) -> str:
    try:
        return "".join(traceback.format_exception(error))
    except Exception:  # noqa: BLE001 - formatting calls __str__ too
        return f"{type(error).__name__}: {error_text(error)}"


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
    got = f"{type(result).__name__} of length {len(result)}" if isinstance(result, tuple | list) else type(result).__name__
    raise SchemaError(f"should return a tuple or dict of the {len(keys)} outputs {list(keys)}, got {got}")


def _bound(pod: FunctionPod) -> Callable:
    """The function, called with one argument per parameter in signature order."""
    names = list(pod.parameters)
    return pod.function if pod.positional else (lambda *a: pod.function(**dict(zip(names, a, strict=True))))


def _call_sync(pod: FunctionPod, columns: list[list], n: int, retries: int) -> tuple[list, dict, dict, np.ndarray]:
    """Call the function on each of ``n`` rows of argument ``columns`` (signature order),
    retrying failures with backoff.

    Returns (return values, ``{call: last error}``, ``{call: attempts}`` for calls that needed
    more than one, seconds per call). A failed call's value is None.

    Calls are timed one by one until a function proves fast (under ``_FAST_CALL`` on average
    over ``4 * _BLOCK`` calls); then they are timed in blocks, of ``_BLOCK`` calls at first and
    twice as many after each fast block (up to ``_MAX_BLOCK``), and each call gets its block's
    mean: reading the clock costs about as much as such a call, and halves the rate of a cheap
    function. A block slower than that on average switches back.
    """
    fn = _bound(pod)
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
                time.sleep(backoff(attempt))
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
        elif block < _MAX_BLOCK:
            block *= 2
    return values, errors, attempts, seconds


class _Expired(BaseException):
    """Raised by the ``SIGALRM`` handler inside a call that ran past its timeout. A
    ``BaseException``, so that the function's own ``except Exception`` does not swallow it."""


def _expire(signum: int, frame: Any) -> None:
    raise _Expired


# The call under way in this process while calls are timed: (row in its chunk, monotonic start).
# A process executor's watchdog thread reads it (ChunkCall.current) to find a call stuck in
# native code, where SIGALRM cannot interrupt it.
_calling: tuple[int, float] | None = None


def timed_out(function: str, timeout: float) -> TimeoutError:
    """The error a call that ran past ``timeout`` seconds records."""
    return TimeoutError(f"function {function!r} did not return within timeout={timeout:g} s")


def _call_timed(pod: FunctionPod, columns: list[list], rows: np.ndarray, retries: int,
                timeout: float) -> tuple[list, dict, dict, np.ndarray]:
    """Like :func:`_call_sync`, each call (and each retry) limited to ``timeout`` seconds by a
    ``SIGALRM`` timer; ``rows``: each call's row in the chunk (for :meth:`ChunkCall.current`).

    Calls are made one by one and timed one by one: setting a timer costs about as much as
    reading the clock. Any ``SIGALRM`` handler of the caller is restored afterwards.
    """
    global _calling
    if threading.current_thread() is not threading.main_thread():
        raise ExecutorError(
            f"function {pod.name!r}: timeout= needs its calls on a process's main thread (a timer signal "
            f"interrupts them), but they run on thread {threading.current_thread().name!r} (a cached pod's "
            "output is computed on a Polars thread when collected); use executor=ProcessExecutor(...), "
            "or run it as a pipeline node from the main thread, or drop timeout=")
    fn = _bound(pod)
    n = len(rows)
    values: list = []
    seconds = np.zeros(n)
    errors: dict[int, BaseException] = {}
    attempts: dict[int, int] = {}
    previous = signal.signal(signal.SIGALRM, _expire)
    try:
        for k in range(n):
            args = [column[k] for column in columns] if columns else []
            started = time.perf_counter()
            for attempt in range(retries + 1):
                if attempt:
                    time.sleep(backoff(attempt))
                _calling = (int(rows[k]), time.monotonic())
                try:
                    try:
                        signal.setitimer(signal.ITIMER_REAL, timeout)
                        value, error = fn(*args), None
                    finally:  # an alarm that fires in here still lands in the handlers below
                        signal.setitimer(signal.ITIMER_REAL, 0)
                except _Expired as expired:  # keep the traceback: it shows where the call was
                    value, error = None, timed_out(pod.name, timeout).with_traceback(expired.__traceback__)
                except Exception as exc:  # noqa: BLE001 - the user's function may raise anything
                    value, error = None, exc
                if error is None:
                    break
            seconds[k] = time.perf_counter() - started
            values.append(value)
            if error is not None:
                errors[k] = error
            if attempt:
                attempts[k] = attempt + 1
    finally:
        _calling = None
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    return values, errors, attempts, seconds


def _call_async(pod: FunctionPod, columns: list[list], n: int, retries: int,
                timeout: float | None = None) -> tuple[list, dict, dict, np.ndarray]:
    """Like :func:`_call_sync` for a coroutine function: up to ``ASYNC_CONCURRENCY`` at once,
    each call (and each retry) limited to ``timeout`` seconds by ``asyncio.timeout``.

    Runs on :func:`orca.executors.run_async_rows`, which also works where an event loop is
    already running (a Jupyter cell).
    """
    names = list(pod.parameters)

    async def one(args: tuple) -> tuple[Any, BaseException | None, int, float]:
        start, error = time.perf_counter(), None
        for attempt in range(retries + 1):
            if attempt:
                await asyncio.sleep(backoff(attempt))
            limit = asyncio.timeout(timeout)
            try:
                async with limit:
                    value = await pod.function(**dict(zip(names, args, strict=True)))
                return value, None, attempt + 1, time.perf_counter() - start
            except Exception as exc:  # noqa: BLE001 - the user's function may raise anything
                # (a TimeoutError the function raised itself is kept as it is)
                error = timed_out(pod.name, timeout).with_traceback(exc.__traceback__) if limit.expired() else exc
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


def run_chunk(pod: FunctionPod, retries: int, chunk: pa.Table, timeout: float | None = None) -> pa.Table:
    """Run the function on every packet of ``chunk`` (parameter columns plus ``__row``).

    Never raises for a failing row: returns one row per input with ``__ok``, the outputs
    (null when failed), ``__duration_s``, ``__attempts`` and error details. ``timeout``:
    seconds each call may take (a call past it fails with ``TimeoutError``).
    """
    n = chunk.num_rows
    columns, errors = _arguments(pod, chunk)
    called = np.array([i for i in range(n) if i not in errors], np.int64) if errors else np.arange(n)
    if errors:
        columns = [[column[i] for i in called] for column in columns]
    if pod.is_async:
        values, failed, tries, seconds = _call_async(pod, columns, len(called), retries, timeout)
    elif timeout is None:
        values, failed, tries, seconds = _call_sync(pod, columns, len(called), retries)
    else:
        values, failed, tries, seconds = _call_timed(pod, columns, called, retries, timeout)
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


class ChunkCall(functools.partial):
    """:func:`run_chunk` bound to a pod, its retries and its timeout: the chunk function an
    executor runs (build one with :func:`chunk_call`).

    Besides computing a chunk it tells an executor what it needs to keep a run live when a
    call hangs or crashes its process: the ``timeout``, the ``longest`` a chunk may take, the
    call under way (``current``), and the output that records packets as failed (``failed``).
    An executor given a plain function has none of these and raises instead.
    """

    __slots__ = ()

    @property
    def pod(self) -> FunctionPod:
        return self.args[0]

    @property
    def timeout(self) -> float | None:
        return self.keywords.get("timeout")

    def longest(self, rows: int) -> float | None:
        """Seconds past which a chunk of ``rows`` packets can only be stuck (None: no limit):
        every call and retry at its timeout, plus backoff and a margin for start-up."""
        if self.timeout is None:
            return None
        retries = self.args[1]
        per_call = (retries + 1) * (self.timeout + 1.0) + sum(backoff(a) for a in range(1, retries + 1))
        return rows * per_call + 5.0

    @staticmethod
    def current() -> tuple[int, float] | None:
        """The timed call under way in this process: (its row in the chunk, its
        ``time.monotonic()`` start), or None."""
        return _calling

    def failed(self, chunk: pa.Table, error_type: str, message: str) -> pa.Table:
        """The output recording every packet of ``chunk`` as failed with this error (for
        packets whose calls never returned: a worker that crashed or was killed)."""
        n = chunk.num_rows
        return pa.table({
            ROW: chunk.column(ROW),
            OK: pa.repeat(pa.scalar(False), n),
            **{f.name: pa.nulls(n, f.type) for f in self.pod.output_fields},
            DURATION: pa.array(np.zeros(n), pa.float64()),
            ATTEMPTS: pa.array(np.ones(n, np.int64), pa.int64()),
            ERROR_COLUMNS[0]: pa.repeat(pa.scalar(error_type, pa.large_string()), n),
            ERROR_COLUMNS[1]: pa.repeat(pa.scalar(message, pa.large_string()), n),
            ERROR_COLUMNS[2]: pa.repeat(pa.scalar(f"{error_type}: {message}", pa.large_string()), n),
        })


def chunk_call(pod: FunctionPod, retries: int = 0, timeout: float | None = None) -> ChunkCall:
    """The chunk function executors run for ``pod``: ``chunk -> run_chunk(pod, retries, chunk,
    timeout=timeout)``."""
    return ChunkCall(run_chunk, pod, retries, timeout=timeout)


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
        ERROR_COLUMNS[1]: pa.array([None if e is None else error_text(e) for e in errors], pa.large_string()),
        ERROR_COLUMNS[2]: pa.array([None if e is None else _traceback_text(e) for e in errors], pa.large_string()),
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
    names = [p for p in pod.parameters if p in frame.columns]
    if not names:  # a function of no column: one empty packet per row (Arrow keeps the row count)
        return pa.table({"_": pa.nulls(frame.height)}).drop_columns(["_"])
    bad = object_columns(frame.select(names).schema)
    if bad:  # Polars would export them as pointers, different in every process
        raise PodError(f"function {pod.name!r}: packet column(s) {bad} hold Python objects (Polars Object), "
                       "which have no stable hash; convert them to Arrow types first")
    table = frame.select(names).to_arrow()
    fields = [f.with_metadata(PATH_METADATA) if f.name in path_columns else f for f in table.schema]
    return table.cast(pa.schema(fields))


def compute_all(pod: FunctionPod, frame: pl.DataFrame, tags: tuple[str, ...],
                path_columns: frozenset[str]) -> pa.Table:
    """Call the function on every row of ``frame`` in process (the uncached pod): the outputs
    as a table, or :func:`failed_for_tag` for the first row that failed."""
    table = input_packets(pod, frame, path_columns)
    out = run_chunk(pod, 0, table.append_column(ROW, pa.array(np.arange(table.num_rows, dtype=np.int64))))
    failed = out.filter(pc.invert(out.column(OK)))
    if failed.num_rows:
        row = failed.column(ROW)[0].as_py()
        tag = {t: frame[t][row] for t in tags}
        raise failed_for_tag(pod.name, tag, failed.column(ERROR_COLUMNS[0])[0].as_py(),
                             failed.column(ERROR_COLUMNS[1])[0].as_py())
    return out.select(list(pod.output_keys))
