"""Many writers, one store (DESIGN §6): real processes, creation races, commit conflicts."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake.exceptions import CommitFailedError

import orca.stores.delta as delta_module
from orca.errors import StoreError
from orca.stores import DeltaStore

WORKERS = 8
KEYS_PER_WORKER = 200  # worker i writes keys i*100 .. i*100+199: neighbours overlap by half
BATCHES = 4


def _key(k: int) -> str:
    return f"{k:032x}"


def _worker(path: str, worker: int, barrier) -> None:
    store = DeltaStore(path, max_rows=KEYS_PER_WORKER // BATCHES)
    barrier.wait()
    keys = [_key(k) for k in range(worker * 100, worker * 100 + KEYS_PER_WORKER)]
    step = KEYS_PER_WORKER // BATCHES
    for start in range(0, KEYS_PER_WORKER, step):
        chunk = keys[start : start + step]
        data = pa.table(
            {
                "__packet_hash": chunk,
                "worker": [worker] * len(chunk),
                "__run_id": [f"run-{worker}"] * len(chunk),
            }
        )
        store.append("results/f/h", data, key=["__packet_hash"])  # max_rows trips a commit
    store.append("runs", pa.table({"run": [f"run-{worker}"]}))
    store.flush()


@pytest.mark.slow
def test_many_processes_append_to_one_new_table(tmp_path, monkeypatch):
    # the spawned children import this module by name: make its root importable for them
    root = Path(__file__).resolve().parents[len(__name__.split(".")) - 1]
    monkeypatch.setattr(sys, "path", [*sys.path, str(root)])
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WORKERS)
    processes = [
        context.Process(target=_worker, args=(str(tmp_path), i, barrier)) for i in range(WORKERS)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join(timeout=300)
    assert [p.exitcode for p in processes] == [0] * WORKERS

    store = DeltaStore(tmp_path)
    history = store.scan("results/f/h", include_invalidated=True).collect()
    assert history.height == WORKERS * KEYS_PER_WORKER
    live = store.scan("results/f/h").collect()
    # the rule: the row committed first wins. Oracle: replay the table version by version.
    expected: dict[str, int] = {}
    for version in range(store.version("results/f/h") + 1):
        snapshot = pl.read_delta(store.uri("results/f/h"), version=version)
        for key, worker in zip(snapshot["__packet_hash"], snapshot["worker"], strict=True):
            expected.setdefault(key, worker)
    assert len(expected) == 100 * (WORKERS + 1)
    assert all(expected[_key(k)] in (k // 100 - 1, k // 100) for k in range(100, 100 * WORKERS))
    assert live.height == len(expected) == live["__packet_hash"].n_unique()
    assert dict(zip(live["__packet_hash"], live["worker"], strict=True)) == expected
    assert store.keys("results/f/h").len() == len(expected)
    assert sorted(store.scan("runs").collect()["run"]) == [f"run-{i}" for i in range(WORKERS)]


def _conflict(*args, **kwargs):
    raise CommitFailedError("simulated concurrent commit")


def _results(keys) -> pa.Table:
    return pa.table({"__packet_hash": keys, "__run_id": ["r"] * len(keys)})


def test_commit_that_keeps_failing_stays_pending(tmp_path, monkeypatch):
    monkeypatch.setattr(delta_module, "_BACKOFF_BASE", 0.001)
    calls = []
    real_write = delta_module.append_file  # (a local store's appends; remote ones: write_deltalake)

    def failing(*args, **kwargs):
        calls.append(1)
        _conflict()

    store = DeltaStore(tmp_path, max_retries=3)
    store.append("results/f/h", _results(["a", "b"]), key=["__packet_hash"])
    store.append("pipelines/p/n", _results(["a", "b"]), key=["__packet_hash"])
    monkeypatch.setattr(delta_module, "append_file", failing)
    with pytest.raises(StoreError, match="results/f/h") as info:
        store.flush()
    assert "3 tries" in str(info.value)
    assert len(calls) == 3
    assert not store.exists("pipelines/p/n")  # never committed ahead of its results
    with pytest.raises(StoreError):
        store.flush()

    monkeypatch.setattr(delta_module, "append_file", real_write)
    store.flush()
    assert sorted(store.keys("results/f/h")) == ["a", "b"]
    assert sorted(store.keys("pipelines/p/n")) == ["a", "b"]
    assert store.scan("results/f/h", include_invalidated=True).collect().height == 2


def test_transient_conflicts_are_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(delta_module, "_BACKOFF_BASE", 0.001)
    real_write = delta_module.append_file
    failures = iter([True, True])

    def flaky(*args, **kwargs):
        if next(failures, False):
            _conflict()
        return real_write(*args, **kwargs)

    monkeypatch.setattr(delta_module, "append_file", flaky)
    store = DeltaStore(tmp_path)
    store.append("results/f/h", _results(["a"]), key=["__packet_hash"])
    store.flush()
    assert store.lookup("results/f/h", pl.Series(["a"])).height == 1


# ---- first committed wins, whatever the writers' clocks say (DESIGN §6) --------------------
CLOCK_KEYS = [_key(k) for k in range(200)]


def _clocked_writer(path: str, run_id: str, value: str) -> None:
    """One process's run: its run id is passed in, as if its clock said so."""
    store = DeltaStore(path)
    data = pa.table({"__packet_hash": CLOCK_KEYS, "value": [value] * len(CLOCK_KEYS),
                     "__run_id": [run_id] * len(CLOCK_KEYS)})
    store.append("results/f/h", data, key=["__packet_hash"])
    store.flush()


def _served(store: DeltaStore) -> dict[str, str]:
    live = store.scan("results/f/h").collect()
    assert live.height == len(CLOCK_KEYS)
    looked_up = store.lookup("results/f/h", pl.Series(CLOCK_KEYS))
    assert dict(zip(looked_up["__packet_hash"], looked_up["value"], strict=True)) == dict(
        zip(live["__packet_hash"], live["value"], strict=True))
    return dict(zip(live["__packet_hash"], live["value"], strict=True))


def test_a_served_result_is_never_displaced_by_a_later_commit(tmp_path, monkeypatch):
    """Two processes write different values for the same keys; the later committer's run id
    says its clock is an hour behind (it sorts first). What a read served after the first
    commit is what every read serves after both."""
    root = Path(__file__).resolve().parents[len(__name__.split(".")) - 1]
    monkeypatch.setattr(sys, "path", [*sys.path, str(root)])
    context = multiprocessing.get_context("spawn")
    hour = 3600 * 10**9
    runs = [(f"{2 * hour:016x}-first", "first"), (f"{1 * hour:016x}-second", "second")]
    reader = DeltaStore(tmp_path)
    seen = []
    for run_id, value in runs:
        process = context.Process(target=_clocked_writer, args=(str(tmp_path), run_id, value))
        process.start()
        process.join(timeout=120)
        assert process.exitcode == 0
        seen.append(_served(reader))
    assert seen[0] == seen[1] == dict.fromkeys(CLOCK_KEYS, "first")
    assert _served(DeltaStore(tmp_path)) == seen[0]  # a new reader (another process) agrees
    raw = reader.scan("results/f/h", include_invalidated=True).collect()
    assert raw.height == 2 * len(CLOCK_KEYS)  # both were recorded; the rule chose
