"""Stores on object storage: S3 (a moto server) and Azure (Azurite), started by ``conftest.py``
on 127.0.0.1. Each test runs once per backend unless it names one."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time

import polars as pl
import pyarrow as pa
import pytest

import orca
from orca.errors import StoreError
from orca.runs import RunHandle
from orca.stores.delta import MARKER
from tests.conftest import ObjectStore
from tests.pipelines import cached_double

_SUBPROCESS_SECONDS = 120


@orca.function_pod(output_keys="y")
def square(x: int) -> int:
    if x == 13:
        raise ValueError("thirteen is unlucky")
    return x * x


@orca.function_pod(output_keys="z")
def plus_one(y: int) -> int:
    return y + 1


def two_nodes(store: orca.Store, n: int) -> orca.Pipeline:
    """``square`` then ``plus_one`` over ``n`` ints (the 13th fails)."""
    pipeline = orca.Pipeline("two", store=store)
    with pipeline:
        source = orca.DictSource([{"i": i, "x": i} for i in range(n)], tags=["i"], source_id="ints")
        plus_one.pod(square.pod(source))
    return pipeline


def env_with(server: ObjectStore) -> dict[str, str]:
    """This process's environment plus the server's credentials (for subprocesses)."""
    return {**os.environ, **server.env}


def test_a_pipeline_runs_and_reruns_with_assets(object_store: ObjectStore) -> None:
    store = object_store.store("pipe")
    pipeline = two_nodes(store, 20)
    first = pipeline.run(progress=False, on_error="continue")
    assert first.counts["square"].computed == 19 and first.counts["square"].failed == 1
    asset = pipeline.asset("plus_one").collect().sort("i")
    assert asset["z"].to_list() == [i * i + 1 for i in range(20) if i != 13]
    assert pipeline.failures()["message"].to_list() == ["thirteen is unlucky"]

    again = pipeline.run(progress=False, on_error="continue")
    assert again.counts["square"].computed == 0 and again.counts["plus_one"].computed == 0
    assert len(pipeline.history("plus_one")) == 1  # nothing changed: no new materialisation

    bigger = two_nodes(store.with_options(), 22)  # two new rows: a second materialisation
    bigger.run(progress=False, on_error="continue")
    assert len(bigger.history("plus_one")) == 2
    assert bigger.asset("plus_one").collect().height == 21
    assert bigger.asset("plus_one", run_id=first.run_id).collect().height == 19  # time travel
    lineage = bigger.lineage("plus_one", pl.col("i") == 3)
    assert "ints" in lineage["source_id"].drop_nulls().to_list()

    # The store is a directory of tables like a local one: listed, marked, compacted.
    assert {"runs", "failures", "assets/two/plus_one"} <= set(store.tables())
    results = store.tables("results/")
    assert len(results) == 2
    store.compact(results[0])
    assert store.scan(results[0]).collect().height == 21
    assert store._kind(store._join(store.location, MARKER)) == "file"


def test_polars_reads_a_result_table_with_the_storage_options(object_store: ObjectStore) -> None:
    store = object_store.store("scan")
    two_nodes(store, 5).run(progress=False, on_error="continue")
    name = next(t for t in store.tables("results/") if "square" in t)
    frame = pl.scan_delta(store.uri(name), storage_options=store.storage_options).collect()
    assert sorted(frame["y"].to_list()) == [0, 1, 4, 9, 16]
    assert store.uri(name).startswith(f"{object_store.scheme}://{object_store.bucket}/")


def test_a_prefix_holding_other_files_is_refused(object_store: ObjectStore) -> None:
    url = object_store.url("foreign")
    pl.LazyFrame({"a": [1]}).sink_ndjson(url + "/data/notes.json", storage_options=object_store.options)
    store = orca.DeltaStore(url, storage_options=object_store.options)
    store.append("t", pa.table({"a": [1]}))
    with pytest.raises(StoreError, match="not an orca store"):
        store.flush()


def keyed(keys: list[str], run: str, value: int) -> pa.Table:
    n = len(keys)
    return pa.table({"__packet_hash": keys, "value": [value] * n, "__run_id": [run] * n})


def test_upkeep_trims_the_commit_log_and_keeps_the_first_commit(object_store: ObjectStore) -> None:
    """The commit files a checkpoint covers are removed on the object store too, after the
    duplicate rows the dedup rule passes over are settled: the first committer stays served."""
    store = object_store.store("trim").with_options(checkpoint_every=2)
    for keys, run, value in ((["a", "b"], "run-9", 9), (["a", "c"], "run-1", 1), (["d"], "run-2", 2)):
        store.append("results/f/h", keyed(keys, run, value), key=["__packet_hash"])
        store.flush()
    store.upkeep(["results/f/h"])  # settles; the trim waits for the next checkpoint
    for keys, run, value in ((["f"], "run-4", 4), (["g"], "run-5", 5)):
        store.append("results/f/h", keyed(keys, run, value), key=["__packet_hash"])
        store.flush()
    store.upkeep(["results/f/h"])
    log = store._entries(store._join(store.uri("results/f/h"), "_delta_log"))
    assert f"{0:020d}.json" not in log and f"{1:020d}.json" not in log
    fresh = orca.DeltaStore(store.location, storage_options=object_store.options)
    assert fresh.lookup("results/f/h", pl.Series(["a"]))["value"].to_list() == [9]
    raw = fresh.scan("results/f/h", include_invalidated=True).collect()
    assert sorted(raw["value"].to_list()) == [1, 2, 4, 5, 9, 9]  # run-1's copy of "a" is gone
    store.append("results/f/h", keyed(["e"], "run-3", 3), key=["__packet_hash"])  # a handle from before the trim
    store.flush()
    assert fresh.scan("results/f/h").collect().height == 7


def test_the_first_commit_wins_and_damage_is_reported(object_store: ObjectStore, monkeypatch) -> None:
    """The dedup rule reads the commit log and data files on the object store; a missing data
    file is a StoreError naming it, found before any work."""
    store = object_store.store("dedup")
    for keys, run, value in ((["a", "b"], "run-9", 9), (["a", "c"], "run-1", 1)):
        store.append("results/f/h", keyed(keys, run, value), key=["__packet_hash"])
        store.flush()
    store.invalidate("results/f/h", pl.Series(["b"]))  # rewrites the file holding a's winner
    store.compact("results/f/h")
    monkeypatch.setattr("orca.stores.delta._MANY_FILES", 1)  # sizes by listing, not per file
    fresh = orca.DeltaStore(store.location, storage_options=object_store.options)
    for reader in (store, fresh):
        assert reader.lookup("results/f/h", pl.Series(["a"]))["value"].to_list() == [9]
        assert reader.scan("results/f/h").collect().sort("__packet_hash")["value"].to_list() == [9, 1]

    live_file = fresh._delta("results/f/h").file_uris()[0]
    fresh._handler().delete_file(fresh._key(live_file))
    with pytest.raises(StoreError, match="is missing") as error:
        orca.DeltaStore(store.location, storage_options=object_store.options).scan("results/f/h")
    assert live_file in str(error.value)


def test_s3_refuses_to_commit_without_conditional_writes(s3_server: ObjectStore, monkeypatch) -> None:
    monkeypatch.delenv("AWS_CONDITIONAL_PUT", raising=False)
    unsafe = {k: v for k, v in s3_server.options.items() if k != "aws_conditional_put"}
    url = s3_server.url("unsafe")
    store = orca.DeltaStore(url, storage_options=unsafe)
    store.append("t", pa.table({"a": [1]}))
    with pytest.raises(StoreError, match="aws_conditional_put='etag'") as error:
        store.flush()
    assert url in str(error.value) and "testing" not in str(error.value)
    assert store.tables() == [] and store.scan("t") is None  # nothing written; reads work
    with pytest.raises(StoreError, match="is 'disabled'"):
        orca.DeltaStore(url, storage_options={**unsafe, "aws_conditional_put": "disabled"}).ensure(
            "t", pa.schema([("a", pa.int64())]))

    monkeypatch.setenv("AWS_CONDITIONAL_PUT", "etag")  # the environment variable is enough
    store = orca.DeltaStore(url, storage_options=unsafe)
    assert store.storage_options["aws_conditional_put"] == "etag"
    store.append("t", pa.table({"a": [1]}))
    store.flush()
    assert store.scan("t").collect()["a"].to_list() == [1]


def test_credentials_never_reach_a_message(azure_server: ObjectStore) -> None:
    secret = "c2VjcmV0LWtleS10aGF0LW11c3Qtc3RheS1zZWNyZXQ="
    store = orca.DeltaStore(azure_server.url("badkey"),
                            storage_options={**azure_server.options, "azure_storage_account_key": secret})
    with pytest.raises(StoreError) as error:
        store.tables()
    assert secret not in str(error.value) and "cannot reach the store" in str(error.value)
    assert secret not in repr(store)


def test_local_paths_reject_storage_options(tmp_path) -> None:
    with pytest.raises(StoreError, match="storage_options apply to object-storage URLs"):
        orca.DeltaStore(tmp_path / "s", storage_options={"AWS_REGION": "us-east-1"})


def test_run_handles_carry_the_location_not_the_credentials(object_store: ObjectStore) -> None:
    store = object_store.store("handle")
    result = two_nodes(store, 4).run(progress=False)
    text = result.handle.to_json()
    assert all(v not in text for k, v in object_store.options.items() if "key" in k.lower())
    polled = RunHandle.from_json(text, storage_options=object_store.options)
    assert polled.store == store.location
    assert polled.status() == "succeeded"
    assert {k: v["completed"] for k, v in polled.progress().items()} == {"square": 4, "plus_one": 4}


def test_the_pipeline_handle_names_the_url(s3_server: ObjectStore) -> None:
    store = s3_server.store("url")
    assert two_nodes(store, 1).handle("r").store == store.location


@pytest.mark.slow
def test_a_run_handle_is_polled_from_another_process(object_store: ObjectStore) -> None:
    store = object_store.store("poll")
    result = two_nodes(store, 6).run(progress=False)
    handle = result.handle
    poll = textwrap.dedent("""
        import json, sys
        from orca.runs import RunHandle
        handle = RunHandle.from_json(sys.stdin.read())  # credentials from the environment
        print(json.dumps({"status": handle.status(), "progress": handle.progress()}))
    """)
    done = subprocess.run([sys.executable, "-c", poll], input=handle.to_json(), capture_output=True,
                          text=True, env=env_with(object_store), timeout=_SUBPROCESS_SECONDS, check=True)
    report = json.loads(done.stdout)
    assert report["status"] == "succeeded"
    assert report["progress"]["plus_one"]["fraction"] == 1.0


@pytest.mark.slow
def test_concurrent_processes_record_each_result_once(object_store: ObjectStore) -> None:
    url, n = object_store.url("cached"), 60
    env = {**env_with(object_store), "ORCA_TEST_DELAY": "0.01"}
    procs = [subprocess.Popen([sys.executable, "-m", "tests.pipelines.cached_double", url, str(n), "20"],
                              env=env, stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for proc in procs:
        _, err = proc.communicate(timeout=_SUBPROCESS_SECONDS)
        assert proc.returncode == 0, err
    store = orca.DeltaStore(url, storage_options=object_store.options)
    [name] = store.tables("results/")
    results = store.scan(name).collect()
    assert results.height == n and results["__packet_hash"].n_unique() == n
    assert sorted(results["z"].to_list()) == [2 * i for i in range(n)]
    out = cached_double.slow_double.pod.cached(store)(cached_double.source(n)).to_polars()
    assert out["z"].to_list() == [2 * i for i in range(n)]


_APPEND = textwrap.dedent("""
    import sys, pyarrow as pa, orca
    url, writer, commits = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    store = orca.DeltaStore(url, max_rows=10**9)
    for c in range(commits):
        store.append("log", pa.table({"writer": [writer] * 5, "commit": [c] * 5, "row": list(range(5))}))
        store.flush()
