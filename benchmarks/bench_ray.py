"""Dispatch throughput of `RayExecutor` on a trivial function, per chunk size.

Run: ``python benchmarks/bench_ray.py [--address HOST:PORT] [--rows 2000000] [--repeats 3]``.

Without ``--address`` it starts a local Ray with 2 CPUs; with it, it connects to an
existing cluster (e.g. the loopback cluster the tests start, see docs/executors.md).

The function adds 1 to an int64 column: its own cost (~1 ns/row) is negligible, so what is
measured is orca + Ray dispatch: slicing and copying each chunk, putting it in the object
store, scheduling the task, fetching the output back. For each fixed chunk size
(``initial_chunk_rows = max_chunk_rows``) it prints rows/s and the wall time per task
(elapsed / tasks, with 2 x workers tasks in flight), then the same for the executor's
default adaptive sizing. A second part times the pieces of one task's round trip in the
driver (put, submit+get of an empty task, get of a chunk) to say where the time goes.
Best of ``--repeats``; the median is shown too because the machine may be shared.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from orca.executors import RayExecutor
from orca.executors._chunking import own_buffers


def add_one(chunk: pa.Table) -> pa.Table:
    return pa.table({"id": pc.add(chunk.column("id"), 1)})


def run_once(executor: RayExecutor, table: pa.Table) -> tuple[float, int]:
    start = time.perf_counter()
    tasks = rows = 0
    for output in executor.map_chunks(add_one, table):
        tasks += 1
        rows += output.num_rows
    assert rows == table.num_rows
    return time.perf_counter() - start, tasks


def measure(executor: RayExecutor, table: pa.Table, repeats: int) -> tuple[float, float, int]:
    run_once(executor, table.slice(0, min(table.num_rows, 100_000)))  # warm the workers
    times, tasks = [], 0
    for _ in range(repeats):
        elapsed, tasks = run_once(executor, table)
        times.append(elapsed)
    return min(times), statistics.median(times), tasks


def round_trip_parts(ray, rows: int, repeats: int = 50) -> dict[str, float]:
    """Seconds per operation for the pieces of one chunk's trip, measured in the driver."""

    @ray.remote
    def echo(chunk):
        return chunk

    table = pa.table({"id": np.arange(rows, dtype=np.int64)})
    ray.get(echo.remote(table))  # warm
    parts = {}
    start = time.perf_counter()
    for _ in range(repeats):
        own_buffers(table.slice(0, rows))
    parts["slice + own_buffers"] = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        ray.put(table)
    parts[f"ray.put of {rows:,} rows"] = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    for _ in range(repeats):
        ray.get(echo.remote(None))
    parts["one empty task, submit + get (sequential)"] = (time.perf_counter() - start) / repeats
    start = time.perf_counter()
    ray.get([echo.remote(None) for _ in range(repeats * 10)])
    parts["one empty task, 500 submitted at once"] = (time.perf_counter() - start) / (repeats * 10)
    start = time.perf_counter()
    for _ in range(repeats):
        ray.get(echo.remote(table))
    parts[f"echo task of {rows:,} rows, submit + get"] = (time.perf_counter() - start) / repeats
    return parts


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--address", default=None, help="an existing cluster (default: local Ray)")
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--chunks", default="1000,10000,100000")
    args = parser.parse_args()

    import ray

    start = time.perf_counter()
    if args.address:
        ray.init(address=args.address, log_to_driver=False)
    else:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    workers = int(ray.cluster_resources().get("CPU", 1))
    print(f"ray.init: {time.perf_counter() - start:.1f} s; {workers} CPUs in the cluster, "
          f"{len(ray.nodes())} node(s); driver cores: {os.cpu_count()}")

    table = pa.table({"id": pa.array(np.arange(args.rows, dtype=np.int64))})
    print(f"\n{args.rows:,} int64 rows, trivial function (id + 1), best of {args.repeats}\n")
    print(f"{'chunk rows':>12} {'tasks':>6} {'rows/s (best)':>14} {'median s':>9} {'ms per task':>12}")
    for size in [int(c) for c in args.chunks.split(",")]:
        executor = RayExecutor(initial_chunk_rows=size, max_chunk_rows=size)
        best, median, tasks = measure(executor, table, args.repeats)
        print(f"{size:>12,} {tasks:>6} {args.rows / best:>14,.0f} {median:>9.2f} {1000 * best / tasks:>12.2f}")
    for label, executor in [("adaptive", RayExecutor()),
                            ("adaptive, max 500k", RayExecutor(max_chunk_rows=500_000))]:
        best, median, tasks = measure(executor, table, args.repeats)
        print(f"{label:>12} {tasks:>6} {args.rows / best:>14,.0f} {median:>9.2f} {1000 * best / tasks:>12.2f}")

    print("\nwhere one task's time goes (driver side, ms per operation):")
    for rows in (1_000, 100_000):
        for name, seconds in round_trip_parts(ray, rows).items():
            print(f"  {name:<45} {1000 * seconds:8.3f}")
    ray.shutdown()


if __name__ == "__main__":
    main()
