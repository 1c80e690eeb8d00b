"""Pipelines across real processes: shards, run handles polled from elsewhere, Ctrl-C."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import polars as pl
import pytest

import orca

ROOT = pathlib.Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def launch(*args: str, delay: float = 0.0) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ORCA_TEST_DELAY": str(delay)}
    return subprocess.Popen([sys.executable, "-m", "tests.pipelines.squares", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout: float = 120) -> dict:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def tables(store_path: pathlib.Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    store = orca.DeltaStore(store_path)
    (results_table,) = store.tables("results/slow_square")
    results = store.scan(results_table).collect().select("y", "__packet_hash", "__record_id").sort("__packet_hash")
    prov = store.scan("pipelines/squares/slow_square").collect()
    prov = prov.select("i", "__entry_id", "__packet_hash", "__record_id", "__source__x").sort("__entry_id")
    return results, prov


def test_shards_in_three_processes_equal_one_process(tmp_path):
    n = 300
    procs = [launch(str(tmp_path / "sharded"), str(n), "--shard", str(i), "3") for i in range(3)]
    counts = [finish(p) for p in procs]
    assert sum(c["slow_square"]["computed"] for c in counts) == n
    assert all(c["slow_square"]["computed"] > 0 for c in counts)
    single = finish(launch(str(tmp_path / "single"), str(n)))
    assert single["slow_square"]["computed"] == n
    sharded_results, sharded_prov = tables(tmp_path / "sharded")
    single_results, single_prov = tables(tmp_path / "single")
    assert sharded_results.equals(single_results)
    assert sharded_prov.equals(single_prov)


def test_handle_polled_from_another_process(tmp_path):
    store_path, handle_file = tmp_path / "store", tmp_path / "run.json"
    proc = launch(str(store_path), "40", "--max-seconds", "0.05", "--handle-file", str(handle_file), delay=0.05)
    deadline = time.monotonic() + 60
    while not handle_file.exists():
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    handle = orca.RunHandle.from_json(handle_file.read_text())
    seen_running = []
    while proc.poll() is None and time.monotonic() < deadline:
        if handle.status() == "running":
            progress = handle.progress()["slow_square"]
            if progress["total"] and 0 < progress["completed"] < progress["total"]:
                seen_running.append(progress)
        time.sleep(0.05)
    finish(proc)
    assert seen_running, "never saw a partial progress report while the run was under way"
    assert seen_running[0]["total"] == 40 and 0 < seen_running[0]["fraction"] < 1
    assert handle.status() == "succeeded"
    assert handle.progress()["slow_square"] == {"total": 40, "completed": 40, "failed": 0, "fraction": 1.0}


def test_sigint_commits_what_finished(tmp_path):
    store_path = tmp_path / "store"
    proc = launch(str(store_path), "200", "--max-seconds", "0.05", delay=0.02)
    prov_path = store_path / "pipelines" / "squares" / "slow_square"
    deadline = time.monotonic() + 60
    while not (prov_path / "_delta_log").exists():  # wait until some provenance is committed
        assert time.monotonic() < deadline and proc.poll() is None
        time.sleep(0.05)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode != 0 and "KeyboardInterrupt" in err
    results, prov = tables(store_path)
    assert 0 < prov.height < 200
    assert set(prov["__record_id"]) <= set(results["__record_id"])  # nothing points at a missing result
    runs = orca.DeltaStore(store_path).scan("runs").collect().sort("seq")
    assert runs["status"][-1] == "interrupted"
    rerun = finish(launch(str(store_path), "200"))
    assert rerun["slow_square"]["cached"] == prov.height
    assert rerun["slow_square"]["computed"] == 200 - prov.height
