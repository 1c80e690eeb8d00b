"""A pipeline script with no ``if __name__ == "__main__":`` guard, run by ``tests/test_liveness.py``
as ``python liveness_unguarded.py STORE N [START_METHOD]`` (copied beside folders named ``orca``
too).

Everything below runs at import: a process executor that ran this script in its workers would
run the pipeline again there (a second run in the store) or fail. Prints the counts as JSON.
"""

import json
import sys

import orca


@orca.function_pod(output_keys="y")
def square(x: int) -> int:
    return x * x


store = orca.DeltaStore(sys.argv[1])
pipeline = orca.Pipeline("unguarded", store=store)
with pipeline:
    square.pod(orca.DictSource([{"i": i, "x": i} for i in range(int(sys.argv[2]))], tags=["i"], source_id="ints"))
start_method = sys.argv[3] if len(sys.argv) > 3 else "loky"
result = pipeline.run(orca.ProcessExecutor(2, start_method=start_method), progress=False)
print(json.dumps({"run_id": result.run_id, **{k: vars(v) for k, v in result.counts.items()}}))
