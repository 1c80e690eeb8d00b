"""Executors on real threads, real forkserver/spawn processes and a real local Ray."""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import os
import pickle
import subprocess
import sys
import threading
import time
from pathlib import Path

import cloudpickle
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from orca.errors import ExecutorError
from orca.executors import (
    InProcessExecutor,
    ProcessExecutor,
    RayExecutor,
    ThreadExecutor,
    run_async_rows,
)
from orca.executors._chunking import ChunkPlan, own_buffers

# Worker processes cannot import this test module by name (pytest imports it by path), so
# its functions travel by value, as a notebook's would.
cloudpickle.register_pickle_by_value(sys.modules[__name__])

KINDS = [
    "inprocess",
    "threads",
    pytest.param("processes", marks=pytest.mark.slow),
    pytest.param("spawn", marks=pytest.mark.slow),
    pytest.param("ray", marks=pytest.mark.slow),
]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture(params=KINDS)
def executor(request):
    kind = request.param
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
        return RayExecutor(max_workers=2)
    return {
        "inprocess": InProcessExecutor(),
        "threads": ThreadExecutor(max_workers=2),
        "processes": ProcessExecutor(max_workers=2),
        "spawn": ProcessExecutor(max_workers=2, start_method="spawn"),
    }[kind]


def ids(n: int) -> pa.Table:
    return pa.table({"id": pa.array(np.arange(n, dtype=np.int64))})


def double_with_pid(chunk: pa.Table) -> pa.Table:
    return pa.table(
        {
            "id": chunk.column("id"),
            "y": pc.multiply(chunk.column("id"), 2),
            "pid": pa.array([os.getpid()] * chunk.num_rows, pa.int64()),
        }
    )


def fail_at_1000(chunk: pa.Table) -> pa.Table:
    if pc.any(pc.equal(chunk.column("id"), 1000)).as_py():
        raise ValueError("infrastructure broke at id 1000")
    time.sleep(0.001 * chunk.num_rows)
    return double_with_pid(chunk)


def slow(chunk: pa.Table) -> pa.Table:
    time.sleep(0.05 * chunk.num_rows)
    return double_with_pid(chunk)


def child_pids() -> set[int]:
    """Live multiprocessing descendants of this process (spawn workers, the fork server and
    the workers it forks), from /proc. Ray's processes are left out: Ray starts and stops
    idle workers on its own."""
    parents = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            fields = stat.rsplit(")", 1)[1].split()
            if fields[0] != "Z":
                parents[int(entry.name)] = (int(fields[1]), b"multiprocessing" in cmdline)
    found, frontier = set(), {os.getpid()}
    while frontier:
        frontier = {pid for pid, (ppid, _) in parents.items() if ppid in frontier} - found
        found |= frontier
    return {pid for pid in found if parents[pid][1]}


def pool_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("orca-executor")]


def assert_workers_gone(kind: str, pids: set[int]) -> None:
    if kind == "threads":
        assert pool_threads() == []
    elif kind in ("processes", "spawn"):
        assert pids and pids.isdisjoint(child_pids())


# --- every executor ------------------------------------------------------------------


def test_every_row_comes_back_exactly_once(executor):
    outputs = list(executor.map_chunks(double_with_pid, ids(3000)))
    result = pa.concat_tables(outputs)
    assert sorted(result.column("id").to_pylist()) == list(range(3000))
    assert pc.sum(result.column("y")).as_py() == 2 * sum(range(3000))


def test_empty_table_yields_nothing(executor):
    assert list(executor.map_chunks(double_with_pid, ids(0))) == []


def test_chunks_grow_for_a_fast_function(executor):
    sizes = [t.num_rows for t in executor.map_chunks(double_with_pid, ids(40_000))]
    assert sum(sizes) == 40_000
    assert min(sizes[:2]) <= 8  # starts small
    assert max(sizes) >= 2_000  # then grows toward target_chunk_seconds
    assert len(sizes) < 100


def test_function_error_surfaces_and_pool_shuts_down(executor, request):
    kind = request.node.callspec.params["executor"]
    pids: set[int] = set()
    with pytest.raises(ValueError, match="id 1000"):
        for out in executor.map_chunks(fail_at_1000, ids(3000)):
            pids |= set(out.column("pid").to_pylist())
    assert_workers_gone(kind, pids - {os.getpid()})


def test_closing_early_cancels_pending_work(executor, request):
    kind = request.node.callspec.params["executor"]
    start = time.perf_counter()
    chunks = executor.map_chunks(slow, ids(2000))  # 100 s of work if run to the end
    first = next(chunks)
    chunks.close()
    assert time.perf_counter() - start < 15
    assert_workers_gone(kind, set(first.column("pid").to_pylist()) - {os.getpid()})


