"""Claimed work: what a lease costs, and 4 claiming workers vs 1 on a ~1 ms/packet function.

Run: ``python benchmarks/bench_claims.py [--packets 2000] [--claim-rows 100]``. Prints the cost of
one claim + done (two Delta merges) on a local store, then the wall time of one worker and of
four workers started together (separate processes, ``run(claim=True)``), and the speed-up. On
the 2-core machine four workers can use two cores at most.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time

from bench_executors import calibrate_1ms, spin

import orca


@orca.function_pod(output_keys="out")
def burn(x: int, loops: int) -> int:
    spin(loops)
    return x


def worker(store: str, packets: int, loops: int, claim_rows: int) -> None:
    pipeline = orca.Pipeline("claims", store=orca.DeltaStore(store))
    with pipeline:
        burn.pod(orca.DictSource([{"i": i, "x": i, "loops": loops} for i in range(packets)], tags=["i"],
                                 source_id="cpu"))
    pipeline.run(progress=False, claim=True, claim_rows=claim_rows)


def lease_cost(rounds: int = 30) -> list[float]:
    store = orca.DeltaStore(tempfile.mkdtemp() + "/s")
    seconds = []
    for chunk in range(rounds):
        start = time.perf_counter()
        assert store.claim("claims/bench/x", chunk, rounds, "me", 60.0)
        store.update_claim("claims/bench/x", chunk, rounds, "me", done=True)
        seconds.append(time.perf_counter() - start)
    return seconds


def timed(workers: int, packets: int, loops: int, claim_rows: int) -> float:
    store = tempfile.mkdtemp() + "/s"
    context = multiprocessing.get_context("spawn")
    procs = [context.Process(target=worker, args=(store, packets, loops, claim_rows)) for _ in range(workers)]
    start = time.perf_counter()
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    assert all(p.exitcode == 0 for p in procs)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--packets", type=int, default=2000)
    parser.add_argument("--claim-rows", type=int, default=100)
    args = parser.parse_args()
    costs = lease_cost()
    print(json.dumps({"claim_and_done_s": {"min": round(min(costs), 4), "median": round(statistics.median(costs), 4),
                                           "max": round(max(costs), 4)}}))
    loops = calibrate_1ms()
    one = timed(1, args.packets, loops, args.claim_rows)
    four = timed(4, args.packets, loops, args.claim_rows)
    print(json.dumps({"packets": args.packets, "one_worker_s": round(one, 2), "four_workers_s": round(four, 2),
                      "speedup": round(one / four, 2)}))


if __name__ == "__main__":
    main()
