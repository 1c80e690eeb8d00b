"""A one-node pipeline run repeatedly, with eager store upkeep, by several processes
(tests/test_upkeep.py)."""

from __future__ import annotations

import orca


@orca.function_pod(output_keys="y")
def triple(x: int) -> int:
    return 3 * x


def run(store_path: str, worker: int, runs: int) -> None:
    store = orca.DeltaStore(store_path).with_options(checkpoint_every=3)
    for r in range(runs):
        # Each run adds rows, partly shared with the other workers' runs.
        rows = [{"k": i, "x": i} for i in range(0, 20 * (r + 1) + 5 * worker)]
        pipeline = orca.Pipeline("upkept", store=store)
        with pipeline:
            triple.pod(orca.DictSource(rows, tags=["k"], source_id="numbers"))
        pipeline.run(progress=False)
