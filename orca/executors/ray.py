"""Run chunks as Ray tasks, on a local Ray or a cluster (``ray.init(address=...)``).

``ray`` is imported only when a `RayExecutor` first runs, so orca imports without it.
"""

from __future__ import annotations

import dataclasses
import re
import uuid
from collections.abc import Iterator, Mapping
from concurrent.futures import Future
from types import MappingProxyType
from typing import Any

import cloudpickle
import pyarrow as pa

from orca.errors import ExecutorError, OrcaError
from orca.executors._chunking import (
    ChunkFn,
    ChunkingExecutor,
    ChunkPlan,
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

    On first use, calls ``ray.init(address=address, ignore_reinit_error=True,
    **init_options)`` unless Ray is already initialised (``num_cpus`` is passed only when
    starting a local Ray, i.e. ``address`` is None). ``init_options`` are further
    ``ray.init`` arguments, e.g. ``{"runtime_env": {"pip": ["scipy"]}, "namespace": "lab"}``.
    ``max_workers`` is how many chunks run at once (None: the cluster's CPU count);
    ``task_options`` go to ``.options()`` of each task (e.g. ``{"num_cpus": 2}``,
    ``{"max_retries": 0}``). ``max_chunk_bytes`` caps a chunk's size (by the table's
    average bytes per row); None: the driver node's object store divided among the
    inputs and outputs of the ``2 x max_workers`` chunks in flight, so they fit in it even
    when rows are large. The function is cloudpickled and put in the object store once
    per `map_chunks` call; each worker process unpickles it once.

    A task whose worker or node died is retried by Ray (``max_retries``, default 3); when
    the retries run out, `map_chunks` raises `ExecutorError` naming the task, its chunk and
    the lost node, after yielding every chunk that finished before.

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
    init_options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    max_chunk_bytes: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        check_workers(self.max_workers)
        limit = self.max_chunk_bytes
        if limit is not None and (not isinstance(limit, int) or limit < 1):
            raise ExecutorError(f"max_chunk_bytes must be None or an integer >= 1, got {limit!r}")
        for name in ("task_options", "init_options"):
            object.__setattr__(self, name, MappingProxyType(dict(getattr(self, name))))

    def map_chunks(self, fn: ChunkFn, table: pa.Table) -> Iterator[pa.Table]:
        """Yield ``fn(chunk)`` for chunks of ``table`` as Ray tasks finish them.

        Raises `ExecutorError` at once, before Ray starts, if ``fn`` cannot be pickled.
        """
        payload = dump_fn(fn, "RayExecutor")
        if table.num_rows == 0:
            return iter(())
        return self._run(payload, describe(fn), table)

    def _run(self, payload: bytes, name: str, table: pa.Table) -> Iterator[pa.Table]:
        ray = _connect(self.address, self.num_cpus, self.init_options)
        try:
            yield from self._dispatch(ray, payload, name, table)
        except ray.exceptions.RayError as err:  # in the driver: put, submit, cluster state
            raise ExecutorError(f"Ray could not run {name}: {type(err).__name__}: {err}") from err

    def _dispatch(self, ray, payload: bytes, name: str, table: pa.Table) -> Iterator[pa.Table]:
        workers = self.max_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        task = _remote_task(ray)
        if self.task_options:
            task = task.options(**self.task_options)
        token, fn_ref = uuid.uuid4().hex, ray.put(payload)

        def submit(chunk: pa.Table) -> Future:
            # A chunk over Ray's inline limit (100 KiB) is put in the driver's object store
            # once, and the node running the task pulls it from there: the data does not
            # travel through the driver's sockets, only the reference does.
            ref = task.remote(token, name, [fn_ref], own_buffers(chunk))
            future: Future = Future()
            ref.future().add_done_callback(
                lambda done: _settle(ray, future, done, name, chunk.num_rows, ref)
            )
            return future

        def abandon(futures: set[Future]) -> None:
            # Tasks still in flight are left to finish and their outputs dropped, never
            # ray.cancel()ed: in Ray 2.60 a cancel that races the task's completion aborts
            # the driver process (RAY_CHECK "Tried to complete task that was not pending",
            # ray-project/ray#54846; seen here in ~1 of 6 runs of a failing map call).
            pass

        plan = self._plan(workers)
        limit = self.max_chunk_bytes or _store_bytes(ray) // (4 * workers) or _FALLBACK_BYTES
        _cap_bytes(plan, table, limit)
        yield from drive(submit, abandon, table, plan, 2 * workers)


def _cap_bytes(plan: ChunkPlan, table: pa.Table, limit: int) -> None:
    """Cap ``plan``'s chunks at about ``limit`` bytes, by ``table``'s average bytes per row.

    Sizing by time alone would send a cheap function 8, then 64 rows of 10 MB packets: four
    such chunks in flight overflow a 200 MB object store and Ray spills to disk (measured:
    48 rows of 10 MB took 7-12 s in 6-8-row chunks, 2-5 s in 1-2-row chunks).
    """
    cap = max(1, limit // max(1, table.nbytes // table.num_rows))
    plan.max_rows, plan.rows = min(plan.max_rows, cap), min(plan.rows, cap)


_FALLBACK_BYTES = 64 * 2**20  # chunk size cap when the object store's size is unknown


def _store_bytes(ray) -> int:
    """Capacity of the driver node's object store, where every chunk is put (0: unknown)."""
    here = ray.get_runtime_context().get_node_id()
    for node in ray.nodes():
        if node.get("NodeID") == here:
            return int(node.get("Resources", {}).get("object_store_memory", 0))
    return 0


def _settle(ray, future: Future, done: Future, name: str, rows: int, ref) -> None:
    """Resolve ``future`` from a Ray task's ``done`` future, turning Ray's errors into ours.

    The function's own exception goes on as the `RemoteError` it left the worker as (`drive`
    re-raises the original); a lost worker, node or object becomes an `ExecutorError` that
    names the task, the chunk and (from Ray's message) the node.
    """
    try:
        future.set_result(done.result())
        return
    except ray.exceptions.RayTaskError as err:
        cause = getattr(err, "cause", None)
        if isinstance(cause, (RemoteError, OrcaError)):  # the function's, or ours
            future.set_exception(cause)
            return
        error = ExecutorError(
            f"a Ray task running {name} on {rows} rows failed in the worker: "
            f"{type(cause or err).__name__}: {cause or err}"
        )
        error.__cause__ = err
    except ray.exceptions.TaskCancelledError as err:
        error = ExecutorError(f"the Ray task running {name} on {rows} rows was cancelled")
        error.__cause__ = err
    except ray.exceptions.RayError as err:
        error = ExecutorError(_lost_message(ray, err, name, rows, ref))
        error.__cause__ = err
    except Exception as err:  # e.g. a result that cannot be deserialised in the driver
        error = ExecutorError(
            f"the result of the Ray task running {name} on {rows} rows could not be read: "
            f"{type(err).__name__}: {err}"
        )
        error.__cause__ = err
    future.set_exception(error)


_NODE = re.compile(r"Node IP: (?P<ip>[^,\s]+), node ID: (?P<id>[0-9a-f]+)")


def _lost_message(ray, err: Exception, name: str, rows: int, ref) -> str:
    """What was lost and why, for a Ray system error (the task did not fail by itself)."""
    task = f"Ray task {ref.task_id().hex()} running {name} on a chunk of {rows} rows"
    exceptions = ray.exceptions
    node = _NODE.search(str(err))
    if isinstance(err, exceptions.NodeDiedError) or node:
        where = f"node {node['ip']} (node id {node['id']})" if node else "its node"
        what = f"{where} died or became unreachable while running it"
    elif isinstance(err, exceptions.WorkerCrashedError):
        what = "the worker process running it died (killed, out of memory or a native crash)"
    elif isinstance(err, exceptions.ObjectLostError):
        what = "its input or output was lost from the object store (the node holding it died)"
    elif isinstance(err, exceptions.OutOfMemoryError):
        what = "Ray killed its worker because the node ran out of memory"
    else:
        what = f"Ray could not run it ({type(err).__name__})"
    return (
        f"{task} was lost: {what}, and Ray's retries (task option max_retries, default 3) "
        "are used up. Chunks that finished before were returned; run again to compute the "
        f"rest. Ray said: {type(err).__name__}: {err}"
    )


def _connect(address: str | None, num_cpus: int | None, init_options: Mapping[str, Any]):
    try:
        import ray
    except ImportError as err:
        raise ExecutorError(
            "RayExecutor needs Ray: pip install 'orca[ray]' (or pip install ray)"
        ) from err
    if not ray.is_initialized():
        kwargs: dict[str, Any] = {**init_options, "address": address, "ignore_reinit_error": True}
        if address is None and num_cpus is not None:
            kwargs["num_cpus"] = num_cpus
        try:
            ray.init(**kwargs)
        except Exception as err:
            where = f"the Ray cluster at {address!r}" if address else "a local Ray"
            raise ExecutorError(
                f"RayExecutor could not start or connect to {where}: {type(err).__name__}: {err}"
            ) from err
    return ray


_TASK = None


def _remote_task(ray):
    global _TASK
    if _TASK is None:
        _TASK = ray.remote(_run_chunk)
    return _TASK


# --- worker side ---------------------------------------------------------------------

_loaded: dict[str, ChunkFn] = {}


def _run_chunk(token: str, name: str, fn_ref: list, chunk: pa.Table) -> tuple[pa.Table, float]:
    """Ray task body: load the function once per worker and map call, then run one chunk.

    ``fn_ref`` is a list so Ray passes the reference itself, not the value, and the
    function is fetched only by a worker that has not loaded it yet.
    """
    fn = _loaded.get(token)
    if fn is None:
        import ray

        try:
            fn = cloudpickle.loads(ray.get(fn_ref[0]))
        except Exception as err:
            raise ExecutorError(
                f"a Ray worker on node {ray.util.get_node_ip_address()} could not load function "
                f"{name}: {type(err).__name__}: {err}. Its module must be importable on every "
                "node (install it there, ship it with runtime_env, or register it with "
                "cloudpickle.register_pickle_by_value)"
            ) from None
        _loaded.clear()  # keep only the current map call's function
        _loaded[token] = fn
    return run_shipped(fn, chunk)
