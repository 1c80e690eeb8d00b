"""Append + deduplicating reads vs idempotent insert-if-absent merge, on a keyed Delta table.

Run: ``python benchmarks/bench_store_writes.py [--batches 10] [--rows 100000]``.
Writes ``batches`` batches of ``rows`` rows keyed by a 32-hex-char ``__packet_hash`` into a fresh
table, once with plain appends and once with ``merge(...).when_not_matched_insert_all()``;
with 0 % and 1 % of each batch repeating keys already written. Then times the read side that
append-only pays for: a deduplicated scan, ``DeltaStore.keys`` cold and warm, and ``lookup``.
"""

from __future__ import annotations

import argparse
import tempfile
import time

import numpy as np
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

from orca.stores import DeltaStore


def batch(rng: np.random.Generator, rows: int, old: list[str], overlap: float) -> pa.Table:
    repeat = int(rows * overlap) if old else 0
    fresh = [f"{x:032x}" for x in rng.integers(0, 2**63, rows - repeat, dtype=np.int64)]
    keys = fresh + list(rng.choice(old, repeat)) if repeat else fresh
    old.extend(fresh)
    return pa.table(
        {
            "__packet_hash": pa.array(keys, pa.string()),
            "value": pa.array(rng.random(rows)),
            "__run_id": pa.array(["run-1"] * rows, pa.string()),
            "__invalidated_at": pa.nulls(rows, pa.timestamp("us", tz="UTC")),
        }
    )


def timed_writes(path: str, batches: list[pa.Table], merge: bool) -> float:
    DeltaTable.create(path, batches[0].schema)
    table = DeltaTable(path)
    start = time.perf_counter()
    for data in batches:
        if merge:
            merger = table.merge(
                data,
                predicate='t."__packet_hash" = s."__packet_hash"',
                source_alias="s",
                target_alias="t",
            )
            merger.when_not_matched_insert_all().execute()
        else:
            write_deltalake(table, data, mode="append")
    return time.perf_counter() - start


def clock(action) -> float:
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def read_side(root: str, batches: list[pa.Table]) -> dict[str, float]:
    store = DeltaStore(root, max_rows=10**9)
    for data in batches:
        store.append("results/f/h", data, key=["__packet_hash"])
        store.flush()  # one commit per batch, as a driver would
    probe = pl.Series(batches[-1].column("__packet_hash").to_pylist()[:10_000])
    reader = DeltaStore(root)
    return {
        "plain scan (collect)": clock(
            lambda: reader.scan("results/f/h", include_invalidated=True).collect()
        ),
        "dedup scan (collect)": clock(lambda: reader.scan("results/f/h").collect()),
        "keys() cold": clock(lambda: reader.keys("results/f/h")),
        "keys() warm, unchanged": clock(lambda: reader.keys("results/f/h")),
        "lookup 10k keys": clock(lambda: reader.lookup("results/f/h", probe)),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rows", type=int, default=100_000)
    args = parser.parse_args()
    for overlap in (0.0, 0.01):
        rng = np.random.default_rng(0)
        old: list[str] = []
        batches = [batch(rng, args.rows, old, overlap) for _ in range(args.batches)]
        with tempfile.TemporaryDirectory() as tmp:
            append = timed_writes(f"{tmp}/append", batches, merge=False)
            merge = timed_writes(f"{tmp}/merge", batches, merge=True)
            merged_rows = pl.read_delta(f"{tmp}/merge").height
        print(
            f"overlap {overlap:.0%}: append {append:.2f}s, merge {merge:.2f}s "
            f"({merge / append:.1f}x), merge kept {merged_rows} rows"
        )
        if overlap:
            with tempfile.TemporaryDirectory() as tmp:
                for label, seconds in read_side(tmp, batches).items():
                    print(f"  {label}: {seconds * 1000:.1f} ms")


if __name__ == "__main__":
    main()
