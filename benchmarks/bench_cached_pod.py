"""A cached function pod over 1M rows: first run, full cache-hit rerun, rerun with 1 % new rows.

Run: ``python benchmarks/bench_cached_pod.py [--rows 1000000] [--store DIR] [--profile]``.
Each scenario runs in a fresh process (so caches and peak RSS are its own) against one
``DeltaStore``: tag ``id`` int64, packet ``x`` float64 and ``y`` int64, ``z = x * 2 + y``.
The timed part is collecting the cached pod's output stream (hash, look up, compute, commit,
join the outputs back); building the source is timed separately. ``--profile`` prints the top
of a cProfile of ``cached._run(stream)`` for each scenario.
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
import pyarrow as pa

import orca


@orca.function_pod(output_keys="z")
def affine(x: float, y: int) -> float:
    return x * 2 + y


def source(rows: int, new: int) -> orca.Source:
    n = rows + new  # rows 0..rows-1 are the same in every scenario; the others are new
    ids = np.arange(n, dtype=np.int64)
    x = np.random.default_rng(0).random(n)
    y = np.random.default_rng(1).integers(0, 1000, n, dtype=np.int64)
    return orca.ArrowSource(pa.table({"id": ids, "x": x, "y": y}), tags=["id"], source_id="bench")


def scenario(rows: int, new: int, store_path: str, profile: bool) -> dict:
    start = time.perf_counter()
    src = source(rows, new)
    built = time.perf_counter() - start
    cached = affine.pod.cached(orca.DeltaStore(store_path))
    start = time.perf_counter()
    if profile:
        import cProfile
        import pstats

        profiler = cProfile.Profile()
        profiler.enable()
        out = cached._run(src)
        profiler.disable()
        pstats.Stats(profiler, stream=sys.stderr).sort_stats("cumulative").print_stats(25)
    else:
        out = cached(src).to_polars()
    seconds = time.perf_counter() - start
    assert out.height == rows + new, out.height
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"rows": rows + new, "source_s": built, "seconds": seconds,
            "rows_per_s": (rows + new) / seconds, "peak_rss_mb": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--store", default=None)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--json", action="store_true", help="print one JSON line per scenario")
    parser.add_argument("--one", nargs=3, metavar=("ROWS", "NEW", "STORE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        rows, new, store = args.one
        print(json.dumps(scenario(int(rows), int(new), store, args.profile)))
        return
    store = args.store or tempfile.mkdtemp(prefix="orca-bench-") + "/store"
    plan = [("first run", 0), ("cache-hit rerun", 0), ("rerun +1% new", args.rows // 100)]
    if not args.json:
        print(f"{args.rows:,} rows, store {store}")
    for label, new in plan:
        command = [sys.executable, __file__, "--one", str(args.rows), str(new), store]
        if args.profile:
            command.append("--profile")
        done = subprocess.run(command, check=True, capture_output=True, text=True)
        if args.profile:
            print(done.stderr, file=sys.stderr)
        r = json.loads(done.stdout.strip().splitlines()[-1])
        if args.json:  # one JSON line per scenario (benchmarks/interleave.py reads them)
            print(json.dumps({"scenario": label, **r}))
            continue
        print(f"{label:16} {r['seconds']:7.2f} s  {r['rows_per_s']:>12,.0f} rows/s  "
              f"peak RSS {r['peak_rss_mb']:6.0f} MB  (source built in {r['source_s']:.2f} s)")


if __name__ == "__main__":
    main()
