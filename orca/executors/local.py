"""Executors for one machine: in the calling thread, a thread pool, a process pool.

Pools are created inside `map_chunks` and shut down when its iterator ends or is closed,
so constructing and configuring an executor starts nothing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import multiprocessing
import multiprocessing.forkserver
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any, Literal

import cloudpickle
import pyarrow as pa

from orca.errors import ExecutorError
from orca.executors._chunking import (
    ChunkFn,
    ChunkingExecutor,
    check_workers,
    describe,
    drive,
    dump_fn,
    own_buffers,
    run_shipped,
)

StartMethod = Literal["spawn", "forkserver"]
_DEFAULT_START_METHOD: StartMethod = (
    "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
)


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
        """Yield ``fn(chunk)`` for consecutive chunks of ``table``."""
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
        """Yield ``fn(chunk)`` for chunks of ``table`` as worker threads finish them."""
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
    """Run chunks on a pool of worker processes: for CPU-bound pure-Python functions.

    The function is cloudpickled once and loaded once per worker, so lambdas and functions
    defined in ``__main__`` or a notebook work. Workers start with ``forkserver`` (the
    default where the platform has it; the fork server imports pyarrow and orca once, so
    workers start in milliseconds after the first pool) or ``spawn`` (default elsewhere);
    ``fork`` is refused because deltalake breaks in a forked child.
    ``max_workers=None`` uses one worker per available CPU.

    Examples
    --------
    >>> import pyarrow as pa
    >>> ex = ProcessExecutor(max_workers=2)  # starts nothing yet
    >>> sum(t.num_rows for t in ex.map_chunks(len, pa.table({"x": [1]})))  # doctest: +SKIP
    """

    max_workers: int | None = None
    start_method: StartMethod = _DEFAULT_START_METHOD

    def __post_init__(self) -> None:
        super().__post_init__()
        check_workers(self.max_workers)
        if self.start_method == "fork":
            raise ExecutorError(
                "ProcessExecutor does not support start_method='fork': deltalake (and any "
                "library holding threads or locks) breaks in a forked child; use 'spawn' "
                "or 'forkserver'"
            )
        if self.start_method not in ("spawn", "forkserver"):
            raise ExecutorError(
                f"ProcessExecutor start_method must be 'spawn' or 'forkserver', "
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
        return self._run(payload, describe(fn), table, workers)

    def _run(self, payload: bytes, name: str, table: pa.Table, workers: int) -> Iterator[pa.Table]:
        context = multiprocessing.get_context(self.start_method)
        if self.start_method == "forkserver":
            _preload_forkserver(context)
        pool = ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_load_worker_fn,
            initargs=(payload, name),
        )
        try:
            yield from drive(
                lambda chunk: pool.submit(_call_worker_fn, own_buffers(chunk)),
                _cancel_futures,
                table,
                self._plan(workers),
                2 * workers,
            )
        except BrokenProcessPool as err:
            raise ExecutorError(
                f"a ProcessExecutor worker running {name} died unexpectedly "
                "(killed, out of memory, or crashed in native code)"
            ) from err
        finally:
            pool.shutdown(wait=True, cancel_futures=True)


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


# --- worker side ---------------------------------------------------------------------

_worker_fn: ChunkFn | None = None
_worker_load_error: BaseException | None = None
_worker_fn_name = ""


def _load_worker_fn(payload: bytes, name: str) -> None:
    """Process-pool initializer: unpickle the chunk function once per worker."""
    global _worker_fn, _worker_load_error, _worker_fn_name
    _worker_fn_name = name
    try:
        _worker_fn = cloudpickle.loads(payload)
    except BaseException as err:  # reported on the first chunk, not as a broken pool
        _worker_load_error = err


def _call_worker_fn(chunk: pa.Table) -> tuple[pa.Table, float]:
    if _worker_fn is None:
        raise ExecutorError(
            f"a worker process could not load function {_worker_fn_name}: "
            f"{type(_worker_load_error).__name__}: {_worker_load_error} (is the module that "
            "defines it importable in the worker?)"
        ) from _worker_load_error
    return run_shipped(_worker_fn, chunk)


def _timed(fn: ChunkFn, chunk: pa.Table) -> tuple[pa.Table, float]:
    start = time.perf_counter()
    output = fn(chunk)
    return output, time.perf_counter() - start


def _cancel_futures(futures: set[Future]) -> None:
    for future in futures:
        future.cancel()


def _preload_forkserver(context: Any) -> None:
    """Have the fork server import this module (pyarrow, cloudpickle) once, not each worker.

    Only takes effect before the fork server starts; keeps the modules already listed
    (``__main__`` by default) by reading the stdlib's private list when it is there.
    """
    server = getattr(multiprocessing.forkserver, "_forkserver", None)
    modules = list(getattr(server, "_preload_modules", None) or ["__main__"])
    if __name__ not in modules:
        context.set_forkserver_preload([*modules, __name__])


def _cpu_count() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1