""")


@pytest.mark.slow
def test_no_commit_is_lost_when_writers_race(object_store: ObjectStore) -> None:
    """Four processes commit to one table at once: every commit's rows are there (on S3 this
    needs conditional writes: without them a racing commit overwrites another's)."""
    url, writers, commits = object_store.url("race"), 4, 6
    procs = [subprocess.Popen([sys.executable, "-c", _APPEND, url, str(w), str(commits)],
                              env=env_with(object_store), stderr=subprocess.PIPE, text=True)
             for w in range(writers)]
    for proc in procs:
        _, err = proc.communicate(timeout=_SUBPROCESS_SECONDS)
        assert proc.returncode == 0, err
    store = orca.DeltaStore(url, storage_options=object_store.options)
    rows = store.scan("log").collect()
    history = store.history("log")
    operations = [c["operation"] for c in history]
    found = set(rows.select("writer", "commit").iter_rows())
    missing = sorted({(w, c) for w in range(writers) for c in range(commits)} - found)
    assert not missing and rows.height == writers * commits * 5, (missing, rows.height, history)
    # One append commit per flush. (Racing creators may each commit a CREATE TABLE: on Azurite
    # the loser's create is sometimes retried as version 1 instead of failing; it adds no rows.)
    assert operations.count("WRITE") == writers * commits, operations
    assert set(operations) <= {"WRITE", "CREATE TABLE"}, operations


