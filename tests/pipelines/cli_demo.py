"""The store the CLI tests read: ``python -m tests.pipelines.cli_demo STORE [--bare]``.

Pipeline ``demo``: seven rows tagged ``k`` (with a ``group`` tag; ``k=6`` has ``k=0``'s packet)
go through ``inc`` (x + 1) and
then ``check``, which fails for ``y == 3`` (``on_error="continue"``), so the run is ``failed``
with one failure row -- unless ``CLI_DEMO_FIXED`` is set (same code hash, so a rerun with it
records the failed entry). ``--bare`` also runs the cached pod ``triple`` on its own, outside any
pipeline: its results table is referenced by no provenance row.
"""

from __future__ import annotations

import os
import sys

import orca


@orca.function_pod(output_keys="y")
def inc(x: int) -> int:
    return x + 1


@orca.function_pod(output_keys="ok")
def check(y: int) -> bool:
    # Read at call time, so "fixing" it keeps the function's code hash (and the entry ids).
    if y == 3 and not os.environ.get("CLI_DEMO_FIXED"):
        raise ValueError(f"y must not be 3, got {y}")
    return y % 2 == 0


@orca.function_pod(output_keys="t")
def triple(x: int) -> int:
    return 3 * x


def source() -> orca.Source:
    rows = [{"k": k, "group": "a" if k < 3 else "b", "x": k} for k in range(6)]
    rows.append({"k": 6, "group": "b", "x": 0})  # k=0's packet again: one result, two entries
    return orca.DictSource(rows, tags=["k", "group"], source_id="numbers")


def run(store_path: str, *, bare: bool = False) -> orca.RunResult:
    store = orca.DeltaStore(store_path)
    pipeline = orca.Pipeline("demo", store=store)
    with pipeline:
        check.pod(inc.pod(source()))
    result = pipeline.run(on_error="continue", progress=False)
    if bare:
        triple.pod.cached(store)(source()).to_polars()
    store.flush()
    return result


if __name__ == "__main__":
    print(run(sys.argv[1], bare="--bare" in sys.argv[2:]).status)
