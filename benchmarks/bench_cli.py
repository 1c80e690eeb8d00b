"""How fast ``orca ls`` and ``orca show`` answer on a store holding a 1M-row pipeline.

Run: ``python benchmarks/bench_cli.py [--rows 1000000] [--repeats 5] [--dir DIR]``.

The store (pipeline ``bench``, one node ``plus_one`` over N rows) is built once and kept in
``DIR`` (default ``<tmp>/orca-bench-cli-<rows>``); later runs reuse it. Each command is timed
as a user meets it -- a fresh ``python -m orca`` process, interpreter start and imports
included -- and, to separate the two, the same command in this process (click's test runner)
with the imports already done. Target: under 1 s per command, fresh process included.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import polars as pl
from click.testing import CliRunner

import orca
from orca.cli import main as cli

ROOT = pathlib.Path(__file__).resolve().parents[1]
COMMANDS = (["ls"], ["show", "bench"], ["show", "bench", "plus_one"])


@orca.function_pod(output_keys="y")
def plus_one(x: int) -> int:
    return x + 1


def build(path: pathlib.Path, rows: int) -> None:
    """The 1M-row store, unless a previous run left a complete one at ``path``."""
    done = path / "complete"
    if done.exists():
        return
    frame = pl.DataFrame({"id": pl.int_range(rows, eager=True), "x": pl.int_range(rows, eager=True)})
    pipeline = orca.Pipeline("bench", store=orca.DeltaStore(path / "store"))
    with pipeline:
        plus_one.pod(orca.PolarsSource(frame, tags=["id"], source_id="ints"))
    start = time.perf_counter()
    result = pipeline.run(progress=False)
    print(f"built {rows:,} rows in {time.perf_counter() - start:.1f} s ({result.status})")
    done.touch()


def spread(times: list[float]) -> str:
    return f"{min(times):.2f} / {statistics.median(times):.2f} / {max(times):.2f} s"


def timed(fn, repeats: int) -> tuple[str, str]:
    """Wall time, and CPU time of child processes (user + system: what a loaded machine does not
    inflate as much), min / median / max."""
    wall, cpu = [], []
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        fn()
        wall.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu.append(after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime)
    return spread(wall), spread(cpu)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dir", type=pathlib.Path)
    args = parser.parse_args()
    folder = args.dir or pathlib.Path(tempfile.gettempdir()) / f"orca-bench-cli-{args.rows}"
    build(folder, args.rows)
    store = str(folder / "store")
    runner = CliRunner()

    def fresh(command: list[str]) -> None:
        subprocess.run([sys.executable, "-m", "orca", "--store", store, *command], cwd=ROOT, check=True,
                       stdout=subprocess.DEVNULL, env={**os.environ})

    def warm(command: list[str]) -> None:
        result = runner.invoke(cli, ["--store", store, *command])
        assert result.exit_code == 0, result.output

    print(f"store {store}; min / median / max of {args.repeats}; load average {os.getloadavg()[0]:.1f}")
    print(f"{'command':<28} {'fresh process (wall)':<24} {'fresh process (CPU)':<24} in process (wall)")
    for command in COMMANDS:
        warm(command)  # first call: page cache, lazy imports
        fresh_wall, fresh_cpu = timed(lambda c=command: fresh(c), args.repeats)
        print(f"{'orca ' + ' '.join(command):<28} {fresh_wall:<24} {fresh_cpu:<24} "
              f"{timed(lambda c=command: warm(c), args.repeats)[0]}")
    imports = timed(lambda: subprocess.run([sys.executable, "-c", "import orca.cli"], check=True), args.repeats)
    print(f"{'python -c import orca.cli':<28} {imports[0]:<24} {imports[1]:<24}")

if __name__ == "__main__":
    main()
