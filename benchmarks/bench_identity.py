"""Cost of a pod's identity: a pod calling ~20 helper functions, two classes and constants.

    python benchmarks/bench_identity.py [REPEATS]

Each repeat writes the same code to a new module file and imports it, so nothing is memoised:
"cold" is the first identity of that function (parse the file once, render and hash each
helper's source, encode the constants); "warm" is a second identity of the same function in
the same process (sources memoised per code object; the walk and the constants run again).
"""

from __future__ import annotations

import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import pyarrow as pa

from orca.identity import function_identity

HELPERS = 20


def module_source() -> str:
    lines = ["import math", "", "WEIGHTS = {'a': 1.5, 'b': (1, 2, 3), 'c': frozenset({'x', 'y'})}",
             "LIMIT = 100", ""]
    for i in range(HELPERS):
        call = f"h{i + 1}(v) + " if i + 1 < HELPERS else ""
        lines += [f"def h{i}(v):", f'    """Helper {i}."""', "    if v > LIMIT:  # clip",
                  "        v = LIMIT", f"    return {call}math.floor(v * WEIGHTS['a']) + {i}", ""]
    lines += ["class Scaler:", "    def __init__(self, k):", "        self.k = k", "",
              "    def apply(self, v):", "        return h0(v) * self.k", "",
              "class Offset(Scaler):", "    def apply(self, v):", "        return super().apply(v) + LIMIT", "",
              "def pod(x: int) -> int:", "    return Offset(2).apply(x) + h0(x) + len(WEIGHTS['b'])", ""]
    return "\n".join(lines)


def identity(fn):
    return function_identity(fn, name="pod", version="1", code_hash=True,
                             output_fields=[pa.field("y", pa.int64())])


def main(repeats: int) -> None:
    source = module_source()
    cold, warm = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(repeats):
            path = Path(tmp) / f"bench_identity_{i}.py"
            path.write_text(source)
            spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[path.stem] = module
            spec.loader.exec_module(module)
            start = time.perf_counter()
            first = identity(module.pod).hash
            cold.append(time.perf_counter() - start)
            start = time.perf_counter()
            assert identity(module.pod).hash == first
            warm.append(time.perf_counter() - start)
    parts = len(identity(module.pod).explain().parts)
    print(f"first in the process (cold, nothing warmed up): {cold[0] * 1000:.2f} ms")
    print(f"pod with {HELPERS} helpers, 2 classes, 2 constants ({parts} identity parts), {repeats} repeats")
    for label, times in (("cold", cold), ("warm", warm)):
        ms = sorted(t * 1000 for t in times)
        print(f"{label}: min {ms[0]:.2f} ms  median {statistics.median(ms):.2f} ms  max {ms[-1]:.2f} ms")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
