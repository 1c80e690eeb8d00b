"""A two-node pipeline run with claim=True by several processes (tests/test_claims.py)."""

from __future__ import annotations

import os
import time

import orca


def _log(x: int) -> None:
    path = os.environ.get("ORCA_TEST_CALLS")
    if path:
        with open(path, "a") as f:  # one line per call, appended atomically (small writes)
            f.write(f"{os.getpid()} {x}\n")


@orca.function_pod(output_keys="y")
def slow_square(x: int) -> int:
    _log(x)
    time.sleep(float(os.environ.get("ORCA_TEST_DELAY", "0")))
    return x * x


@orca.function_pod(output_keys="z")
def plus_one(y: int) -> int:
    return y + 1


def build(store_path: str, n: int) -> orca.Pipeline:
    pipeline = orca.Pipeline("claimed", store=orca.DeltaStore(store_path))
    with pipeline:
        plus_one.pod(slow_square.pod(orca.DictSource([{"k": i, "x": i} for i in range(n)], tags=["k"],
                                                    source_id="numbers")))
    return pipeline


def run(store_path: str, n: int, claim_rows: int, lease_seconds: float) -> None:
    build(store_path, n).run(progress=False, claim=True, claim_rows=claim_rows, lease_seconds=lease_seconds)
