"""A cached pod run by process tests: ``python -m tests.pipelines.cached_double STORE N [MAX_ROWS]``.

``ORCA_TEST_DELAY`` (seconds per call) slows the function down; ``ORCA_TEST_CALLS`` names a
file that gets one line per call (appends of short lines are atomic across processes).
"""

from __future__ import annotations

import os
import sys
import time

import orca


@orca.function_pod(output_keys="z")
def slow_double(x: int) -> int:
    delay = float(os.environ.get("ORCA_TEST_DELAY", "0"))
    if delay:
        time.sleep(delay)
    calls = os.environ.get("ORCA_TEST_CALLS")
    if calls:
        with open(calls, "a") as f:
            f.write(f"{x}\n")
    return 2 * x


def source(n: int) -> orca.Source:
    return orca.DictSource([{"i": i, "x": i} for i in range(n)], tags=["i"], source_id="ints")


def run(store_path: str, n: int, max_rows: int = 200_000) -> None:
    """Bring the cached pod up to date over ``n`` packets; fail loudly on a wrong output."""
    store = orca.DeltaStore(store_path, max_rows=max_rows)
    out = slow_double.pod.cached(store)(source(n)).to_polars()
    if out["i"].to_list() != list(range(n)) or out["z"].to_list() != [2 * i for i in range(n)]:
        raise SystemExit("wrong output")


if __name__ == "__main__":
    run(sys.argv[1], int(sys.argv[2]), *(int(a) for a in sys.argv[3:4]))
