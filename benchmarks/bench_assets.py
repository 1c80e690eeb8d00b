"""What assets cost: the two-node pipeline's asset writes at 1M rows, and what the rerun saves.

Run: ``python benchmarks/bench_assets.py [--rows 1000000] [--rounds 3]``.

The pipeline of ``bench_pipeline.py`` (tag ``id``; ``z = x * 2 + y`` then ``w = z + 1``), each
run in a fresh process on one store, in this order per round (a fresh store per round):

* ``first`` -- the first run: both assets are written whole;
* ``rerun`` -- nothing new: no asset is written, and each node's status is read from its asset;
* ``change`` -- 1 % of the rows edited (``y`` of every 100th row) and 1 % added: each asset
  deletes 10k rows and inserts 20k;
* ``after`` -- nothing new again, after the change.

For each run: ``seconds`` (the run and reading the last node's output as Arrow, as
``bench_pipeline.py`` times it), ``asset_s`` (seconds spent in the asset writes, summed over both
nodes; each runs on a second thread, the last node's at the end of the run) and
``materialisations`` (asset versions the run made). Lines are JSON objects (readable by
``interleave.py``); a summary (min / median / max per scenario) follows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time

SCENARIOS = ("first", "rerun", "change", "after")


def child(name: str, store_path: str, n: int) -> dict:
    import numpy as np
    import polars as pl
    from bench_pipeline import bump, combine

    import orca
    import orca.engine

    spent = [0.0]
    materialise = orca.engine._materialise

    def timed(*args, **kwargs):  # (the asset write of one node, on the asset thread)
        start = time.perf_counter()
        try:
            return materialise(*args, **kwargs)
        finally:
            spent[0] += time.perf_counter() - start

    orca.engine._materialise = timed
    rng = np.random.default_rng(0)
    frame = pl.DataFrame({"id": np.arange(n), "x": rng.random(n), "y": rng.integers(0, 1000, n)})
    if name in ("change", "after"):
        step = 100
        edited = frame.with_columns(pl.when(pl.col("id") % step == 0).then(pl.col("y") + 1)
                                    .otherwise(pl.col("y")).alias("y"))
        added = pl.DataFrame({"id": np.arange(n, n + n // step), "x": rng.random(n // step),
                              "y": rng.integers(0, 1000, n // step)})
        frame = pl.concat([edited, added])
    pipeline = orca.Pipeline("bench", store=orca.DeltaStore(store_path))
    with pipeline:
        bump.pod(combine.pod(orca.PolarsSource(frame, tags=["id"], source_id="bench")))
    start = time.perf_counter()
    result = pipeline.run(progress=False)
    table = pipeline["bump"].output.to_arrow()
    elapsed = time.perf_counter() - start
    assert table.num_rows == frame.height
    made = sum(pipeline.history(label).filter(pl.col("run_id") == result.run_id).height
               for label in ("combine", "bump"))
    computed = sum(c.computed for c in result.counts.values())
    return {"scenario": name, "rows": frame.height, "seconds": round(elapsed, 3), "asset_s": round(spent[0], 3),
            "computed": computed, "materialisations": made}


def run_child(name: str, store_path: str, n: int) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", name, store_path, str(n)],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--child", nargs=3, metavar=("SCENARIO", "STORE", "ROWS"))
    args = parser.parse_args()
    if args.child:
        name, store_path, n = args.child
        print(json.dumps(child(name, store_path, int(n))))
        return
    seen: dict[str, list[dict]] = {name: [] for name in SCENARIOS}
    for _ in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            for name in SCENARIOS:
                report = run_child(name, f"{tmp}/store", args.rows)
                seen[name].append(report)
                print(json.dumps(report), flush=True)
    for name, reports in seen.items():
        for field in ("seconds", "asset_s"):
            values = sorted(r[field] for r in reports)
            print(f"{name:>7} {field:>8}: min {values[0]:.3f}  median {statistics.median(values):.3f}  "
                  f"max {values[-1]:.3f}")


if __name__ == "__main__":
    main()
