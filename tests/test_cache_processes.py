"""The cached pod across real processes sharing one DeltaStore: concurrent writers and SIGKILL."""

from __future__ import annotations

import os
import time

import polars as pl
import pytest

import orca
from orca.names import hex_ids
from tests.helpers import SPAWN
from tests.pipelines import cached_double
from tests.pipelines.cached_double import slow_double

pytestmark = pytest.mark.slow


def packet_of(n: int) -> dict[str, int]:
    """Packet hash -> x, for x in range(n)."""
    return {orca.hash_packet({"x": x}): x for x in range(n)}


def test_eight_processes_record_each_result_once(tmp_path, monkeypatch):
    n, store_path = 2000, str(tmp_path / "store")
    procs = [SPAWN.Process(target=cached_double.run, args=(store_path, n)) for _ in range(8)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=300)
    assert [p.exitcode for p in procs] == [0] * 8  # every process finished with the right output
    store = orca.DeltaStore(store_path)
    live = hex_ids(store.scan(slow_double.pod.results_table).collect())
    assert live.height == n and live["__packet_hash"].n_unique() == n
    assert sorted(live["__packet_hash"].replace_strict(packet_of(n)).to_list()) == list(range(n))
    raw = pl.scan_delta(store.uri(slow_double.pod.results_table)).collect()
    assert raw.height >= n  # (several processes may have computed a packet; one row is visible)
    calls = tmp_path / "calls.txt"
    monkeypatch.setenv("ORCA_TEST_CALLS", str(calls))
    cached_double.run(store_path, n)  # a ninth run, duplicates and all, computes nothing
    assert not calls.exists()
    assert pl.scan_delta(store.uri(slow_double.pod.results_table)).collect().height == raw.height


def test_killed_run_resumes_with_only_the_missing_packets(tmp_path, monkeypatch):
    n, store_path, calls = 200, str(tmp_path / "store"), tmp_path / "calls.txt"
    monkeypatch.setenv("ORCA_TEST_DELAY", "0.01")
    monkeypatch.setenv("ORCA_TEST_CALLS", str(calls))
    proc = SPAWN.Process(target=cached_double.run, args=(store_path, n, 10))
    proc.start()
    table = os.path.join(store_path, slow_double.pod.results_table)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # wait until some batches are committed
        if os.path.isdir(os.path.join(table, "_delta_log")) and pl.scan_delta(table).select(pl.len()).collect().item() >= 30:
            break
        time.sleep(0.05)
    proc.kill()  # SIGKILL mid-run
    proc.join()
    assert proc.exitcode == -9
    committed = pl.scan_delta(table).collect()  # reads cleanly after the kill
    assert 30 <= committed.height < n
    done = set(hex_ids(committed)["__packet_hash"].replace_strict(packet_of(n)).to_list())

    calls.write_text("")
    monkeypatch.setenv("ORCA_TEST_DELAY", "0")
    proc = SPAWN.Process(target=cached_double.run, args=(store_path, n))
    proc.start()
    proc.join(timeout=120)
    assert proc.exitcode == 0
    recomputed = [int(line) for line in calls.read_text().split()]
    assert sorted(recomputed) == sorted(set(range(n)) - done)  # only the missing ones, once each
    final = pl.scan_delta(table).collect()
    assert final.height == n and final["__packet_hash"].n_unique() == n
    failures = os.path.join(store_path, "failures")
    assert not os.path.exists(failures)
