"""Does a run cost what it does, or what the store has been through? Two growth benchmarks.

Run: ``python benchmarks/bench_growth.py history [--runs 200] [--step 1000]`` and
``python benchmarks/bench_growth.py size [--input 10000]``.

* ``history`` -- ``--runs`` successive runs of a one-node pipeline in one process, each adding
  ``--step`` rows; prints each run's seconds and the median of the first and last 20 runs.
  Target: last 20 median <= 1.3x the first 20's. ``--input all`` (default): each run reads
  every row so far (the input grows 200x, and hashing it with it); ``--input new``: each run
  reads only its ``--step`` new rows, so what grows is only the store's history. Next to each
  run, the same run is timed on a reference store made anew every 20 runs (so it is always in
  the first 20 runs' state); ``last20_vs_reference`` (median of run / reference over the last
  20) is the target measured without the machine's drift, which on a shared VM moves the raw
  medians by 20-50 % within the benchmark's few minutes.
* ``size`` -- a ``--input``-row input against stores holding 10k, 1M and 3M rows (built first,
  once, in a temp folder): the seconds of runs that find everything new, each in a fresh process
  with new rows. ``first`` is the run right after the build: its asset goes from the stored rows
  to ``--input`` rows (deleting them is that run's work). ``next`` is the median (and max) of
  the ``--runs`` runs after it (default 4), the steady state of a small input against a large
  store; one of them may compact the tables the build left in many files.
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


def history(runs: int, step: int, only_new: bool) -> None:
    store = orca.DeltaStore(tempfile.mkdtemp(prefix="orca-growth-") + "/store")
    # The reference: the same run on a store made anew every 20 runs (so it never has more than
    # the first 20 runs' history), timed next to each run -- on a shared machine whose speed
    # drifts by 20-50 % over a few minutes, run i / reference i measures the history alone.
    reference, young = None, 0
    seconds, references = [], []

    def timed(target: orca.Store, data: pl.DataFrame) -> float:
        start = time.perf_counter()
        pipeline(target, data).run(progress=False)
        return time.perf_counter() - start

    for i in range(runs):
        data = frame(i * step if only_new else 0, (i + 1) * step)
        if i % 20 == 0:
            reference, young = orca.DeltaStore(tempfile.mkdtemp(prefix="orca-reference-") + "/store"), 0
        ref_data = frame(young * step if only_new else 0, (young + 1) * step) if only_new else data
        young += 1
        if i % 2:  # alternate which goes first
            seconds.append(timed(store, data))
            references.append(timed(reference, ref_data))
        else:
            references.append(timed(reference, ref_data))
            seconds.append(timed(store, data))
        print(json.dumps({"run": i, "rows": data.height, "seconds": round(seconds[-1], 4),
                          "reference": round(references[-1], 4)}), flush=True)
    first, last = statistics.median(seconds[:20]), statistics.median(seconds[-20:])
    relative = [s / r for s, r in zip(seconds, references, strict=True)]
    print(json.dumps({"first20_median": round(first, 4), "last20_median": round(last, 4),
                      "ratio": round(last / first, 2),
                      "last20_vs_reference": round(statistics.median(relative[-20:]), 2),
                      "first20_vs_reference": round(statistics.median(relative[:20]), 2)}))


def size(n_input: int, runs: int) -> None:
    root = tempfile.mkdtemp(prefix="orca-size-")
    for stored in (10_000, 1_000_000, 3_000_000):
        path = f"{root}/{stored}"
        pipeline(orca.DeltaStore(path), frame(0, stored)).run(progress=False)
        seconds = []
        for k in range(1, runs + 2):  # each run a fresh process with rows never seen before
            code = (f"import sys, time; sys.path.insert(0, {sys.path[0]!r}); import bench_growth as b, orca; "
                    f"s = time.perf_counter(); b.pipeline(orca.DeltaStore({path!r}), "
                    f"b.frame({k} * 10**8, {k} * 10**8 + {n_input})).run(progress=False); "
                    f"print(time.perf_counter() - s)")
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
            seconds.append(float(out.stdout.split()[-1]))
        print(json.dumps({"stored": stored, "input": n_input, "first": round(seconds[0], 4),
                          "next_median": round(statistics.median(seconds[1:]), 4),
                          "next_max": round(max(seconds[1:]), 4), "next": [round(x, 3) for x in seconds[1:]]}),
              flush=True)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["history", "size"])
    parser.add_argument("--runs", type=int, default=None, help="history: runs (200); size: runs after the first (4)")
    parser.add_argument("--step", type=int, default=1000)
    parser.add_argument("--input", default="all", help="history: all | new; size: the input's rows (10000)")
    args = parser.parse_args()
    if args.what == "history":
        history(args.runs or 200, args.step, only_new=args.input == "new")
    else:
        size(int(args.input) if args.input != "all" else 10_000, args.runs or 4)


if __name__ == "__main__":
    main()
