"""Two-node pipeline with provenance, and executors on a CPU-bound pure-Python function.

Run: ``python benchmarks/bench_pipeline.py [--rows 1000000] [--cpu-rows 8000]``.

Scenarios, each in a fresh process on a fresh (or the previous) Delta store:

* ``first``  -- first run of a two-node pipeline over N rows (tag ``id``; packet ``x``, ``y``;
  ``z = x * 2 + y`` then ``w = z + 1``): hash, compute, store results and provenance;
* ``rerun``  -- full cache-hit rerun, all rows of the last node yielded as one Arrow table;
* ``cpu``    -- in-process vs ``ThreadExecutor(2)`` vs ``ProcessExecutor(2)`` on a function that
  spends ~1 ms of pure-Python CPU per packet (fresh store each); ``processes`` includes starting
  the fork server (~0.8 s, mostly ``import orca`` in it), ``processes_warm`` runs in a session
  where it is already up.

Targets on the 2-core machine: first >= 250,000 rows/s; rerun <= 1.5 s; process executor
>= 1.8x the in-process rate.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np
import polars as pl
from bench_executors import calibrate_1ms, spin  # same ~1 ms workload as the executor benchmark

import orca


@orca.function_pod(output_keys="z")
def combine(x: float, y: int) -> float:
    return x * 2 + y


@orca.function_pod(output_keys="w")
def bump(z: float) -> float:
    return z + 1


@orca.function_pod(output_keys="out")
def burn(x: int, loops: int) -> int:
    spin(loops)
    return x


def two_nodes(store: orca.Store, n: int) -> orca.Pipeline:
    rng = np.random.default_rng(0)
    frame = pl.DataFrame({"id": np.arange(n), "x": rng.random(n), "y": rng.integers(0, 1000, n)})
    pipeline = orca.Pipeline("bench", store=store)
    with pipeline:
        bump.pod(combine.pod(orca.PolarsSource(frame, tags=["id"], source_id="bench")))
    return pipeline


def cpu_seconds() -> float:
    """CPU time of this process so far, every thread (user + system): on two cores a run's wall
    time swings with the machine, its CPU time much less."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def scenario(name: str, store_path: str, n: int) -> dict:
    if name in ("first", "rerun"):
        pipeline = two_nodes(orca.DeltaStore(store_path), n)
        start, cpu = time.perf_counter(), cpu_seconds()
        result = pipeline.run(progress=False)
        table = pipeline["bump"].output.to_arrow()
        elapsed, cpu = time.perf_counter() - start, cpu_seconds() - cpu
        assert table.num_rows == n, table.num_rows
        computed = sum(c.computed for c in result.counts.values())
        return {"scenario": name, "rows": n, "seconds": round(elapsed, 3), "rows_per_s": round(n / elapsed),
                "computed": computed, "peak_rss_mb": round(peak_rss_mb()), "cpu_s": round(cpu, 3)}
    executor = {"inprocess": orca.InProcessExecutor(), "threads": orca.ThreadExecutor(max_workers=2),
                "processes": orca.ProcessExecutor(max_workers=2),
                "processes_warm": orca.ProcessExecutor(max_workers=2)}[name]
    loops = calibrate_1ms()
    if name == "processes_warm":  # a long-lived session: the fork server is already up
        warm = orca.Pipeline("warm", store=orca.MemoryStore())
        with warm:
            burn.pod(orca.DictSource([{"i": i, "x": i, "loops": 1} for i in range(10)], tags=["i"], source_id="w"))
        warm.run(executor=executor, progress=False)
    pipeline = orca.Pipeline("cpu", store=orca.DeltaStore(store_path))
    with pipeline:
        burn.pod(orca.DictSource([{"i": i, "x": i, "loops": loops} for i in range(n)], tags=["i"], source_id="cpu"))
    start = time.perf_counter()
    result = pipeline.run(executor=executor, progress=False)
    elapsed = time.perf_counter() - start
    assert result.counts["burn"].computed == n
    return {"scenario": name, "rows": n, "seconds": round(elapsed, 3), "rows_per_s": round(n / elapsed)}


def run_fresh(name: str, store_path: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, store_path, str(n)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--cpu-rows", type=int, default=8_000)
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        name, store_path, n = args.child
        print(json.dumps(scenario(name, store_path, int(n))))
        return
    with tempfile.TemporaryDirectory() as tmp:
        for name in ("first", "rerun"):
            print(run_fresh(name, f"{tmp}/pipeline", args.rows))
        rates = {}
        for name in ("inprocess", "threads", "processes", "processes_warm"):
            report = run_fresh(name, f"{tmp}/{name}", args.cpu_rows)
            rates[name] = report["rows_per_s"]
            print(report)
        for name in ("threads", "processes", "processes_warm"):
            print(f"{name}: {rates[name] / rates['inprocess']:.2f}x in-process")


if __name__ == "__main__":
    main()