def test_a_local_store_is_unchanged(tmp_path) -> None:
    store = orca.DeltaStore(tmp_path / "local")
    assert not store.remote and store.storage_options is None
    assert store.location == str(tmp_path / "local") and store.uri("a/b") == str(tmp_path / "local" / "a" / "b")
    started = time.perf_counter()
    two_nodes(store, 5).run(progress=False, on_error="continue")
    assert time.perf_counter() - started < 30
    assert set(store.tables()) >= {"runs", "failures", "assets/two/plus_one"}


@pytest.mark.slow
def test_the_cli_lists_and_maintains_a_store_by_url(object_store: ObjectStore) -> None:
    store = object_store.store("cli")
    for n in (2, 4):  # a few small files per table
        two_nodes(store.with_options(), n).run(progress=False)

    def orca_cli(*args: str) -> dict:
        done = subprocess.run([sys.executable, "-m", "orca", "--store", store.location, "--json", *args],
                              capture_output=True, text=True, env=env_with(object_store),
                              timeout=_SUBPROCESS_SECONDS)
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    listing = orca_cli("ls")
    assert listing["store"] == store.location
    assert {t["name"]: t["rows"] for t in listing["tables"]}["assets/two/plus_one"] == 4
    actions = {(a["action"], a["table"]) for a in orca_cli("maintain", "--retention-hours", "0")["actions"]
               if a["done"]}
    assert {("compact", "runs"), ("vacuum", "runs")} <= actions
    rerun = two_nodes(store.with_options(), 4)
    assert rerun.run(progress=False).counts["square"].computed == 0  # nothing lost, nothing doubled
    assert rerun.asset("plus_one").collect().sort("i")["z"].to_list() == [1, 2, 5, 10]


@pytest.mark.slow
def test_the_cli_reports_an_unreachable_store_in_one_line(s3_server: ObjectStore) -> None:
    done = subprocess.run([sys.executable, "-m", "orca", "--store", "s3://no-such-bucket/orca", "ls"],
                          capture_output=True, text=True, env=env_with(s3_server), timeout=_SUBPROCESS_SECONDS)
    assert done.returncode == 1
    assert done.stderr.startswith("orca: ")
    assert "s3://no-such-bucket/orca: cannot reach the store (NoSuchBucket: " in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "testing" not in done.stderr
