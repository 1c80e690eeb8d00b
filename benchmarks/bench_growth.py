"""Does a run cost what it does, or what the store has been through? Two growth benchmarks.

Run: ``python benchmarks/bench_growth.py history [--runs 200] [--step 1000]`` and
``python benchmarks/bench_growth.py size [--input 10000]``.

* ``history`` -- ``--runs`` successive runs of a one-node pipeline in one process, each adding
  ``--step`` rows; prints each run's seconds and the median of the first and last 20 runs.
  Target: last 20 median <= 1.3x the first 20's.
* ``size`` -- a ``--input``-row input against stores holding 10k, 1M and 3M rows (built first,
  once, in a temp folder): the seconds of a run that finds everything new, in a fresh process.
  Target: 3M-row store within 2x of the 10k-row store.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import polars as pl

import orca


@orca.function_pod(output_keys="z")
def affine(x: float, y: int) -> float:
    return x * 2 + y


def frame(start: int, stop: int) -> pl.DataFrame:
    ids = np.arange(start, stop)
    return pl.DataFrame({"id": ids, "x": ids * 0.5, "y": ids % 1000})


def pipeline(store: orca.Store, data: pl.DataFrame) -> orca.Pipeline:
    p = orca.Pipeline("growth", store=store)
    with p:
        affine.pod(orca.PolarsSource(data, tags=["id"], source_id="growth"))
    return p


def history(runs: int, step: int) -> None:
    store = orca.DeltaStore(tempfile.mkdtemp(prefix="orca-growth-") + "/store")
    seconds = []
    for i in range(runs):
        data = frame(0, (i + 1) * step)
        start = time.perf_counter()
        pipeline(store, data).run(progress=False)
        seconds.append(time.perf_counter() - start)
        print(json.dumps({"run": i, "rows": data.height, "seconds": round(seconds[-1], 4)}), flush=True)
    first, last = statistics.median(seconds[:20]), statistics.median(seconds[-20:])
    print(json.dumps({"first20_median": round(first, 4), "last20_median": round(last, 4),
                      "ratio": round(last / first, 2)}))


def size(n_input: int) -> None:
    root = tempfile.mkdtemp(prefix="orca-size-")
    for stored in (10_000, 1_000_000, 3_000_000):
        path = f"{root}/{stored}"
        pipeline(orca.DeltaStore(path), frame(0, stored)).run(progress=False)
        code = ("import sys, time; sys.path.insert(0, %r); import bench_growth as b, orca; "
                "s = time.perf_counter(); b.pipeline(orca.DeltaStore(%r), b.frame(10**8, 10**8 + %d)).run(progress=False);"
                " print(time.perf_counter() - s)") % (sys.path[0], path, n_input)
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        print(json.dumps({"stored": stored, "input": n_input, "seconds": round(float(out.stdout.split()[-1]), 4)}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["history", "size"])
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--input", type=int, default=10_000)
    args = parser.parse_args()
    history(args.runs, args.step) if args.what == "history" else size(args.input)


if __name__ == "__main__":
    main()
