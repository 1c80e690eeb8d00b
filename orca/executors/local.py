"""Executors for one machine: in the calling thread, a thread pool, a process pool.

Pools are created inside `map_chunks` and shut down when its iterator ends or is closed,
so constructing and configuring an executor starts nothing.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import functools
import math
import multiprocessing.connection
import os
import sys
import threading
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import pyarrow as pa

from orca.errors import ExecutorError
from orca.executors import _workers
from orca.executors._chunking import (
    ChunkFn,
    ChunkingExecutor,
    RemoteError,
    check_workers,
    describe,
    drive,
    dump_fn,
    own_buffers,
)

StartMethod = Literal["loky", "spawn", "forkserver"]


@dataclasses.dataclass(frozen=True)
class InProcessExecutor(ChunkingExecutor):
    """Run chunks one after another in the calling thread (the default executor).

    Chunks still grow toward ``target_chunk_seconds`` so callers commit and report progress
    regularly.

    Examples
    --------
    >>> import pyarrow as pa
    >>> ex = InProcessExecutor(initial_chunk_rows=2)
    >>> [t.num_rows for t in ex.map_chunks(lambda t: t, pa.table({"x": [1, 2, 3]}))]
    [2, 1]
    """

    def map_chunks(self, fn: ChunkFn, table: pa.Table) -> Iterator[pa.Table]:
        """Yield ``fn(chunk)`` for consecutive chunks of ``table``.

        A chunk function with a ``timeout`` (see :mod:`orca.calls`) is refused at once off the
        main thread: only there can a timer signal interrupt a call.
        """
        if getattr(fn, "timeout", None) is not None and threading.current_thread() is not threading.main_thread():
            raise ExecutorError(
                f"InProcessExecutor cannot time out calls of function {_function_name(fn)} on thread "
                f"{threading.current_thread().name!r}: a call is interrupted by a timer signal, which only the "
                "main thread receives (a cached pod's output is computed on a Polars thread when collected); "
                "use executor=ProcessExecutor(...), run it as a pipeline node from the main thread, or drop timeout=")
        return self._run(fn, table)

    def _run(self, fn: ChunkFn, table: pa.Table) -> Iterator[pa.Table]:
        plan = self._plan(workers=1)
        offset = 0
        while offset < table.num_rows:
            rows = plan.next_rows(table.num_rows - offset)
            start = time.perf_counter()
            output = fn(table.slice(offset, rows))
            plan.record(rows, time.perf_counter() - start)
            offset += rows
            yield output


@dataclasses.dataclass(frozen=True)
class ThreadExecutor(ChunkingExecutor):
    """Run chunks on a thread pool: for functions that wait on I/O or release the GIL.

    ``max_workers=None`` uses ``min(32, cpu_count + 4)`` threads, like the standard library.

    Examples
    --------
    >>> import pyarrow as pa
    >>> ex = ThreadExecutor(max_workers=2)
    >>> sum(t.num_rows for t in ex.map_chunks(lambda t: t, pa.table({"x": list(range(100))})))
    100
    """

    max_workers: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_workers(self.max_workers)

    def map_chunks(self, fn: ChunkFn, table: pa.Table) -> Iterator[pa.Table]:
        """Yield ``fn(chunk)`` for chunks of ``table`` as worker threads finish them.

        A chunk function with a ``timeout`` (see :mod:`orca.calls`) is refused: nothing can
        interrupt a Python call on another thread, and a call abandoned there would run on.
        """
        if getattr(fn, "timeout", None) is not None:
            raise ExecutorError(
                f"ThreadExecutor cannot time out calls of function {_function_name(fn)}: nothing can interrupt a call "
                "on another thread (an abandoned call would run on, holding its thread); use "
                "ProcessExecutor (a stuck worker is killed and replaced) or InProcessExecutor, or drop timeout=")
        if table.num_rows == 0:
            return iter(())
        workers = self.max_workers or min(32, _cpu_count() + 4)
        return self._run(fn, table, workers)

    def _run(self, fn: ChunkFn, table: pa.Table, workers: int) -> Iterator[pa.Table]:
        pool = ThreadPoolExecutor(workers, thread_name_prefix="orca-executor")
        try:
            yield from drive(
                lambda chunk: pool.submit(_timed, fn, chunk),
                _cancel_futures,
                table,
                self._plan(workers),
                2 * workers,
            )
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


@dataclasses.dataclass(frozen=True)
class ProcessExecutor(ChunkingExecutor):
    """Run chunks on worker processes: for CPU-bound pure-Python functions.

    The function is cloudpickled once per call and loaded once per worker, so lambdas and
    functions defined in ``__main__`` or a notebook work. Workers are fresh interpreters
    started by loky (``start_method="loky"``, the default): they do not import the script's
    ``__main__``, so a script needs no ``if __name__ == "__main__":`` guard, and never fork the
    driver (deltalake breaks in a forked child). ``"spawn"`` and ``"forkserver"`` use the
    standard library's start methods instead, which run ``__main__`` in the workers (scripts
    then need the guard). ``fork`` is refused. ``max_workers=None`` uses one worker per CPU.

    Workers outlive the call that started them and are reused by the next call (with the
    same start method) for up to four minutes, so only the first call of a session pays for
    starting interpreters. A worker that dies while computing a chunk is replaced, and when
    the chunk function is a :class:`orca.calls.ChunkCall` its chunk is retried in halves until
    the packet that kills workers is found and reported as failed (``WorkerCrashed``); a
    worker stuck in a call past the call's timeout is killed and replaced likewise
    (``TimeoutError``). See ``docs/executors.md``.

    Examples
    --------
    >>> import pyarrow as pa
    >>> ex = ProcessExecutor(max_workers=2)  # starts nothing yet
    >>> sum(t.num_rows for t in ex.map_chunks(len, pa.table({"x": [1]})))  # doctest: +SKIP
    """

    max_workers: int | None = None
    start_method: StartMethod = "loky"

    def __post_init__(self) -> None:
        super().__post_init__()
        check_workers(self.max_workers)
        if self.start_method == "fork":
            raise ExecutorError(
                "ProcessExecutor does not support start_method='fork': deltalake (and any "
                "library holding threads or locks) breaks in a forked child; use 'loky', "
                "'spawn' or 'forkserver'"
            )
        if self.start_method not in ("loky", "spawn", "forkserver"):
            raise ExecutorError(
                f"ProcessExecutor start_method must be 'loky', 'spawn' or 'forkserver', "
                f"got {self.start_method!r}"
            )

    def map_chunks(self, fn: ChunkFn, table: pa.Table) -> Iterator[pa.Table]:
        """Yield ``fn(chunk)`` for chunks of ``table`` as worker processes finish them.

        Raises `ExecutorError` at once, before any process starts, if ``fn`` cannot be
        pickled.
        """
        payload = dump_fn(fn, "ProcessExecutor")
        if table.num_rows == 0:
            return iter(())
        workers = min(self.max_workers or _cpu_count(), table.num_rows)
        return _ProcessRun(self, fn, payload, workers).chunks(table)


_ONE_BY_ONE = 16  # a chunk this small whose worker died is retried one packet at a time
_HEARTBEAT_SECONDS = 1.0  # with nothing finished for this long, yield an empty output


@dataclasses.dataclass
class _Job:
    """A chunk a worker is computing: ``planned`` chunks come from the chunk plan (their time
    sizes the next ones); others are pieces of a chunk whose worker died."""

    chunk: pa.Table
    planned: bool
    deadline: float


class _ProcessRun:
    """One `ProcessExecutor.map_chunks` call: feeds chunks to workers, one chunk per worker at a
    time, and settles each worker's reply, death or hang."""

    def __init__(self, executor: ProcessExecutor, fn: ChunkFn, payload: bytes, workers: int) -> None:
        self.executor, self.fn, self.payload, self.workers = executor, fn, payload, workers
        self.name = describe(fn)
        self.function = _function_name(fn)
        # Only a chunk function that can record packets as failed (orca.calls.ChunkCall) lets a
        # dead or stuck worker's packets be isolated; for any other, a death is an error.
        self.failed = getattr(fn, "failed", None)
        self.longest = getattr(fn, "longest", None)
        self.token = os.urandom(8)
        self.busy: dict[_workers.Worker, _Job] = {}
        self.free: list[_workers.Worker] = []
        self.retry: collections.deque[pa.Table] = collections.deque()

    def chunks(self, table: pa.Table) -> Iterator[pa.Table]:
        self.plan, self.table, self.offset = self.executor._plan(self.workers), table, 0
        clean = False
        try:
            # Take (or start) every worker first: new ones then start up side by side, instead of
            # each waiting for the one before it to read its first message.
            self.free = [_workers.take(self.executor.start_method) for _ in range(self.workers)]
            while self.offset < table.num_rows or self.retry or self.busy:
                self._fill()
                ready = self._wait()
                if not ready and self.failed is not None:
                    # A heartbeat: nothing finished for a while (a call may hang). An empty
                    # output lets the caller commit what it holds (see docs/executors.md).
                    yield self.failed(table.slice(0, 0), "", "")
                outputs, error = self._settle(ready)
                if error is None:
                    self._fill()  # before yielding: workers compute while the caller stores outputs
                yield from outputs
                if error is not None:
                    raise error.original() from error
            clean = True
        finally:
            for worker in self.busy:  # abandoned chunks: workers never write, so stop them now
                worker.kill()
            for worker in self.free:
                _workers.give_back(worker) if clean else worker.kill()

    def _fill(self) -> None:
        """Give each free worker a chunk: pieces of lost chunks first, then the next planned one."""
        while len(self.busy) < self.workers and (self.retry or self.offset < self.table.num_rows):
            if self.retry:
                self._submit(self.retry.popleft(), planned=False)
            else:
                rows = self.plan.next_rows(self.table.num_rows - self.offset)
                self._submit(self.table.slice(self.offset, rows), planned=True)
                self.offset += rows

    def _settle(self, ready: list[tuple[_workers.Worker, bool]]) -> tuple[list[pa.Table], RemoteError | None]:
        """The outputs of the workers that finished, died or hung, and the first error raised by
        the chunk function itself (re-raised once the outputs are yielded)."""
        outputs: list[pa.Table] = []
        error = None
        for worker, overdue in ready:
            reply = worker.receive()
            if reply is None and worker.process.exitcode is None and not overdue:
                continue  # it only said it started: still computing
            job = self.busy.pop(worker)
            if reply is not None and reply[0] in ("ok", "error"):
                self.free.append(worker)
                if reply[0] == "error":
                    error = error or reply[1]
                    continue
                if job.planned:
                    self.plan.record(job.chunk.num_rows, reply[2])
                outputs.append(reply[1])
            else:
                outputs.extend(self._lost(worker, job, reply, overdue))
        return outputs, error

    def _submit(self, chunk: pa.Table, planned: bool) -> None:
        """Hand ``chunk`` to a free, reused or new worker (loading this call's function)."""
        for _ in range(3):  # a reused worker may have died while idle: take another
            worker = self.free.pop() if self.free else _workers.take(self.executor.start_method)
            if worker.token != self.token:
                if not worker.send(("load", self.token, self.payload, self.name)):
                    worker.kill()
                    continue
                worker.token = self.token
            if worker.send(("run", own_buffers(chunk))):
                longest = self.longest(chunk.num_rows) if self.longest is not None else None
                self.busy[worker] = _Job(chunk, planned, math.inf if longest is None else time.monotonic() + longest)
                return
            worker.kill()
        raise ExecutorError(f"ProcessExecutor could not start a worker process for {self.name}")

    def _wait(self) -> list[tuple[_workers.Worker, bool]]:
        """Busy workers that sent something, died, or ran past their chunk's deadline (and
        whether they did the latter)."""
        deadline = min(job.deadline for job in self.busy.values())
        timeout = None if deadline == math.inf else max(0.0, deadline - time.monotonic())
        if self.failed is not None:
            timeout = _HEARTBEAT_SECONDS if timeout is None else min(timeout, _HEARTBEAT_SECONDS)
        handles = [h for w in self.busy for h in (w.conn, w.process.sentinel)]
        ready = set(multiprocessing.connection.wait(handles, timeout))
        now = time.monotonic()
        return [(w, now >= job.deadline) for w, job in self.busy.items()
                if w.conn in ready or w.process.sentinel in ready or now >= job.deadline]

    def _lost(self, worker: _workers.Worker, job: _Job, reply: tuple | None, overdue: bool) -> list[pa.Table]:
        """A worker that died, was stopped by its watchdog, or missed its deadline: replace it,
        record the packet at fault as failed (the output returned) and send the chunk's other
        packets again."""
        overdue = overdue and reply is None and worker.process.exitcode is None
        if not worker.ready and not overdue:  # it never started: no packet is at fault
            raise ExecutorError(
                f"a ProcessExecutor worker process could not start ({worker.ended()}); its error is printed "
                f"above (stderr). Check that `{sys.executable} -c 'import orca'` works in {os.getcwd()}")
        worker.kill()
        chunk = job.chunk
        if reply is not None:  # ("hung", row, seconds): the watchdog names the stuck call
            row = int(reply[1])
            failed = self.failed(chunk.slice(row, 1), "TimeoutError", (
                f"function {self.function} did not return within timeout={self.fn.timeout:g} s: the call "
                f"was still running after {reply[2]:.1f} s in native code, where the timer cannot interrupt it, "
                "so its worker process was killed"))
            self.retry.extend(part for part in (chunk.slice(0, row), chunk.slice(row + 1)) if part.num_rows)
            return [failed]
        if overdue:  # the watchdog could not run either: the call holds the GIL in native code
            error, how = "TimeoutError", "stopped responding past its timeout (stuck in native code holding the GIL)"
            message = (f"function {self.function} did not return within timeout={self.fn.timeout:g} s and its "
                       f"worker process {how}, so it was killed")
        else:
            error, how = "WorkerCrashed", f"died ({worker.ended()})"
            message = (f"the worker process calling function {self.function} on this packet {how}: the call "
                       "crashed its process (e.g. a segfault, os.abort(), os._exit(), or the out-of-memory killer)")
        if self.failed is None:
            raise ExecutorError(
                f"a ProcessExecutor worker running {self.name} {how} (killed, out of memory, "
                "or crashed in native code)")
        if chunk.num_rows == 1:  # found it: this packet kills (or hangs) its worker
            return [self.failed(chunk, error, message)]
        # Find the packet at fault: a small chunk one packet at a time (one more death), a large
        # one by halves (a death per halving, but never one call per packet of 50,000).
        if chunk.num_rows <= _ONE_BY_ONE:
            self.retry.extend(chunk.slice(i, 1) for i in range(chunk.num_rows))
        else:
            half = chunk.num_rows // 2
            self.retry.extend((chunk.slice(0, half), chunk.slice(half)))
        return []


