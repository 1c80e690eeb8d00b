"""Peak RSS of a one-node pipeline at 1M, 3M and 10M rows: first run and full cache-hit rerun.

Run: ``python benchmarks/bench_memory.py [--sizes 1000000,3000000,10000000] [--memory-rows N]``
(``--memory-rows``: the pipeline runs with ``memory_rows=N``, its input taken N rows at a time).

Workload W1 (as in ``bench_cached_pod.py``): tag ``id`` int64, packet ``x`` float64 and ``y``
int64, output ``z = x * 2 + y``, as a one-node ``orca.Pipeline`` over a ``PolarsSource`` on a
``DeltaStore`` (like ``bench_growth.py``'s). For each size, in a fresh store in a temp folder,
two scenarios, each in a fresh process: ``first-N`` (hash, compute, store results and
provenance) and ``rerun-N`` (everything found). The child:

1. imports numpy, polars, orca and the modules a run loads (so their memory is not the run's)
   and notes its resident set (``baseline_rss_mb``, VmRSS);
2. builds the input frame and notes the resident set again: ``input_rss_mb`` is what the input
   added to it, ``input_mb`` the frame's own ``estimated_size``;
3. runs the pipeline: ``seconds``, and ``peak_rss_mb`` the process's peak RSS so far
   (``ru_maxrss``, input and imports included), ``run_rss_mb`` the peak less the RSS before it;
4. reads the node's whole output as one Arrow table: ``output_s``, and
   ``peak_with_output_mb`` the peak RSS including it.

Each run prints one JSON line with ``scenario`` and ``seconds`` (readable by ``interleave.py``);
the summary after them is plain text. Target: at 10M rows the first run and the rerun each
peak within 3 GB (taken as 3 GiB, ``ru_maxrss`` <= 3072 MiB).

The parent imports nothing heavy and builds nothing: on Linux a child started by ``subprocess``
inherits its parent's peak RSS in ``ru_maxrss`` (it is kept across ``exec``), so a heavy parent
would raise every child's figure.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time

SELF = os.path.abspath(__file__)
TARGET_MB = 3 * 1024  # at the largest size (10M rows), first run and rerun alike
TARGET_ROWS = 10_000_000


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def rss_mb() -> float:
    """The resident set now (VmRSS), in MiB."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def w1(rows: int):
    """The rows of ``bench_cached_pod.source(rows, 0)``, as a polars DataFrame."""
    import numpy as np
    import polars as pl

    ids = np.arange(rows, dtype=np.int64)
    x = np.random.default_rng(0).random(rows)
    y = np.random.default_rng(1).integers(0, 1000, rows, dtype=np.int64)
    return pl.DataFrame({"id": ids, "x": x, "y": y})


def scenario(what: str, rows: int, store_path: str, memory_rows: int | None = None) -> dict:
    import deltalake  # noqa: F401
    import numpy as np  # noqa: F401
    import polars as pl  # noqa: F401

    import orca
    import orca.engine  # noqa: F401
    import orca.hashing  # noqa: F401
    import orca.stores.delta  # noqa: F401

    @orca.function_pod(output_keys="z")
    def affine(x: float, y: int) -> float:
        return x * 2 + y

    baseline = rss_mb()
    start = time.perf_counter()
    frame = w1(rows)
    source_s = time.perf_counter() - start
    with_input = rss_mb()
    input_mb = frame.estimated_size() / 2**20

    pipeline = orca.Pipeline("memory", store=orca.DeltaStore(store_path))
    with pipeline:
        affine.pod(orca.PolarsSource(frame, tags=["id"], source_id="w1"))
    del frame  # the source holds it
    start = time.perf_counter()
    result = pipeline.run(progress=False, memory_rows=memory_rows)
    seconds = time.perf_counter() - start
    peak = peak_rss_mb()
    computed = sum(c.computed for c in result.counts.values())
    assert computed == (rows if what == "first" else 0), computed

    start = time.perf_counter()
    table = pipeline["affine"].output.to_arrow()
    output_s = time.perf_counter() - start
    assert table.num_rows == rows, table.num_rows
    return {"scenario": f"{what}-{rows}", "rows": rows, "memory_rows": memory_rows, "seconds": round(seconds, 3),
            "peak_rss_mb": round(peak), "baseline_rss_mb": round(baseline),
            "input_rss_mb": round(with_input - baseline, 1), "input_mb": round(input_mb, 1),
            "run_rss_mb": round(peak - with_input), "output_s": round(output_s, 3),
            "peak_with_output_mb": round(peak_rss_mb()), "computed": computed,
            "source_s": round(source_s, 3), "rows_per_s": round(rows / seconds)}


def run_child(what: str, rows: int, store_path: str, memory_rows: int | None) -> dict:
    done = subprocess.run([sys.executable, SELF, "--child", what, str(rows), store_path, str(memory_rows or 0)],
                          capture_output=True, text=True)
    if done.returncode:
        sys.stderr.write(done.stderr)
        raise SystemExit(f"child {what} {rows} failed")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000000,3000000,10000000",
                        help="comma-separated row counts")
    parser.add_argument("--memory-rows", type=int, default=None,
                        help="run with Pipeline.run(memory_rows=N): inputs taken N rows at a time")
    parser.add_argument("--child", nargs=4, metavar=("WHAT", "ROWS", "STORE", "MEMORY_ROWS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        what, rows, store_path, memory_rows = args.child
        print(json.dumps(scenario(what, int(rows), store_path, int(memory_rows) or None)))
        return
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results = []
    with tempfile.TemporaryDirectory(prefix="orca-memory-") as root:
        for rows in sizes:
            for what in ("first", "rerun"):
                r = run_child(what, rows, os.path.join(root, str(rows)), args.memory_rows)
                results.append(r)
                print(json.dumps(r), flush=True)
    print(f"{'scenario':>16} {'seconds':>8} {'peak MB':>8} {'input MB':>9} {'run MB':>7} "
          f"{'+output MB':>10}")
    for r in results:
        print(f"{r['scenario']:>16} {r['seconds']:8.2f} {r['peak_rss_mb']:8d} {r['input_rss_mb']:9.1f} "
              f"{r['run_rss_mb']:7d} {r['peak_with_output_mb']:10d}")
    for r in results:
        if r["rows"] == TARGET_ROWS:
            verdict = "ok" if r["peak_rss_mb"] <= TARGET_MB else "OVER"
            print(f"{r['scenario']}: peak {r['peak_rss_mb']} MB, target <= {TARGET_MB} MB  {verdict}")
    if TARGET_ROWS not in sizes:
        print(f"(the target, <= {TARGET_MB} MB peak, is for {TARGET_ROWS:,} rows, not run here)")


if __name__ == "__main__":
    main()
