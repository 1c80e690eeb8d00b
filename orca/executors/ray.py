"""Run chunks as Ray tasks, on a local Ray or a cluster (``ray.init(address=...)``).

``ray`` is imported only when a `RayExecutor` first runs, so orca imports without it.
"""

from __future__ import annotations

import dataclasses
import uuid
import weakref
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from types import MappingProxyType
from typing import Any

import cloudpickle
import pyarrow as pa

from orca.errors import ExecutorError
from orca.executors._chunking import (
    ChunkFn,
    ChunkingExecutor,
    RemoteError,
    check_workers,
    describe,
    drive,
    dump_fn,
    own_buffers,
    run_shipped,
)


@dataclasses.dataclass(frozen=True)
class RayExecutor(ChunkingExecutor):
    """Run chunks as Ray tasks.

    On first use, calls ``ray.init(address=address, ignore_reinit_error=True)`` unless Ray
    is already initialised (``num_cpus`` is passed only when starting a local Ray, i.e.
    ``address`` is None). ``max_workers`` is how many chunks run at once (None: the
    cluster's CPU count); ``task_options`` go to ``.options()`` of each task (e.g.
    ``{"num_cpus": 2, "num_gpus": 1}``). The function is cloudpickled and put in the object
    store once per `map_chunks` call; each worker process unpickles it once.

    Examples
    --------
    >>> ex = RayExecutor(address="auto", max_workers=64)  # connects on first map_chunks
    >>> ex.with_options(max_workers=8).max_workers
    8
    """

    address: str | None = None
    num_cpus: int | None = None
    max_workers: int | None = None
    task_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self) -> None:
        super().__post_init__()
        check_workers(self.max_workers)
        object.__setattr__(self, "task_options", MappingProxyType(dict(self.task_options)))

    def map_chunks(self, fn: ChunkFn, table: pa.Table) -> Iterator[pa.Table]:
        """Yield ``fn(chunk)`` for chunks of ``table`` as Ray tasks finish them.

        Raises `ExecutorError` at once, before Ray starts, if ``fn`` cannot be pickled.
        """
        payload = dump_fn(fn, "RayExecutor")
        if table.num_rows == 0:
            return iter(())
        return self._run(payload, describe(fn), table)

    def _run(self, payload: bytes, name: str, table: pa.Table) -> Iterator[pa.Table]:
        ray = _connect(self.address, self.num_cpus)
        workers = self.max_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = _remote_task(ray)
        if self.task_options:
            task = task.options(**self.task_options)
        token, fn_ref = uuid.uuid4().hex, ray.put(payload)
        refs: weakref.WeakKeyDictionary[Future, Any] = weakref.WeakKeyDictionary()

        def submit(chunk: pa.Table) -> Future:
            ref = task.remote(token, [fn_ref], own_buffers(chunk))
            future = ref.future()
            refs[future] = ref
            return future

        def cancel(futures: set[Future]) -> None:
            for future in futures:
                ray.cancel(refs[future])

        try:
            yield from drive(submit, cancel, table, self._plan(workers), 2 * workers)
        except ray.exceptions.RayTaskError as err:
            cause = getattr(err, "cause", None)
            if isinstance(cause, RemoteError):
                raise cause.original() from cause
            if isinstance(cause, Exception):
                raise cause from err
            raise ExecutorError(f"a Ray task running {name} failed: {err}") from err
        except ray.exceptions.RayError as err:
            raise ExecutorError(f"Ray could not run {name}: {type(err).__name__}: {err}") from err


def _connect(address: str | None, num_cpus: int | None):
    try:
        import ray
    except ImportError as err:
        raise ExecutorError(
            "RayExecutor needs Ray: pip install 'orca[ray]' (or pip install ray)"
        ) from err
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {"address": address, "ignore_reinit_error": True}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        ray.init(**kwargs)
    return ray


_TASK = None


def _remote_task(ray):
    global _TASK
    if _TASK is None:
        _TASK = ray.remote(_run_chunk)
    return _TASK


# --- worker side ---------------------------------------------------------------------

_loaded: dict[str, ChunkFn] = {}


def _run_chunk(token: str, fn_ref: list, chunk: pa.Table) -> tuple[pa.Table, float]:
    """Ray task body: load the function once per worker and map call, then run one chunk."""
    fn = _loaded.get(token)
    if fn is None:
        import ray

        fn = cloudpickle.loads(ray.get(fn_ref[0]))
        _loaded.clear()  # keep only the current map call's function
        _loaded[token] = fn
    return run_shipped(fn, chunk)
