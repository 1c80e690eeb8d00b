"""Throughput of orca.hashing.hash_packets on 1,000,000 rows (int64, float64, 16-char strings).

Run: ``python benchmarks/bench_hashing.py [rows]``; prints the best of 3 runs in rows/s.
"""

from __future__ import annotations

import sys
import time

import numpy as np
import pyarrow as pa

from orca.hashing import hash_packets


def build_table(rows: int, seed: int = 0) -> pa.Table:
    rng = np.random.default_rng(seed)
    letters = rng.integers(ord("a"), ord("z") + 1, size=(rows, 16), dtype=np.uint8)
    strings = pa.StringArray.from_buffers(
        rows, pa.py_buffer(np.arange(0, 16 * (rows + 1), 16, dtype=np.int32)), pa.py_buffer(letters)
    )
    return pa.table(
        {
            "id": pa.array(rng.integers(-(2**62), 2**62, rows), pa.int64()),
            "score": pa.array(rng.standard_normal(rows), pa.float64()),
            "name": strings,
        }
    )


def main(rows: int = 1_000_000) -> float:
    table = build_table(rows)
    hash_packets(table.slice(0, 1000))  # warm up
    timings = []
    for _ in range(3):
        start = time.perf_counter()
        hashes = hash_packets(table)
        timings.append(time.perf_counter() - start)
    assert len(hashes) == rows and hashes.null_count == 0
    best = min(timings)
    print(
        f"hash_packets: {rows:,} rows (int64, float64, 16-char string) in {best:.3f} s "
        f"(best of 3) = {rows / best:,.0f} rows/s"
    )
    return rows / best


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
