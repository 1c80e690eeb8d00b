"""A pipeline defined at a script's top level, for ``orca plan`` and ``orca graph``.

``python tests/pipelines/cli_script.py`` runs it (its ``__main__`` block); ``orca plan`` and
``orca graph`` load the script without running that block. The store is ``$CLI_SCRIPT_STORE``
and the source has ``$CLI_SCRIPT_ROWS`` rows (default 6), so a test can add rows after a run.
Pipeline ``script``: source ``numbers`` -> ``square`` -> filter -> ``halve``.
"""

from __future__ import annotations

import os

import polars as pl

import orca


@orca.function_pod(output_keys="y")
def square(x: int) -> int:
    return x * x


@orca.function_pod(output_keys="h")
def halve(y: int) -> float:
    return y / 2


rows = int(os.environ.get("CLI_SCRIPT_ROWS", "6"))
numbers = orca.DictSource([{"k": k, "x": k} for k in range(rows)], tags=["k"], source_id="numbers")
pipeline = orca.Pipeline("script", store=orca.DeltaStore(os.environ["CLI_SCRIPT_STORE"]))
with pipeline:
    halve.pod(square.pod(numbers).filter(pl.col("k") > 0))


if __name__ == "__main__":
    print(pipeline.run(progress=False).status)
