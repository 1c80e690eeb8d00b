"""Liveness and process safety of function calls: scripts without a ``__main__`` guard under the
process executor, per-call timeouts (in process, in workers, in native code), and packets that
crash their worker process. Real processes and real Delta stores throughout."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import time

import polars as pl
import pyarrow as pa
import pytest

import orca
from orca.errors import ExecutorError, PodError
from orca.executors import InProcessExecutor, ProcessExecutor, ThreadExecutor
from tests.pipelines import liveness_pods as pods
from tests.pipelines.liveness_pods import ABORT, EXIT, HANG, NATIVE

ROOT = pathlib.Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "tests" / "pipelines" / "liveness_unguarded.py"


def failures(store: orca.Store) -> pl.DataFrame:
    return store.scan("failures").collect().sort("tag")


def results(store: orca.Store, pod: orca.FunctionPod) -> pl.DataFrame:
    return store.scan(pod.results_table).collect()


def runs_recorded(store: orca.Store) -> set[str]:
    return set(store.scan("runs").collect()["run_id"].to_list())


# -- scripts without a __main__ guard (item 10) ---------------------------------------------
def run_script(folder: pathlib.Path, store: pathlib.Path, n: int, cwd: pathlib.Path | None = None) -> dict:
    """Copy the unguarded script into ``folder`` and run it there (or in ``cwd``); its counts."""
    script = folder / SCRIPT.name
    shutil.copy(SCRIPT, script)
    proc = subprocess.run([sys.executable, str(script), str(store), str(n)], cwd=cwd or folder, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


def check_one_correct_run(store_path: pathlib.Path, counts: dict, n: int) -> None:
    assert counts["square"] == {"cached": 0, "computed": n, "failed": 0}
    store = orca.DeltaStore(store_path)
    assert runs_recorded(store) == {counts["run_id"]}  # the script did not run again in a worker
    (table,) = store.tables("results/square")
    assert sorted(store.scan(table).collect()["y"].to_list()) == sorted(i * i for i in range(n))


@pytest.mark.slow
def test_a_script_without_a_main_guard_runs_once(tmp_path):
    counts = run_script(tmp_path, tmp_path / "store", 60)
    check_one_correct_run(tmp_path / "store", counts, 60)


@pytest.mark.slow
@pytest.mark.parametrize("start_method", ["spawn", "forkserver"])
def test_an_unguarded_script_with_a_standard_start_method_fails_at_once(tmp_path, start_method):
    shutil.copy(SCRIPT, tmp_path / SCRIPT.name)
    proc = subprocess.run([sys.executable, str(tmp_path / SCRIPT.name), str(tmp_path / "store"), "10", start_method],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode != 0
    assert f"ProcessExecutor(start_method='{start_method}') was called from the top level" in proc.stderr
    assert "outside `if __name__ == \"__main__\":`" in proc.stderr and "start_method='loky'" in proc.stderr
    assert len(runs_recorded(orca.DeltaStore(tmp_path / "store"))) == 1  # only the script's own (failed) run


@pytest.mark.slow
@pytest.mark.parametrize("package", [False, True], ids=["empty-folder-beside-the-script", "package-in-the-cwd"])
def test_a_script_beside_a_folder_named_orca(tmp_path, package):
    # An empty folder named ``orca`` beside the script (the driver imports the real package, a
    # regular package found on PYTHONPATH beating a namespace folder); or a package named
    # ``orca`` in the working directory, the script in a subfolder. Workers start in that
    # directory and must import the real package too.
    (tmp_path / "orca").mkdir()
    folder = tmp_path
    if package:
        (tmp_path / "orca" / "__init__.py").write_text("raise ImportError('the wrong orca')\n")
        folder = tmp_path / "scripts"
        folder.mkdir()
    counts = run_script(folder, tmp_path / "store", 30, cwd=tmp_path)
    check_one_correct_run(tmp_path / "store", counts, 30)


def test_workers_that_would_import_another_orca_are_refused_at_once(tmp_path, monkeypatch):
    (tmp_path / "orca").mkdir()
    (tmp_path / "orca" / "__init__.py").write_text("")
    monkeypatch.syspath_prepend(str(tmp_path))  # now a fresh interpreter finds this one first
    with pytest.raises(ExecutorError, match=f"another 'orca'.*{tmp_path}.*rename that folder"):
        next(ProcessExecutor(1).map_chunks(len, pa.table({"x": [1, 2]})))


# -- timeouts (item 16) ---------------------------------------------------------------------
def test_a_hanging_call_times_out_in_process_and_the_run_goes_on(tmp_path):
    store = orca.DeltaStore(tmp_path / "store")
    start = time.monotonic()
    result = pods.pipeline(pods.sleepy.pod, store).run(InProcessExecutor(), on_error="continue", timeout=0.5,
                                                        progress=False)
    assert time.monotonic() - start < 20
    assert vars(result.counts["sleepy"]) == {"cached": 0, "computed": 39, "failed": 1}
    (row,) = failures(store).rows(named=True)
    assert row["tag"] == f'{{"i":{HANG}}}' and row["error_type"] == "TimeoutError"
    assert row["message"] == "function 'sleepy' did not return within timeout=0.5 s"
    assert "time.sleep(60)" in row["traceback"]  # where the call was when it timed out
    assert results(store, pods.sleepy.pod).height == 39


def test_the_pods_timeout_applies_and_a_runs_timeout_overrides_it(tmp_path):
    store = orca.DeltaStore(tmp_path / "store")
    start = time.monotonic()
    counts = pods.pipeline(pods.sleepy_pod_timeout.pod, store).run(on_error="continue", progress=False).counts
    assert time.monotonic() - start < 20
    assert counts["sleepy_pod_timeout"].failed == 1
    slow = pods.pipeline(pods.a_bit_slow.pod, orca.DeltaStore(tmp_path / "other"), n=8)
    assert slow.run(on_error="continue", progress=False).counts["a_bit_slow"].failed == 1  # 0.5 s > 0.2 s
    assert slow.run(on_error="continue", timeout=5, progress=False).counts["a_bit_slow"].computed == 1


def test_a_timed_out_call_under_raise_commits_what_succeeded(tmp_path):
    store = orca.DeltaStore(tmp_path / "store")
    with pytest.raises(PodError, match=rf"'sleepy' failed for tag {{'i': {HANG}}}: TimeoutError: .*timeout=0.5 s"):
        pods.pipeline(pods.sleepy.pod, store).run(timeout=0.5, progress=False)
    done = results(store, pods.sleepy.pod)
    assert set(range(HANG)) <= {round(y ** 0.5) for y in done["y"].to_list()}  # computed before it
    assert failures(store)["error_type"].to_list() == ["TimeoutError"]


def test_an_async_call_times_out(tmp_path):
    store = orca.DeltaStore(tmp_path / "store")
    start = time.monotonic()
    counts = pods.pipeline(pods.async_sleepy.pod, store, n=10).run(on_error="continue", timeout=0.5,
                                                                   progress=False).counts
    assert time.monotonic() - start < 20
    assert vars(counts["async_sleepy"]) == {"cached": 0, "computed": 9, "failed": 1}
    assert failures(store)["message"].to_list() == ["function 'async_sleepy' did not return within timeout=0.5 s"]


@pytest.mark.slow
def test_hanging_calls_time_out_in_worker_processes(tmp_path):
    # Packet HANG sleeps (SIGALRM interrupts it in the worker); packet NATIVE is stuck in C code
    # with the GIL released (the worker's watchdog reports it and the worker is replaced).
    store = orca.DeltaStore(tmp_path / "store")
    start = time.monotonic()
    result = pods.pipeline(pods.stuck_in_native_code.pod, store).run(
        ProcessExecutor(2), on_error="continue", timeout=0.5, progress=False)
    assert time.monotonic() - start < 60
    assert vars(result.counts["stuck_in_native_code"]) == {"cached": 0, "computed": 38, "failed": 2}
    rows = failures(store).rows(named=True)
    assert [r["tag"] for r in rows] == [f'{{"i":{HANG}}}', f'{{"i":{NATIVE}}}']
    assert {r["error_type"] for r in rows} == {"TimeoutError"}
    assert rows[0]["message"] == "function 'stuck_in_native_code' did not return within timeout=0.5 s"
    assert "in native code" in rows[1]["message"] and "worker process was killed" in rows[1]["message"]
    assert results(store, pods.stuck_in_native_code.pod).height == 38


@pytest.mark.slow
def test_a_worker_stuck_holding_the_gil_is_killed_past_the_chunks_deadline(tmp_path):
    store = orca.DeltaStore(tmp_path / "store")
    start = time.monotonic()
    result = pods.pipeline(pods.stuck_holding_the_gil.pod, store, n=10).run(
        ProcessExecutor(2, initial_chunk_rows=1), on_error="continue", timeout=0.5, progress=False)
    assert time.monotonic() - start < 60
    assert vars(result.counts["stuck_holding_the_gil"]) == {"cached": 0, "computed": 9, "failed": 1}
    (row,) = failures(store).rows(named=True)
    assert row["tag"] == f'{{"i":{NATIVE}}}' and row["error_type"] == "TimeoutError"
    assert "stopped responding" in row["message"]


@pytest.mark.slow
def test_results_computed_before_a_hang_are_committed_on_time(tmp_path):
    # The run hangs on its last packet (timeout 300 s) with a store that commits every 60 s at
    # most; the executor's heartbeat makes the engine commit the chunks computed before the
    # hang, so a scheduler's SIGKILL loses none of them.
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-m", "tests.pipelines.liveness_stall", str(tmp_path / "store"), "20"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # (provenance is committed just after the results it points at: wait for both, or a
        # loaded machine sees the kill land between the two commits)
        deadline, committed = time.monotonic() + 60, 0
        while time.monotonic() < deadline and committed < 8:
            assert proc.poll() is None, proc.communicate()[1]
            time.sleep(0.5)
            store = orca.DeltaStore(tmp_path / "store")
            tables = store.tables("results/stalls_at_the_end")
            provenance = store.scan("pipelines/stall/stalls_at_the_end")
            committed = min(store.scan(tables[0]).collect().height if tables else 0,
                            provenance.collect().height if provenance is not None else 0)
        assert proc.poll() is None  # still stuck in the hanging call
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    store = orca.DeltaStore(tmp_path / "store")
    (table,) = store.tables("results/stalls_at_the_end")
    assert store.scan(table).collect().height >= 8  # the first chunk (8 packets) and its provenance
    assert store.scan("pipelines/stall/stalls_at_the_end").collect().height >= 8


def test_threads_refuse_a_timeout_they_cannot_enforce(tmp_path):
    store = orca.DeltaStore(tmp_path / "store")
    with pytest.raises(ExecutorError, match="ThreadExecutor cannot time out calls of function 'sleepy'.*ProcessExecutor"):
        pods.pipeline(pods.sleepy.pod, store).run(ThreadExecutor(2), timeout=0.5, progress=False)


def test_in_process_timeouts_need_the_main_thread(tmp_path):
    # A cached pod's output is computed on a Polars thread when collected.
    cached = pods.sleepy.pod.cached(orca.DeltaStore(tmp_path / "store"), timeout=0.5)
    with pytest.raises(ExecutorError, match="InProcessExecutor cannot time out calls of function 'sleepy'.*main thread"):
        cached(pods.source(3)).to_polars()


def test_no_timer_is_set_without_a_timeout(tmp_path, monkeypatch):
    def no_timers(*args):
        raise AssertionError("a timer was set")

    monkeypatch.setattr(signal, "setitimer", no_timers)
    counts = pods.pipeline(pods.sleepy.pod, orca.DeltaStore(tmp_path / "store"), n=HANG).run(progress=False).counts
    assert counts["sleepy"].computed == HANG


def test_timeout_must_be_positive():
    with pytest.raises(ValueError, match="timeout must be"):
        orca.function_pod(output_keys="y", timeout=0)(lambda x: x)
    with pytest.raises(ValueError, match="timeout must be"):
        pods.sleepy.pod.cached(orca.MemoryStore(), timeout=-1)


# -- packets that crash their worker (item 18) ----------------------------------------------
@pytest.mark.slow
def test_a_packet_that_crashes_its_worker_is_one_failure_row(tmp_path):
    store = orca.DeltaStore(tmp_path / "store")
    pipeline = pods.pipeline(pods.crashing.pod, store)
    result = pipeline.run(ProcessExecutor(2), on_error="continue", progress=False)
    assert vars(result.counts["crashing"]) == {"cached": 0, "computed": 38, "failed": 2}
    rows = failures(store).rows(named=True)
    assert [r["tag"] for r in rows] == [f'{{"i":{ABORT}}}', f'{{"i":{EXIT}}}']
    assert {r["error_type"] for r in rows} == {"WorkerCrashed"}
    assert "killed by signal SIGABRT" in rows[0]["message"] and "exit code 3" in rows[1]["message"]
    assert "'crashing'" in rows[0]["message"]
    assert results(store, pods.crashing.pod).height == 38
    # A rerun computes nothing new: it tries the two failed packets again, which fail again.
    again = pipeline.run(ProcessExecutor(2), on_error="continue", progress=False)
    assert vars(again.counts["crashing"]) == {"cached": 38, "computed": 0, "failed": 2}
    assert results(store, pods.crashing.pod).height == 38


@pytest.mark.slow
def test_a_crashing_packet_under_raise_names_its_tag_and_commits_what_succeeded(tmp_path):
    store = orca.DeltaStore(tmp_path / "store")
    with pytest.raises(PodError, match=r"'crashing' failed for tag {'i': (13|17)}: WorkerCrashed"):
        pods.pipeline(pods.crashing.pod, store).run(ProcessExecutor(2), progress=False)
    assert results(store, pods.crashing.pod).height > 0


def abort(chunk: pa.Table) -> pa.Table:
    os.abort()


@pytest.mark.slow
def test_a_plain_chunk_function_that_kills_its_worker_is_an_error():
    with pytest.raises(ExecutorError, match=r"worker running .*abort.* died \(killed by signal SIGABRT\)"):
        list(ProcessExecutor(1).map_chunks(abort, pa.table({"x": [1, 2, 3]})))
