"""A run that stalls on its last packet, run by ``tests/test_liveness.py`` as
``python -m tests.pipelines.liveness_stall STORE N`` and killed with SIGKILL while it hangs.

The store commits at most every 60 s on its own; what the run computed before the hang must be
committed anyway (the executor's heartbeat makes the engine flush).
"""

import sys
import time

import orca


@orca.function_pod(output_keys="y")
def stalls_at_the_end(x: int) -> int:
    if x == int(sys.argv[2]) - 1:
        time.sleep(600)
    return x * x


store = orca.DeltaStore(sys.argv[1], max_seconds=60)
pipeline = orca.Pipeline("stall", store=store)
with pipeline:
    stalls_at_the_end.pod(orca.DictSource([{"i": i, "x": i} for i in range(int(sys.argv[2]))], tags=["i"],
                                          source_id="ints"))
pipeline.run(orca.ProcessExecutor(1), timeout=300, progress=False)