async def _gather_limited(
    coro_fn: Callable[[Any], Awaitable[Any]], rows: Sequence[Any], limit: int
) -> list[Any]:
    semaphore = asyncio.Semaphore(limit)

    async def one(row: Any) -> Any:
        async with semaphore:
            return await coro_fn(row)

    return await asyncio.gather(*(one(row) for row in rows), return_exceptions=True)


def run_async_rows(
    coro_fn: Callable[[Any], Awaitable[Any]], rows: Sequence[Any], max_concurrency: int = 32
) -> list[Any]:
    """Run ``coro_fn`` over ``rows`` concurrently, at most ``max_concurrency`` at a time.

    Returns one item per row, in input order: the coroutine's result, or the exception it
    raised (exceptions are returned, not raised, so one failing row does not lose the
    others). Blocks until all are done. It runs its own event loop; when called where a
    loop is already running (a Jupyter cell), that loop runs on a helper thread.

    Examples
    --------
    >>> async def double(x):
    ...     return 2 * x
    >>> run_async_rows(double, [1, 2, 3])
    [2, 4, 6]
    """
    if not isinstance(max_concurrency, int) or max_concurrency < 1:
        raise ExecutorError(f"max_concurrency must be an integer >= 1, got {max_concurrency!r}")
    work = functools.partial(_gather_limited, coro_fn, list(rows), max_concurrency)
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(work())
    with ThreadPoolExecutor(1, thread_name_prefix="orca-async") as helper:
        return helper.submit(lambda: asyncio.run(work())).result()


# --- helpers -------------------------------------------------------------------------


def _timed(fn: ChunkFn, chunk: pa.Table) -> tuple[pa.Table, float]:
    start = time.perf_counter()
    output = fn(chunk)
    return output, time.perf_counter() - start


def _cancel_futures(futures: set[Future]) -> None:
    for future in futures:
        future.cancel()


def _function_name(fn: ChunkFn) -> str:
    """The quoted name of the user's function behind a chunk function (its pod's name for an
    :class:`orca.calls.ChunkCall`), for messages."""
    pod = getattr(fn, "pod", None)
    return repr(pod.name) if pod is not None else describe(fn)


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
