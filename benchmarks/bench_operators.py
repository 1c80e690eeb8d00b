"""Benchmark: join two 1,000,000-row streams on one int64 tag column, collected to Arrow.

Run: ``python benchmarks/bench_operators.py``. Building the sources (hashing 2 x 1M record
ids) is timed separately and is not part of the join figure. Target: join <= 1 s on 2 cores.
"""

from __future__ import annotations

import time

import numpy as np
import polars as pl

import orca
from orca.operators import Join

N = 1_000_000
REPEATS = 5


def best_of(fn, repeats: int = REPEATS) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    rng = np.random.default_rng(0)
    left_ids, right_ids = rng.permutation(N), rng.permutation(N)
    start = time.perf_counter()
    a = orca.PolarsSource(pl.DataFrame({"id": left_ids, "x": rng.random(N)}), tags=["id"], source_id="a")
    b = orca.PolarsSource(pl.DataFrame({"id": right_ids, "y": rng.random(N)}), tags=["id"], source_id="b")
    print(f"build two {N:,}-row sources (record id hashing): {time.perf_counter() - start:.2f} s")

    joined = Join()(a, b)
    assert joined.to_arrow().num_rows == N
    user = best_of(lambda: Join()(a, b).to_arrow())
    full = best_of(lambda: Join()(a, b).to_arrow(include_system=True))
    print(f"Join()(a, b).to_arrow()                    : {user:.3f} s  (best of {REPEATS})")
    print(f"Join()(a, b).to_arrow(include_system=True) : {full:.3f} s  (+ system tags, source info)")

    # What keeping the left order costs, measured on the raw Polars join of the same frames.
    fa, fb = a.lazy(include_system=True), b.lazy(include_system=True)
    for order in ("left", None):
        t = best_of(lambda order=order: fa.join(fb, on="id", nulls_equal=True, maintain_order=order)
                    .collect().to_arrow())
        print(f"raw polars join, maintain_order={order!r:6}      : {t:.3f} s")


if __name__ == "__main__":
    main()
