"""Append + deduplicating reads vs idempotent insert-if-absent merge, on a keyed Delta table.

Run: ``python benchmarks/bench_store_writes.py [--batches 10] [--rows 100000] [--reads-only]
[--merge-race]``.
Writes ``batches`` batches of ``rows`` rows keyed by a 32-hex-char ``__packet_hash`` into a fresh
table, once with plain appends and once with ``merge(...).when_not_matched_insert_all()``;
with 0 % and 1 % of each batch repeating keys already written. Then times the store's side
(``--reads-only``: only this): its commits, a raw and a deduplicated scan (with 1 % repeated
keys the dedup rule looks up the commit of every repeated row), ``keys`` cold and warm, and
``lookup``. ``--merge-race``: two processes merge-insert the same keys at once, to see whether
deltalake's conflict checker makes the loser retry and skip (no duplicate kept).
"""

from __future__ import annotations

import argparse
import multiprocessing
import tempfile
import time

import numpy as np
import polars as pl
import pyarrow as pa
from deltalake import DeltaTable, write_deltalake
from deltalake.exceptions import CommitFailedError

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
    start = time.perf_counter()
    for data in batches:
        store.append("results/f/h", data, key=["__packet_hash"])
        store.flush()  # one commit per batch, as a driver would
    commits = time.perf_counter() - start
    probe = pl.Series(batches[-1].column("__packet_hash").to_pylist()[:10_000])
    reader = DeltaStore(root)
    return {
        "store commits (all batches)": commits,
        "plain scan (collect)": clock(
            lambda: reader.scan("results/f/h", include_invalidated=True).collect()
        ),
        "dedup scan (collect)": clock(lambda: reader.scan("results/f/h").collect()),
        "dedup scan again (collect)": clock(lambda: reader.scan("results/f/h").collect()),
        "keys() cold": clock(lambda: reader.keys("results/f/h")),
        "keys() warm, unchanged": clock(lambda: reader.keys("results/f/h")),
        "lookup 10k keys": clock(lambda: reader.lookup("results/f/h", probe)),
    }


def _merge_writer(path: str, value: int, barrier, conflicts) -> None:
    keys = pa.array([f"{k:032x}" for k in range(10_000)])
    data = pa.table({"__packet_hash": keys, "value": pa.array([value] * len(keys))})
    barrier.wait()
    for _ in range(20):
        try:
            DeltaTable(path).merge(data, predicate='t."__packet_hash" = s."__packet_hash"',
                                   source_alias="s", target_alias="t").when_not_matched_insert_all().execute()
            return
        except CommitFailedError:
            with conflicts.get_lock():
                conflicts.value += 1


def merge_race(rounds: int = 5) -> None:
    """Two processes merge-insert the same 10,000 keys at the same moment, ``rounds`` times."""
    context = multiprocessing.get_context("spawn")
    for round_ in range(rounds):
        with tempfile.TemporaryDirectory() as tmp:
            path = f"{tmp}/t"
            DeltaTable.create(path, pa.schema([("__packet_hash", pa.string()), ("value", pa.int64())]))
            barrier, conflicts = context.Barrier(2), context.Value("i", 0)
            workers = [context.Process(target=_merge_writer, args=(path, v, barrier, conflicts)) for v in (1, 2)]
            for worker in workers:
                worker.start()
            for worker in workers:
                worker.join()
            kept = pl.read_delta(path)
            print(f"merge race {round_}: {kept.height} rows kept for 10000 keys "
                  f"({kept['__packet_hash'].n_unique()} distinct), {conflicts.value} conflicts retried")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--reads-only", action="store_true")
    parser.add_argument("--merge-race", action="store_true")
    args = parser.parse_args()
    if args.merge_race:
        merge_race()
        return
    for overlap in (0.0, 0.01):
        rng = np.random.default_rng(0)
        old: list[str] = []
        batches = [batch(rng, args.rows, old, overlap) for _ in range(args.batches)]
        if not args.reads_only:
            with tempfile.TemporaryDirectory() as tmp:
                append = timed_writes(f"{tmp}/append", batches, merge=False)
                merge = timed_writes(f"{tmp}/merge", batches, merge=True)
                merged_rows = pl.read_delta(f"{tmp}/merge").height
            print(
                f"overlap {overlap:.0%}: append {append:.2f}s, merge {merge:.2f}s "
                f"({merge / append:.1f}x), merge kept {merged_rows} rows"
            )
        if overlap or args.reads_only:
            print(f"store, overlap {overlap:.0%}:")
            with tempfile.TemporaryDirectory() as tmp:
                for label, seconds in read_side(tmp, batches).items():
                    print(f"  {label}: {seconds * 1000:.1f} ms")


if __name__ == "__main__":
    main()