def test_with_options_returns_a_new_executor(executor):
    changed = executor.with_options(target_chunk_seconds=1.0, max_chunk_rows=10)
    assert changed is not executor and type(changed) is type(executor)
    assert (changed.target_chunk_seconds, changed.max_chunk_rows) == (1.0, 10)
    assert (executor.target_chunk_seconds, executor.max_chunk_rows) == (0.25, 50_000)
    with pytest.raises(dataclasses.FrozenInstanceError):
        executor.max_chunk_rows = 5


def test_unknown_option_lists_the_valid_ones(executor):
    with pytest.raises(ExecutorError, match="no option.*wokers.*valid options:.*max_chunk_rows"):
        executor.with_options(wokers=3)


def test_bad_option_values_are_rejected():
    with pytest.raises(ExecutorError, match="target_chunk_seconds"):
        ThreadExecutor(target_chunk_seconds=0)
    with pytest.raises(ExecutorError, match="max_workers"):
        ProcessExecutor(max_workers=0)
    with pytest.raises(ExecutorError, match="max_chunk_rows"):
        InProcessExecutor().with_options(max_chunk_rows=-1)


# --- construction does nothing ---------------------------------------------------------


def test_constructing_executors_starts_nothing():
    # (compared with what ran before: earlier tests in this process may still be reaping theirs)
    before_children, before_threads = child_pids(), set(threading.enumerate())
    before_active = set(multiprocessing.active_children())
    executors = [
        InProcessExecutor(),
        ThreadExecutor(max_workers=4).with_options(max_workers=8),
        ProcessExecutor(max_workers=2).with_options(start_method="spawn"),
        ProcessExecutor(start_method="forkserver"),
        RayExecutor(address="ray://nowhere:10001").with_options(max_workers=3),
    ]
    chunks = executors[2].map_chunks(double_with_pid, ids(10))  # not iterated: lazy
    assert child_pids() <= before_children
    assert set(threading.enumerate()) <= before_threads
    assert set(multiprocessing.active_children()) <= before_active
    chunks.close()


def test_orca_executors_imports_and_builds_without_ray():
    code = (
        "import sys; from orca.executors import RayExecutor; "
        "RayExecutor(address='auto').with_options(max_workers=2); "
        "assert 'ray' not in sys.modules, 'ray was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ})


def test_fork_is_rejected():
    with pytest.raises(ExecutorError, match="fork.*deltalake.*spawn.*forkserver"):
        ProcessExecutor(start_method="fork")
    with pytest.raises(ExecutorError, match="fork"):
        ProcessExecutor().with_options(start_method="fork")
    with pytest.raises(ExecutorError, match="'spawn' or 'forkserver'"):
        ProcessExecutor(start_method="threads")


# --- shipping functions to other processes -----------------------------------------------


def make_unpicklable():
    lock = threading.Lock()

    def locked_double(chunk: pa.Table) -> pa.Table:
        with lock:
            return double_with_pid(chunk)

    return locked_double


@pytest.mark.parametrize("make", [lambda: ProcessExecutor(max_workers=2), lambda: RayExecutor()])
def test_unpicklable_function_fails_before_any_work(make):
    before = child_pids()
    with pytest.raises(ExecutorError, match="locked_double.*cannot be pickled"):
        make().map_chunks(make_unpicklable(), ids(100))  # raises on the call, not on next()
    assert child_pids() == before


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["processes", "spawn", "ray"])
def test_lambdas_and_closures_are_shipped_with_cloudpickle(kind, request):
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    executor = {
        "processes": ProcessExecutor(max_workers=2),
        "spawn": ProcessExecutor(max_workers=2, start_method="spawn"),
        "ray": RayExecutor(max_workers=2),
    }[kind]
    offset = 7
    fn = lambda chunk: pa.table({"z": pc.add(chunk.column("id"), offset)})  # noqa: E731
    result = pa.concat_tables(executor.map_chunks(fn, ids(500)))
    assert sorted(result.column("z").to_pylist()) == [i + 7 for i in range(500)]


def test_a_function_that_cannot_load_in_the_worker_names_itself():
    import types

    module = types.ModuleType("orca_not_importable_anywhere")
    exec("def ghost(chunk):\n    return chunk\n", module.__dict__)
    sys.modules[module.__name__] = module  # importable here, not in a worker
    try:
        with pytest.raises(ExecutorError, match="could not load function.*ghost"):
            list(ProcessExecutor(max_workers=1).map_chunks(module.ghost, ids(10)))
    finally:
        del sys.modules[module.__name__]


# --- compact chunk buffers ------------------------------------------------------------


