"""What every executor shares: the protocol, adaptive chunk sizing and the submit/wait loop.

The loop keeps ``2 * workers`` chunks in flight, yields each chunk's output as soon as it
completes (completion order), sizes the next chunk from the measured seconds per row, and
cancels whatever is still pending when the caller stops early or a chunk fails.
"""

from __future__ import annotations

import dataclasses
import math
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from typing import Any, Protocol

import cloudpickle
import numpy as np
import pyarrow as pa

from orca.errors import ExecutorError

ChunkFn = Callable[[pa.Table], pa.Table]

_MAX_GROWTH = 8  # a chunk is at most 8x the rows of the chunk its estimate came from
_SLACK_BYTES = 64 * 1024  # buffer bytes a chunk may hold beyond its own data before a copy


class Executor(Protocol):
    """Where a function node's chunk function runs (in process, threads, processes, Ray)."""

    def map_chunks(self, fn: ChunkFn, table: pa.Table) -> Iterator[pa.Table]:
        """Split ``table`` into chunks, yield ``fn(chunk)`` for each, in completion order."""
        ...

    def with_options(self, **options: Any) -> Executor:
        """Return a copy with ``options`` changed; the original is left as it was."""
        ...


@dataclasses.dataclass(frozen=True, kw_only=True)
class ChunkingExecutor:
    """Base of every executor: the chunking options (keyword-only) and `with_options`.

    ``initial_chunk_rows`` rows go in the first chunks; later chunks are sized so one
    takes about ``target_chunk_seconds``, never more than ``max_chunk_rows`` rows.
    """

    target_chunk_seconds: float = 0.25
    initial_chunk_rows: int = 8
    max_chunk_rows: int = 50_000

    def __post_init__(self) -> None:
        if not self.target_chunk_seconds > 0:
            raise ExecutorError(
                f"target_chunk_seconds must be > 0, got {self.target_chunk_seconds!r}"
            )
        for name in ("initial_chunk_rows", "max_chunk_rows"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise ExecutorError(f"{name} must be an integer >= 1, got {value!r}")

    def with_options(self, **options: Any):
        """Return a copy with ``options`` replaced; unknown names raise `ExecutorError`."""
        valid = sorted(f.name for f in dataclasses.fields(self))
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise ExecutorError(
                f"{type(self).__name__} has no option(s) {', '.join(unknown)}; "
                f"valid options: {', '.join(valid)}"
            )
        return dataclasses.replace(self, **options)

    def _plan(self, workers: int) -> ChunkPlan:
        return ChunkPlan(
            target_seconds=self.target_chunk_seconds,
            max_rows=self.max_chunk_rows,
            rows=min(self.initial_chunk_rows, self.max_chunk_rows),
            workers=workers,
        )


@dataclasses.dataclass
class ChunkPlan:
    """Mutable per-call chunk sizer: seconds/row is a moving average of finished chunks."""

    target_seconds: float
    max_rows: int
    rows: int
    workers: int
    seconds_per_row: float | None = None

    def next_rows(self, remaining: int) -> int:
        """Rows for the next chunk; with several workers the tail is split so all finish together."""
        rows = min(self.rows, remaining)
        if self.workers > 1:
            rows = min(rows, max(1, math.ceil(remaining / (2 * self.workers))))
        return rows

    def record(self, rows: int, seconds: float) -> None:
        """Fold one finished chunk into the estimate and resize the next chunks."""
        observed = max(seconds, 0.0) / rows
        if self.seconds_per_row is None:
            self.seconds_per_row = observed
        else:
            self.seconds_per_row = 0.5 * self.seconds_per_row + 0.5 * observed
        ideal = self.target_seconds / max(self.seconds_per_row, 1e-9)
        self.rows = int(max(1, min(ideal, rows * _MAX_GROWTH, self.max_rows)))


def drive(
    submit: Callable[[pa.Table], Future],
    cancel: Callable[[set[Future]], None],
    table: pa.Table,
    plan: ChunkPlan,
    in_flight: int,
) -> Iterator[pa.Table]:
    """Feed chunks of ``table`` to ``submit`` and yield outputs as their futures finish.

    Each future resolves to ``(output, seconds)``. Outputs that finished alongside a failed
    chunk are yielded before its exception is raised; pending futures are passed to
    ``cancel`` on any exit (error, early close, or normal end with nothing pending).
    """
    pending: dict[Future, int] = {}
    offset, total = 0, table.num_rows
    try:
        while offset < total or pending:
            while offset < total and len(pending) < in_flight:
                rows = plan.next_rows(total - offset)
                pending[submit(table.slice(offset, rows))] = rows
                offset += rows
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            failed = [f for f in done if f.exception() is not None]
            for future in done:
                rows = pending.pop(future)
                if future in failed:
                    continue
                output, seconds = future.result()
                plan.record(rows, seconds)
                yield output
            if failed:
                error = failed[0].exception()
                if isinstance(error, RemoteError):
                    raise error.original() from error
                raise error
    finally:
        if pending:
            cancel(set(pending))


class RemoteError(Exception):
    """A worker's exception in transit: cloudpickled, so classes defined in ``__main__``, a
    notebook or a test module come back as themselves; re-raised in the driver by `drive`."""

    def __init__(self, payload: bytes, traceback: str) -> None:
        super().__init__(payload, traceback)
        self.payload, self.traceback = payload, traceback

    def __str__(self) -> str:
        return f"traceback in the worker:\n{self.traceback}"

    def original(self) -> BaseException:
        """The worker's exception, or an `ExecutorError` when it cannot be rebuilt here."""
        try:
            return cloudpickle.loads(self.payload)
        except Exception as err:
            return ExecutorError(
                f"a worker raised an exception that cannot be rebuilt here ({err})"
            )


def run_shipped(fn: ChunkFn, chunk: pa.Table) -> tuple[pa.Table, float]:
    """Worker side: run ``fn`` on a chunk, return ``(compact output, seconds)``.

    An exception leaves as a `RemoteError`, so the driver gets the original type back.
    """
    start = time.perf_counter()
    try:
        output = fn(chunk)
    except Exception as err:
        try:
            payload = cloudpickle.dumps(err)
        except Exception:
            payload = cloudpickle.dumps(ExecutorError(f"{type(err).__name__}: {err}"))
        raise RemoteError(payload, traceback.format_exc()) from None
    return own_buffers(output), time.perf_counter() - start


def own_buffers(table: pa.Table) -> pa.Table:
    """``table`` with buffers of its own, so pickling it does not ship a parent's buffers.

    A slice pickles its parent's whole buffers (apache/arrow GH-26685); ``take`` copies only
    the selected rows (strings, lists and structs included).
    """
    if table.get_total_buffer_size() <= 2 * table.nbytes + _SLACK_BYTES:
        return table
    return table.take(np.arange(table.num_rows))


def dump_fn(fn: ChunkFn, executor: str) -> bytes:
    """Cloudpickle ``fn`` once, up front; an unpicklable function raises `ExecutorError`."""
    try:
        return cloudpickle.dumps(fn)
    except Exception as err:
        raise ExecutorError(
            f"{executor} cannot ship function {describe(fn)} to its workers: it cannot be "
            f"pickled ({type(err).__name__}: {err}). Functions must not close over locks, "
            "open files, sockets or clients; create those inside the function instead."
        ) from err


def check_workers(max_workers: int | None) -> None:
    """Reject a ``max_workers`` that is neither None nor a positive integer."""
    if max_workers is not None and (not isinstance(max_workers, int) or max_workers < 1):
        raise ExecutorError(f"max_workers must be None or an integer >= 1, got {max_workers!r}")


def describe(fn: Any) -> str:
    """A readable, quoted name for ``fn``, looking through ``functools.partial``.

    >>> import functools, math
    >>> describe(functools.partial(map, math.sqrt))
    "'builtins.map(math.sqrt)'"
    """
    return repr(_name(fn))


def _name(fn: Any) -> str:
    inner = fn
    while isinstance(getattr(inner, "func", None), Callable):
        inner = inner.func
    label = getattr(inner, "__qualname__", None) or repr(inner)
    if getattr(inner, "__module__", None):
        label = f"{inner.__module__}.{label}"
    callables = [_name(arg) for arg in getattr(fn, "args", ()) if callable(arg)]
    return f"{label}({', '.join(callables)})" if callables and inner is not fn else label
