"""A one-node pipeline run repeatedly, with eager store upkeep, by several processes; a
compactor and an invalidator racing on one table (tests/test_upkeep.py)."""

from __future__ import annotations

import datetime

import pyarrow as pa

import orca

TABLE = "results/race/h"


@orca.function_pod(output_keys="y")
def triple(x: int) -> int:
    return 3 * x


def run(store_path: str, worker: int, runs: int) -> None:
    store = orca.DeltaStore(store_path).with_options(checkpoint_every=3, compact_files=4)
    for r in range(runs):
        # Each run adds rows, partly shared with the other workers' runs.
        rows = [{"k": i, "x": i} for i in range(0, 20 * (r + 1) + 5 * worker)]
        pipeline = orca.Pipeline("upkept", store=store)
        with pipeline:
            triple.pod(orca.DictSource(rows, tags=["k"], source_id="numbers"))
        pipeline.run(progress=False)


def rows(keys: range, run_id: str) -> pa.Table:
    return pa.table({"k": pa.array(list(keys), pa.int64()), "v": pa.array(list(keys), pa.int64()),
                     "__run_id": [run_id] * len(keys)})


def compactor(store_path: str, rounds: int) -> None:
    """Append new rows and compact the table, over and over."""
    store = orca.DeltaStore(store_path)
    for r in range(rounds):
        store.append(TABLE, rows(range(1000 + 3 * r, 1003 + 3 * r), f"c{r}"), key=["k"])
        store.flush()
        store.compact(TABLE)


def invalidator(store_path: str, keys: int) -> None:
    """Invalidate keys one by one, each in its own commit."""
    store = orca.DeltaStore(store_path)
    for k in range(keys):
        assert store.invalidate(TABLE, pa.array([k], pa.int64())) == 1, (k, datetime.datetime.now())
