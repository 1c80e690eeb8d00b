"""Run a benchmark script from two checkouts in turn (A, B, A, B, ...) and summarise.

Run: ``python benchmarks/interleave.py A_DIR B_DIR --rounds 3 -- bench_pipeline.py --rows 1000000``.

Each checkout's ``orca`` is imported through ``PYTHONPATH`` (it precedes the editable install),
and its own copy of the benchmark script is run, so A and B each measure their own code. Lines
printed by the script that are JSON objects with a ``seconds`` field are collected per
``scenario`` (or per line number) and reported as min / median / max; so is a ``cpu_s`` field
(the process's CPU seconds, every thread), where the script reports one.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from collections import defaultdict


def run(checkout: str, script: list[str]) -> list[dict]:
    env = {**os.environ, "PYTHONPATH": checkout}
    out = subprocess.run([sys.executable, os.path.join(checkout, "benchmarks", script[0]), *script[1:]],
                         env=env, cwd=os.path.join(checkout, "benchmarks"), capture_output=True, text=True,
                         check=True)
    rows = []
    for i, line in enumerate(out.stdout.splitlines()):
        line = line.strip().replace("'", '"')
        if line.startswith("{"):
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue
            row.setdefault("scenario", f"line{i}")
            rows.append(row)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--rounds", type=int, default=3)
    # Everything after "--" is the script and its arguments (split by hand: argparse's REMAINDER
    # would swallow --rounds given after the checkouts).
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    script = argv[cut + 1:]
    seconds: dict[tuple[str, str], list[float]] = defaultdict(list)
    for _ in range(args.rounds):
        for name, checkout in (("A", args.a), ("B", args.b)):
            for row in run(checkout, script):
                seconds[(row["scenario"], name)].append(row["seconds"])
                if "cpu_s" in row:
                    seconds[(row["scenario"] + " cpu", name)].append(row["cpu_s"])
                print(name, json.dumps(row), flush=True)
    for (scenario, name), values in sorted(seconds.items()):
        print(f"{scenario:>16} {name}: min {min(values):.3f}  median {statistics.median(values):.3f}  "
              f"max {max(values):.3f}  (n={len(values)})")


if __name__ == "__main__":
    main()
