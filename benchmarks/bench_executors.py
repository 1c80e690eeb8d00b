"""Throughput of each executor on a CPU-bound pure-Python function of ~1 ms per row.

Run: ``python benchmarks/bench_executors.py [--rows 4000] [--repeats 3] [--no-ray]``.
Prints rows/s and the speedup over in-process for: in-process, threads(2), processes(2)
with forkserver (first call, which starts the fork server, and later calls) and spawn,
and Ray(2) on a local cluster (``ray.init`` time excluded, reported separately). Each
figure is the best of ``--repeats`` runs; the median is shown alongside because the
machine may be shared.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time

import pyarrow as pa

from orca.executors import InProcessExecutor, ProcessExecutor, RayExecutor, ThreadExecutor


def spin(loops: int) -> int:
    total = 0
    for i in range(loops):
        total += i
    return total


def calibrate_1ms() -> int:
    """Loop count that takes ~1 ms of CPU here (fixed work, so a busy machine slows it)."""
    loops = 10_000
    while True:
        start = time.process_time()
        spin(loops)
        elapsed = time.process_time() - start
        if elapsed > 0.05:
            return int(loops * 0.001 / elapsed)
        loops *= 2


def busy(loops: int, chunk: pa.Table) -> pa.Table:
    """~1 ms of pure-Python CPU work per row (holds the GIL)."""
    out = []
    for value in chunk.column("x").to_pylist():
        spin(loops)
        out.append(value * 2)
    return pa.table({"x": chunk.column("x"), "y": out})


def run_once(executor, fn, table: pa.Table) -> tuple[float, int]:
    start = time.perf_counter()
    chunks = 0
    rows = 0
    for output in executor.map_chunks(fn, table):
        chunks += 1
        rows += output.num_rows
    assert rows == table.num_rows
    return time.perf_counter() - start, chunks


def report(name: str, runs: list[tuple[float, int]], rows: int, base: float | None) -> float:
    best = min(seconds for seconds, _ in runs)
    median = statistics.median(seconds for seconds, _ in runs)
    rate = rows / best
    speedup = f"{rate / base:5.2f}x" if base else " 1.00x"
    print(
        f"{name:<28} {rate:8.0f} rows/s  {speedup}  "
        f"(best {best:.2f} s, median {median:.2f} s, {runs[0][1]} chunks)"
    )
    return rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-ray", action="store_true")
    args = parser.parse_args()
    loops = calibrate_1ms()
    fn = functools.partial(busy, loops)
    table = pa.table({"x": list(range(args.rows))})
    print(
        f"{args.rows} rows x ~1 ms ({loops} loop iterations), best of {args.repeats}, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}"
    )
    executors = {
        "in-process": InProcessExecutor(),
        "threads(2)": ThreadExecutor(max_workers=2),
        "processes(2) forkserver": ProcessExecutor(max_workers=2, start_method="forkserver"),
        "processes(2) spawn": ProcessExecutor(max_workers=2, start_method="spawn"),
    }
    first = {
        "processes(2) forkserver 1st": [run_once(executors["processes(2) forkserver"], fn, table)]
    }
    if not args.no_ray:
        import ray

        start = time.perf_counter()
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
        print(f"(ray.init of a local 2-CPU cluster: {time.perf_counter() - start:.1f} s, excluded)")
        executors["ray(2)"] = RayExecutor(max_workers=2)
        first["ray(2) 1st"] = [run_once(executors["ray(2)"], fn, table)]
    # round-robin, so a change in machine load affects every executor alike
    runs: dict[str, list[tuple[float, int]]] = {name: [] for name in executors}
    for _ in range(args.repeats):
        for name, executor in executors.items():
            runs[name].append(run_once(executor, fn, table))
    base = report("in-process", runs.pop("in-process"), args.rows, None)
    for name, timings in {**runs, **first}.items():
        report(name, timings, args.rows, base)
    if not args.no_ray:
        ray.shutdown()


if __name__ == "__main__":
    main()