@pytest.fixture(scope="module")
def big_table() -> pa.Table:
    n = 1_000_000
    return pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64)),
            "name": pc.binary_join_element_wise(
                "row-", pc.cast(pa.array(np.arange(n)), pa.string()), ""
            ),
            "pair": pa.FixedSizeListArray.from_arrays(pa.array(np.arange(2 * n)), 2).cast(
                pa.list_(pa.int64())
            ),
        }
    )


def test_slices_are_copied_to_compact_buffers(big_table):
    chunk = big_table.slice(500_000, 1000)
    assert len(pickle.dumps(chunk)) > 10_000_000  # the problem (apache/arrow GH-26685)
    shipped = own_buffers(chunk)
    assert len(pickle.dumps(shipped)) < 100_000
    assert shipped.equals(chunk)
    assert own_buffers(shipped) is shipped  # already compact: no second copy


def pickled_size(chunk: pa.Table) -> pa.Table:
    return pa.table({"rows": [chunk.num_rows], "bytes": [len(pickle.dumps(chunk))]})


@pytest.mark.slow
def test_chunks_shipped_to_processes_are_compact(big_table):
    executor = ProcessExecutor(max_workers=2, initial_chunk_rows=1000, max_chunk_rows=1000)
    # a slice of the 1M-row table: each 1,000-row chunk must arrive without its parent
    sample = big_table.slice(400_000, 20_000)
    sizes = pa.concat_tables(executor.map_chunks(pickled_size, sample))
    assert pc.max(sizes.column("rows")).as_py() == 1000
    assert pc.max(sizes.column("bytes")).as_py() < 100_000


# --- adaptive chunk sizing ------------------------------------------------------------


def test_chunk_plan_grows_shrinks_and_splits_the_tail():
    plan = ChunkPlan(target_seconds=0.25, max_rows=50_000, rows=8, workers=1)
    plan.record(8, 8e-6)  # 1 us per row: grow, at most 8x per step
    assert plan.rows == 64
    for _ in range(10):
        plan.record(plan.rows, plan.rows * 1e-6)
    assert plan.rows == 50_000  # capped
    slow_plan = ChunkPlan(target_seconds=0.25, max_rows=50_000, rows=8, workers=1)
    slow_plan.record(8, 8.0)  # 1 s per row
    assert slow_plan.rows == 1
    assert slow_plan.next_rows(remaining=100) == 1
    wide = ChunkPlan(target_seconds=0.25, max_rows=50_000, rows=1000, workers=2)
    assert wide.next_rows(remaining=100_000) == 1000
    assert wide.next_rows(remaining=400) == 100  # tail split so both workers finish together


def test_slow_function_gets_small_chunks_for_frequent_progress():
    executor = InProcessExecutor(target_chunk_seconds=0.05, initial_chunk_rows=4)
    sizes = [t.num_rows for t in executor.map_chunks(lambda t: slow(t), ids(12))]
    assert sizes[0] == 4 and max(sizes[1:]) == 1  # 0.05 s per row -> 1 row per chunk


# --- exceptions across the process boundary -------------------------------------------


class CustomError(Exception):
    pass


def raise_custom(chunk: pa.Table) -> pa.Table:
    raise CustomError(f"chunk of {chunk.num_rows}")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["processes", "ray"])
def test_exception_keeps_its_type(kind, request):
    if kind == "ray":
        request.getfixturevalue("ray_cluster")
    executor = ProcessExecutor(max_workers=2) if kind == "processes" else RayExecutor()
    with pytest.raises(CustomError, match="chunk of"):
        list(executor.map_chunks(raise_custom, ids(100)))


# --- async helper ---------------------------------------------------------------------


def test_run_async_rows_runs_concurrently_in_input_order():
    active = peak = 0

    async def work(x: int) -> int:
        nonlocal active, peak
        active += 1
        peak = max(peak, active)
        await asyncio.sleep(0.1)
        active -= 1
        if x == 13:
            raise KeyError(x)
        return x * x

    start = time.perf_counter()
    results = run_async_rows(work, list(range(50)), max_concurrency=10)
    assert time.perf_counter() - start < 5  # 50 x 0.1 s sequentially; ~0.5 s when concurrent
    assert peak == 10
    assert isinstance(results[13], KeyError)
    assert [r for i, r in enumerate(results) if i != 13] == [i * i for i in range(50) if i != 13]


def test_run_async_rows_works_inside_a_running_loop():  # e.g. a Jupyter cell
    async def add_one(x: int) -> int:
        await asyncio.sleep(0.01)
        return x + 1

    async def inside() -> list[int]:
        return run_async_rows(add_one, [1, 2, 3], max_concurrency=2)

    assert asyncio.run(inside()) == [2, 3, 4]
    with pytest.raises(ExecutorError, match="max_concurrency"):
        run_async_rows(add_one, [1], max_concurrency=0)
