"""A one-node pipeline run by process tests: ``python -m tests.pipelines.squares STORE N [options]``.

``ORCA_TEST_DELAY`` (seconds per packet) makes the function slow enough to interrupt or poll.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import orca


@orca.function_pod(output_keys="y")
def slow_square(x: int) -> int:
    time.sleep(float(os.environ.get("ORCA_TEST_DELAY", "0")))
    return x * x


def build(store_path: str, n: int, *, max_seconds: float = 30.0) -> orca.Pipeline:
    store = orca.DeltaStore(store_path, max_seconds=max_seconds)
    pipeline = orca.Pipeline("squares", store=store)
    with pipeline:
        slow_square.pod(orca.DictSource([{"i": i, "x": i} for i in range(n)], tags=["i"], source_id="ints"))
    return pipeline


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("n", type=int)
    parser.add_argument("--shard", type=int, nargs=2)
    parser.add_argument("--max-seconds", type=float, default=30.0)
    parser.add_argument("--handle-file")
    args = parser.parse_args(argv)
    pipeline = build(args.store, args.n, max_seconds=args.max_seconds)
    run_id = orca.new_run_id()
    if args.handle_file:
        with open(args.handle_file + ".tmp", "w") as f:
            f.write(pipeline.handle(run_id).to_json())
        os.replace(args.handle_file + ".tmp", args.handle_file)
    result = pipeline.run(shard=tuple(args.shard) if args.shard else None, run_id=run_id, progress=False)
    print(json.dumps({k: vars(v) for k, v in result.counts.items()}))


if __name__ == "__main__":
    main(sys.argv[1:])
