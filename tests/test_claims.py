"""run(claim=True): independent processes share a node's work through leases (issue 16)."""

from __future__ import annotations

import collections
import time

import polars as pl
import pytest

import orca
from tests.helpers import SPAWN
from tests.pipelines import claimed

pytestmark = pytest.mark.slow


def calls(path) -> collections.Counter:
    if not path.exists():
        return collections.Counter()
    return collections.Counter(int(line.split()[1]) for line in path.read_text().splitlines())


def start(store, n, claim_rows=25, lease=2.0):
    p = SPAWN.Process(target=claimed.run, args=(str(store), n, claim_rows, lease))
    p.start()
    return p


def check_complete(store, n):
    pipeline = claimed.build(str(store), n)
    for label, value in (("slow_square", lambda k: k * k), ("plus_one", lambda k: k * k + 1)):
        asset = pipeline.asset(label).collect().sort("k")
        assert asset["k"].to_list() == list(range(n)), label
        assert asset[asset.columns[1]].to_list() == [value(k) for k in range(n)], label
        results = orca.DeltaStore(store).scan(pipeline[label].pod.results_table).collect()
        assert results.height == n  # each result recorded once
    assert pipeline.plan()["plus_one"].to_compute == 0


def test_four_workers_share_the_work(tmp_path, monkeypatch):
    n, store, log = 120, tmp_path / "store", tmp_path / "calls.txt"
    monkeypatch.setenv("ORCA_TEST_CALLS", str(log))
    monkeypatch.setenv("ORCA_TEST_DELAY", "0.01")
    workers = [start(store, n) for _ in range(4)]
    for w in workers:
        w.join(timeout=240)
    assert [w.exitcode for w in workers] == [0] * 4
    counted = calls(log)
    assert set(counted) == set(range(n))
    assert sum(counted.values()) - n <= 25  # duplicated work: at most one chunk
    assert len({line.split()[0] for line in log.read_text().splitlines()}) >= 2  # several did work
    check_complete(store, n)
    handle = claimed.build(str(store), n).handle("any")
    assert 2 <= len(handle.progress()["slow_square"]["workers"]) <= 4  # who took chunks, by run id


def test_a_killed_worker_s_chunk_is_taken_over(tmp_path, monkeypatch):
    n, store, log = 120, tmp_path / "store", tmp_path / "calls.txt"
    monkeypatch.setenv("ORCA_TEST_CALLS", str(log))
    monkeypatch.setenv("ORCA_TEST_DELAY", "0.05")
    victim = start(store, n, lease=1.5)
    deadline = time.monotonic() + 60
    while sum(calls(log).values()) < 5 and time.monotonic() < deadline:  # it holds a chunk now
        time.sleep(0.05)
    victim.kill()
    victim.join()
    survivor = start(store, n, lease=1.5)
    survivor.join(timeout=240)
    assert survivor.exitcode == 0
    counted = calls(log)
    assert set(counted) == set(range(n))
    assert sum(counted.values()) - n <= 25
    check_complete(store, n)


def test_a_worker_started_late_only_helps(tmp_path, monkeypatch):
    n, store, log = 100, tmp_path / "store", tmp_path / "calls.txt"
    monkeypatch.setenv("ORCA_TEST_CALLS", str(log))
    monkeypatch.setenv("ORCA_TEST_DELAY", "0.01")
    early = [start(store, n) for _ in range(2)]
    time.sleep(1.0)
    late = start(store, n)
    for w in [*early, late]:
        w.join(timeout=240)
    assert [w.exitcode for w in [*early, late]] == [0, 0, 0]
    counted = calls(log)
    assert set(counted) == set(range(n)) and sum(counted.values()) - n <= 25
    check_complete(store, n)


def test_claims_work_after_a_join_in_one_process(tmp_path):
    @orca.function_pod(output_keys="s")
    def add(x: int, w: int) -> int:
        return x + w

    left = orca.DictSource([{"k": i, "x": i} for i in range(30)], tags=["k"], source_id="l")
    right = orca.DictSource([{"k": i, "w": 2 * i} for i in range(30)], tags=["k"], source_id="r")
    pipeline = orca.Pipeline("joined", store=orca.DeltaStore(tmp_path / "store"))
    with pipeline:
        add.pod(left.join(right))
    result = pipeline.run(progress=False, claim=True, claim_rows=7)
    assert result.counts["add"].computed == 30
    assert sorted(pipeline.asset("add").collect()["s"].to_list()) == sorted(3 * i for i in range(30))
    states = pl.scan_delta(str(tmp_path / "store" / "claims" / "joined" / "add")).collect()
    assert set(states["state"]) == {"done"} and states.height == 5
    progress = result.handle.progress()["add"]
    assert progress["chunks"] == {"of": 5, "done": 5, "working": 0} and progress["workers"] == [result.run_id]


def test_claim_and_shard_are_exclusive():
    pipeline = orca.Pipeline("x", store=orca.MemoryStore())
    with pipeline:
        claimed.plus_one.pod(orca.DictSource([{"k": 1, "y": 2}], tags=["k"], source_id="s"))
    with pytest.raises(ValueError, match="claim=True or shard="):
        pipeline.run(progress=False, claim=True, shard=(0, 2))
    assert pipeline.run(progress=False, claim=True).counts["plus_one"].computed == 1  # memory store too
