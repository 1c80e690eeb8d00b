"""Automatic upkeep (compaction, checkpoints) keeps runs cheap and loses nothing (issue 10);
why compaction and invalidation take the store's maintenance lease."""

from __future__ import annotations

import polars as pl
import pytest

import orca
from tests.helpers import SPAWN
from tests.pipelines import upkept


def grown(store: orca.Store, runs: int, step: int) -> orca.Pipeline:
    """Run the one-node pipeline ``runs`` times, each run over ``step`` more rows; the last one."""
    for r in range(runs):
        pipeline = orca.Pipeline("u", store=store)
        with pipeline:
            upkept.triple.pod(orca.DictSource([{"k": i, "x": i} for i in range(step * (r + 1))], tags=["k"],
                                              source_id="n"))
        pipeline.run(progress=False)
    return pipeline


def test_upkeep_checkpoints_the_logs(tmp_path):
    store = orca.DeltaStore(tmp_path / "s").with_options(checkpoint_every=3)
    pipeline = grown(store, 8, 10)
    for table in ("runs", "pipelines/u/triple", "assets/u/triple"):
        assert (tmp_path / "s" / table / "_delta_log" / "_last_checkpoint").exists(), table
    final = pipeline.asset("triple").collect()
    assert sorted(final["y"].to_list()) == [3 * i for i in range(80)]


def test_why_compaction_takes_a_lease(tmp_path):
    """deltalake's optimize commits over a concurrent compaction of the same files: rows double.
    If this starts failing (a conflict is raised), deltalake fixed it and the lease could go."""
    import pyarrow as pa
    from deltalake import DeltaTable, write_deltalake

    path = str(tmp_path / "t")
    for i in range(6):
        write_deltalake(path, pa.table({"a": [i]}), mode="append")
    first, second = DeltaTable(path), DeltaTable(path)
    first.optimize.compact()
    second.optimize.compact()
    assert DeltaTable(path).to_pyarrow_table().num_rows == 12


@pytest.mark.slow
def test_upkeep_under_four_writers_loses_nothing(tmp_path):
    path = str(tmp_path / "s")
    workers = [SPAWN.Process(target=upkept.run, args=(path, w, 4)) for w in range(4)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(timeout=240)
    assert [w.exitcode for w in workers] == [0] * 4
    store = orca.DeltaStore(path)
    n = 20 * 4 + 5 * 3  # the largest input any worker ran
    results = store.scan(upkept.triple.pod.results_table).collect()
    assert sorted(results["y"].to_list()) == [3 * i for i in range(n)]  # each packet's result, once
    prov = store.scan("pipelines/upkept/triple").collect()
    assert set(prov["__record_id"]) <= set(results["__record_id"])  # provenance resolves
    assert set(prov["k"]) == set(range(n))
    runs = store.scan("runs").collect()
    assert runs.filter(pl.col("event") == "finished").height == 16 and set(runs["status"]) >= {"succeeded"}
    from deltalake import DeltaTable
    results_path = tmp_path / "s" / upkept.triple.pod.results_table
    results_table = DeltaTable(str(results_path))
    assert len(results_table.file_uris()) < 16  # upkeep compacted while the others wrote (16 appends)
    # (whether it also trimmed the log depends on the workers' timing: the lease is often taken)
    raw = store.scan(upkept.triple.pod.results_table, include_invalidated=True).collect()
    assert raw.height >= n  # (duplicates the workers computed at once are settled at upkeep, or kept until then)
    # The asset (rewritten whole once it had compact_files files) is exactly one run's output.
    asset = pl.read_delta(str(tmp_path / "s" / "assets/upkept/triple"))
    assert asset["k"].is_unique().all()
    assert sorted(asset["k"].to_list()) == list(range(asset.height))
    assert asset.height in {20 * (r + 1) + 5 * w for r in range(4) for w in range(4)}
    assert (asset["y"] == 3 * asset["k"]).all()
    assert len(DeltaTable(str(tmp_path / "s" / "assets/upkept/triple")).file_uris()) <= 6  # replaced as it grew (16 merges would leave ~16)


def test_upkeep_compacts_small_files(tmp_path):
    store = orca.DeltaStore(tmp_path / "s").with_options(compact_files=4)
    pipeline = grown(store, 6, 5)
    from deltalake import DeltaTable
    for table in ("runs", upkept.triple.pod.results_table, "pipelines/u/triple"):
        assert len(DeltaTable(str(tmp_path / "s" / table)).file_uris()) < 4 + 2, table
    assert len(DeltaTable(str(tmp_path / "s" / "assets/u/triple")).file_uris()) >= 1  # (never compacted)
    assert sorted(pipeline.asset("triple").collect()["y"].to_list()) == [3 * i for i in range(30)]
    assert sorted(pipeline["triple"].results().collect()["y"].to_list()) == [3 * i for i in range(30)]


@pytest.mark.slow
def test_compaction_never_brings_an_invalidated_row_back(tmp_path):
    path = str(tmp_path / "s")
    store = orca.DeltaStore(path)
    for k in range(30):  # 30 small files
        store.append(upkept.TABLE, upkept.rows(range(k, k + 1), f"r{k}"), key=["k"])
        store.flush()
    # Two compactors and an invalidator: without the lease, rows double at every overlap of
    # two compactions (22M rows from 132 in one trial) and invalidated rows come back.
    racers = [SPAWN.Process(target=upkept.compactor, args=(path, 12)),
              SPAWN.Process(target=upkept.compactor, args=(path, 12)),
              SPAWN.Process(target=upkept.invalidator, args=(path, 30))]
    for p in racers:
        p.start()
    for p in racers:
        p.join(timeout=240)
    assert [p.exitcode for p in racers] == [0, 0, 0]
    store = orca.DeltaStore(path)
    live = store.scan(upkept.TABLE).collect()
    assert sorted(live["k"].to_list()) == [1000 + i for i in range(36)]  # every invalidation held
    everything = store.scan(upkept.TABLE, include_invalidated=True).collect()
    assert everything.height == 30 + 2 * 36  # no row lost or doubled (each compactor appended 36)
    assert "OPTIMIZE" in [c["operation"] for c in store.history(upkept.TABLE)]


def test_an_asset_is_never_optimized_and_stays_few_filed(tmp_path):
    store = orca.DeltaStore(tmp_path / "s").with_options(compact_files=3)
    pipeline = grown(store, 6, 3)
    from deltalake import DeltaTable
    asset = DeltaTable(store.uri("assets/u/triple"))
    assert len(asset.file_uris()) <= 3  # rewritten by its materialisation once it had 3 files
    version = store.version("assets/u/triple")
    store.compact("assets/u/triple")  # merges change it without the lease: left alone
    assert store.version("assets/u/triple") == version
    history = pipeline.history("triple")
    assert history["inserted"].to_list() == [3] * 6 and set(history["deleted"]) == {0}
    assert sorted(pipeline.asset("triple").collect()["y"].to_list()) == [3 * i for i in range(18)]


def test_why_an_asset_is_replaced_by_a_merge_not_an_overwrite(tmp_path):
    """deltalake commits an overwrite over a concurrent merge's insert (the inserted file survives
    beside the overwrite's rows); orca's replace_rows, a merge, conflicts and is retried."""
    import pyarrow as pa
    from deltalake import CommitProperties, DeltaTable, write_deltalake
    from deltalake.exceptions import CommitFailedError

    from orca.stores.delta import replace_rows

    def insert(table, k):
        (table.merge(pa.table({"k": [k], "v": [k]}), predicate="t.k = s.k", source_alias="s", target_alias="t")
         .when_not_matched_insert_all().execute())

    for how in ("overwrite", "replace_rows"):
        path = str(tmp_path / how)
        write_deltalake(path, pa.table({"k": [1, 2], "v": [1, 2]}))
        first, second = DeltaTable(path), DeltaTable(path)
        insert(first, 3)  # a concurrent writer inserts
        wanted = pa.table({"k": [1, 2, 4], "v": [1, 2, 4]})
        if how == "overwrite":
            write_deltalake(second, wanted, mode="overwrite")  # from a stale snapshot: commits
            assert sorted(DeltaTable(path).to_pyarrow_table()["k"].to_pylist()) == [1, 2, 3, 4]
        else:
            with pytest.raises(CommitFailedError):
                replace_rows(second, wanted, "k", CommitProperties())
            second.update_incremental()  # what DeltaStore's retry does
            replace_rows(second, wanted, "k", CommitProperties())
            assert sorted(DeltaTable(path).to_pyarrow_table()["k"].to_pylist()) == [1, 2, 4]


def test_a_compaction_does_not_make_a_run_read_its_output_again(tmp_path, monkeypatch):
    """The run's upkeep compacts the node's tables: the status the run ended with still holds
    (a compaction rewrites files, not rows), so reading the output hashes nothing again. Any
    other commit since -- here an append by another store object -- does make it read afresh."""
    import orca.engine

    store = orca.DeltaStore(tmp_path / "s").with_options(compact_files=2)
    pipeline = grown(store, 3, 10)
    results = upkept.triple.pod.results_table
    assert store.history(results, limit=1)[0]["operation"] == "OPTIMIZE"  # the last run compacted
    assert store.unchanged_since(results, store.version(results) - 1)

    def no_reading(*args, **kwargs):
        raise AssertionError("the node's status was read again")

    with monkeypatch.context() as patched:
        patched.setattr(orca.engine, "read_status", no_reading)
        assert sorted(pipeline["triple"].output.to_polars()["y"].to_list()) == [3 * i for i in range(30)]

    other = orca.DeltaStore(tmp_path / "s")
    other.append(results, other.scan(results).head(1).collect().to_arrow(), key=["__packet_hash"])
    other.flush()
    assert not store.unchanged_since(results, store.version(results) - 1)
    with monkeypatch.context() as patched, pytest.raises(AssertionError, match="read again"):
        patched.setattr(orca.engine, "read_status", no_reading)
        pipeline["triple"].output.to_polars()


def test_a_no_change_run_after_a_compaction_leaves_the_asset_unread(tmp_path, monkeypatch):
    """The asset records the table versions it was made from; a compaction moves them without
    changing a row, so the next no-change run must not compare the whole asset again."""
    store = orca.DeltaStore(tmp_path / "s").with_options(compact_files=2)
    grown(store, 3, 10)  # the last run's upkeep compacted the node's tables
    results = upkept.triple.pod.results_table
    assert store.history(results, limit=1)[0]["operation"] == "OPTIMIZE"

    def no_syncing(*args, **kwargs):
        raise AssertionError("the asset was compared again")

    monkeypatch.setattr(type(store), "sync_rows", no_syncing)
    pipeline = grown(store, 1, 30)  # the same 30 rows as the last run: nothing changed
    assert sorted(pipeline.asset("triple").collect()["y"].to_list()) == [3 * i for i in range(30)]


def test_commit_logs_are_trimmed_at_checkpoints_except_assets(tmp_path):
    """deltalake reads a table's whole commit-log folder on every commit: upkeep removes the
    commit files a checkpoint covers, in every table but the assets (time travel reads theirs)."""
    store = orca.DeltaStore(tmp_path / "s").with_options(checkpoint_every=5)
    first = grown(store, 1, 5)
    first_run = first.run(progress=False).run_id
    pipeline = grown(store, 8, 5)

    def commit_files(table: str) -> int:
        return len(list((tmp_path / "s" / table / "_delta_log").glob("*.json")))

    for table in ("runs", upkept.triple.pod.results_table, "pipelines/u/triple", "sources/n"):
        assert commit_files(table) <= 5 + 1, table  # at most the commits since the last checkpoint
    assert commit_files("assets/u/triple") >= 9  # one merge a run, all kept
    # What is read still works: another store object (another process), the run log, time
    # travel on the asset, the cache.
    other = orca.DeltaStore(tmp_path / "s")
    runs = other.scan("runs").collect()
    assert runs.filter(pl.col("event") == "finished").height == 10
    assert pipeline.handle(first_run).status() == "succeeded"
    assert first.asset("triple", run_id=first_run).collect().height == 5
    assert sorted(pipeline.run(progress=False).counts["triple"].__dict__.items()) == [
        ("cached", 40), ("computed", 0), ("failed", 0)]


def test_a_store_object_older_than_the_trim_still_appends(tmp_path):
    """Another process's upkeep removed the commit files this store object's handle stood on:
    its next append reloads the table instead of failing."""
    old, other = _two_store_objects(tmp_path / "s")
    _commit(old, 0)
    for i in range(1, 13):
        _commit(other, i)
    other.upkeep([_RESULTS])
    assert len(list((tmp_path / "s" / _RESULTS / "_delta_log").glob("*.json"))) < 5  # trimmed
    _commit(old, 99)
    assert sorted(orca.DeltaStore(tmp_path / "s").scan(_RESULTS).collect()["n"]) == [*range(13), 99]


def _duplicated(path, first: int, second: int):
    """A results table where two store objects (two processes) appended one packet's result:
    ``first`` committed first. Returns the table name and a third store object."""
    import pyarrow as pa

    name = "results/f/h"
    key = bytes([7]) * 16
    for value, run in ((first, "r-first"), (second, "r-second")):
        writer = orca.DeltaStore(path)
        writer.append(name, pa.table({"__packet_hash": [key], "v": [value], "__run_id": [run]}),
                      key=["__packet_hash"])
        writer.flush()
    return name, orca.DeltaStore(path).with_options(checkpoint_every=2, compact_files=2)


def _commits_then_upkeep(store: orca.DeltaStore, name: str, first: int) -> None:
    """Four one-row commits of new keys (``first`` on) to keyed table ``name``, then upkeep."""
    import pyarrow as pa

    for i in range(first, first + 4):
        store.append(name, pa.table({"__packet_hash": [bytes([i]) * 16], "v": [0], "__run_id": ["r"]}),
                     key=["__packet_hash"])
        store.flush()
    store.upkeep([name])


@pytest.mark.parametrize("forget", ["trim", "vacuum"])
def test_the_first_committed_duplicate_stays_served_when_commit_order_is_forgotten(tmp_path, forget):
    """Trimming the log and vacuuming replaced files make the commit that appended a row
    unknown; the dedup rule serves the first-committed row of a key, so each first deletes the
    duplicates it passes over, or the value served would silently change (here the second row
    would win the tie-break on values)."""
    from deltalake import DeltaTable

    name, store = _duplicated(tmp_path / "s", first=2, second=1)
    assert store.scan(name).collect()["v"].to_list() == [2]
    if forget == "trim":
        first_commit = tmp_path / "s" / name / "_delta_log" / f"{0:020d}.json"
        for checkpoint in range(2):
            _commits_then_upkeep(store, name, first=10 * checkpoint)
            # The first upkeep settles and trims only before the previous checkpoint (none yet): a
            # read that took its snapshot before the settle still needs the commit files.
            assert first_commit.exists() == (checkpoint == 0)
    else:  # as `orca maintain` does: compact (the rows move to a new file), settle, vacuum
        store.compact(name)
        assert store.scan(name).collect()["v"].to_list() == [2]  # (the replaced files order them)
        assert store.settle(name) == 1
        DeltaTable(store.uri(name)).vacuum(retention_hours=0, enforce_retention_duration=False, dry_run=False)
    fresh = orca.DeltaStore(tmp_path / "s")
    live = fresh.scan(name).collect().filter(pl.col("__packet_hash") == bytes([7]) * 16)
    assert live["v"].to_list() == [2] and live["__run_id"].to_list() == ["r-first"]
    raw = fresh.scan(name, include_invalidated=True).collect()
    assert raw.filter(pl.col("__run_id") == "r-second").is_empty()  # the passed-over copy is gone


def test_a_change_by_another_process_then_a_compaction_is_seen(tmp_path):
    """Only compactions are looked through: another process's invalidation followed by a
    compaction makes this process read the node again, recompute and rewrite its asset."""
    store = orca.DeltaStore(tmp_path / "s").with_options(compact_files=2)
    pipeline = grown(store, 3, 10)
    before = len(pipeline["triple"].output.to_polars())
    elsewhere = orca.Pipeline("u", store=orca.DeltaStore(tmp_path / "s"))
    with elsewhere:
        upkept.triple.pod(orca.DictSource([{"k": i, "x": i} for i in range(30)], tags=["k"], source_id="n"))
    assert elsewhere.invalidate("triple", pl.col("k") < 5) == 5
    store.compact(upkept.triple.pod.results_table)  # a compaction after the change
    assert before == 30 and len(pipeline["triple"].output.to_polars()) == 25
    result = pipeline.run(progress=False)
    assert result.counts["triple"].computed == 5
    asset = pipeline.asset("triple").collect()
    assert asset.height == 30 and asset.filter(pl.col("k") < 5)["__run_id"].to_list() == [result.run_id] * 5


def test_a_commit_during_the_log_read_is_not_taken_for_a_compaction(tmp_path, monkeypatch):
    """deltalake's history() numbers commits wrongly when one lands while it reads: a table
    that moved meanwhile counts as changed."""
    import pyarrow as pa
    from deltalake import DeltaTable

    store = orca.DeltaStore(tmp_path / "s")
    other = orca.DeltaStore(tmp_path / "s")
    name = "results/f/h"
    rows = lambda k: pa.table({"__packet_hash": [k], "v": [1], "__run_id": ["r"]})  # noqa: E731
    for key in ("a", "b", "c"):
        store.append(name, rows(key), key=["__packet_hash"])
        store.flush()
    since = store.version(name)
    other.append(name, rows("d"), key=["__packet_hash"])  # a change after `since`...
    other.flush()
    history = DeltaTable.history

    def racing(table, limit=None):
        if limit is not None:  # ...and a compaction that lands while the log is read
            monkeypatch.setattr(DeltaTable, "history", history)
            other.compact(name)
        return history(table, limit)

    monkeypatch.setattr(DeltaTable, "history", racing)
    assert not store.unchanged_since(name, since)
    assert not store.unchanged_since(name, since)  # (and afterwards, with nothing racing)


def test_time_travel_past_a_trimmed_log_says_so(tmp_path):
    """Only assets keep their commit log for time travel; asking another table for a version
    its trimmed log no longer reaches is a StoreError that says so (not "damaged")."""
    import pyarrow as pa

    store = orca.DeltaStore(tmp_path / "s").with_options(checkpoint_every=2)
    name = "results/f/h"
    for i in range(5):
        store.append(name, pa.table({"__packet_hash": [bytes([i]) * 16], "v": [i], "__run_id": ["r"]}),
                     key=["__packet_hash"])
        store.flush()
    store.upkeep([name])
    assert store.scan_version(name, version=store.version(name)).collect().height == 5
    with pytest.raises(orca.StoreError, match="older than the table's commit log reaches.*fine"):
        store.scan_version(name, version=1)
    import datetime  # (deltalake loads the oldest commit it has for an older time, silently)

    with pytest.raises(orca.StoreError, match="current at 2000.*older than the table's commit log reaches"):
        store.scan_version(name, as_of=datetime.datetime(2000, 1, 1, tzinfo=datetime.UTC))
    now = datetime.datetime.now(datetime.UTC)
    assert store.scan_version(name, as_of=now).collect().height == 5


def test_a_trim_under_a_load_is_not_called_damage():
    """deltalake's messages when a commit file it listed was removed by another process's trim."""
    from deltalake.exceptions import CommitFailedError, DeltaError

    from orca.stores.delta import _log_trimmed

    assert _log_trimmed(DeltaError("Invalid table version: 3"))
    assert _log_trimmed(DeltaError("Kernel error: File not found: /s/t/_delta_log/00000000000000000004.json"))
    assert _log_trimmed(DeltaError("Object at location s/t/_delta_log/00000000000000000020.checkpoint.parquet "
                                   "not found: No such file"))
    assert not _log_trimmed(DeltaError("Parquet error: EOF"))
    assert not _log_trimmed(CommitFailedError("Invalid table version: 3"))


@pytest.mark.parametrize("when", ["before the log read", "during the log read"])
def test_a_read_from_before_a_settle_and_trim_serves_the_settled_row(tmp_path, monkeypatch, when):
    """Another process settles the duplicates (deleting the later row) and, a checkpoint later,
    trims the log while this read, whose snapshot still holds both rows, learns their commits:
    it must still serve the first committed, not the tie-break's pick."""

    name, trimmer = _duplicated(tmp_path / "s", first=2, second=1)
    key = bytes([7]) * 16

    def settle_and_trim() -> None:
        for checkpoint in range(2):
            _commits_then_upkeep(trimmer, name, first=10 * checkpoint)

    reader = orca.DeltaStore(tmp_path / "s")
    method = "_appended_files" if when == "before the log read" else "_read_commit"
    original = getattr(reader, method)
    calls = []

    def racing(*args):
        if not calls:  # the whole log is read after the trim, or its first commit file before it
            calls.append(args)
            if method == "_appended_files":
                settle_and_trim()
                return original(*args)
            result = original(*args)
            settle_and_trim()
            return result
        return original(*args)

    monkeypatch.setattr(reader, method, racing)
    served = reader.scan(name).collect().filter(pl.col("__packet_hash") == key)
    assert calls and served["v"].to_list() == [2] and served["__run_id"].to_list() == ["r-first"]


def test_a_read_racing_an_invalidation_keeps_the_logs_order(tmp_path, monkeypatch):
    """A key whose rows are all gone now (invalidated meanwhile) was not settled: a read that
    cannot learn one row's commit (trimmed) keeps the log's order, the unknown row first."""
    import os

    import pyarrow as pa
    from deltalake import DeltaTable

    name, first_row = "results/f/h", bytes([8]) * 16
    writer = orca.DeltaStore(tmp_path / "s")
    for value, run in ((4, "r-first"), (0, "filler")):
        writer.append(name, pa.table({"__packet_hash": [first_row if run == "r-first" else bytes([1]) * 16],
                                      "v": [value], "__run_id": [run]}), key=["__packet_hash"])
        writer.flush()
    table = DeltaTable(writer.uri(name))
    table.create_checkpoint()
    for entry in os.listdir(os.path.join(writer.uri(name), "_delta_log")):  # a trim, done by hand
        if entry.endswith(".json") and int(entry[:20]) < table.version():
            os.remove(os.path.join(writer.uri(name), "_delta_log", entry))
    writer.append(name, pa.table({"__packet_hash": [first_row], "v": [0], "__run_id": ["r-later"]}),
                  key=["__packet_hash"])
    writer.flush()
    reader = orca.DeltaStore(tmp_path / "s")
    original = reader._find_commits

    def racing(*args):
        orca.DeltaStore(tmp_path / "s").invalidate(name, pl.Series([first_row]))
        monkeypatch.setattr(reader, "_find_commits", original)
        return original(*args)

    monkeypatch.setattr(reader, "_find_commits", racing)
    assert reader.lookup(name, pl.Series([first_row]))["v"].to_list() == [4]


def test_a_naive_time_is_utc_for_time_travel_past_a_trim(tmp_path):
    """deltalake reads a naive ``as_of`` as UTC; the check that it is not older than a trimmed
    log must read it the same way, whatever the machine's time zone."""
    import datetime
    import os
    import time

    import pyarrow as pa

    store = orca.DeltaStore(tmp_path / "s").with_options(checkpoint_every=2)
    name = "results/f/h"
    for i in range(5):
        store.append(name, pa.table({"__packet_hash": [bytes([i]) * 16], "v": [i], "__run_id": ["r"]}),
                     key=["__packet_hash"])
        store.flush()
    store.upkeep([name])
    naive_now = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    old = os.environ.get("TZ")
    os.environ["TZ"] = "Etc/GMT+10"  # ten hours behind UTC: read as local, "now" would be in the future
    time.tzset()
    try:
        assert store.scan_version(name, as_of=naive_now).collect().height == 5
        os.environ["TZ"] = "Etc/GMT-10"  # ten hours ahead: read as local, "now" would predate the log
        time.tzset()
        assert store.scan_version(name, as_of=naive_now).collect().height == 5
    finally:
        os.environ.pop("TZ") if old is None else os.environ.__setitem__("TZ", old)
        time.tzset()


def test_upkeep_judges_a_table_by_a_read_handle_only_if_read_since_the_last_upkeep(tmp_path):
    """A table this store object only read is judged by its read handle, as read (no write
    handle loaded); one read before its last upkeep is looked at afresh: commits another
    process made since are checkpointed, not left waiting for the table to be read again."""
    reader, other = _two_store_objects(tmp_path / "s")
    _commit(other, 0)
    assert reader.scan(_RESULTS).collect().height == 1  # read in this "run"
    reader.upkeep([_RESULTS])  # judged by the read handle it holds: nothing due
    for i in range(1, 8):  # another process commits, and never runs upkeep
        _commit(other, i)
    last_checkpoint = tmp_path / "s" / _RESULTS / "_delta_log" / "_last_checkpoint"
    assert not last_checkpoint.exists()
    reader.upkeep([_RESULTS])  # not read since its last upkeep: looked at afresh, and checkpointed
    assert last_checkpoint.exists()


_RESULTS = "results/f/h"


def _two_store_objects(path) -> tuple[orca.DeltaStore, orca.DeltaStore]:
    """Two store objects on one store (two processes), checkpointing every 5 versions."""
    return tuple(orca.DeltaStore(path).with_options(checkpoint_every=5) for _ in range(2))


def _commit(store: orca.DeltaStore, i: int) -> None:
    """Commit result row ``i`` to ``_RESULTS`` (a packet hash of 16 bytes ``i``)."""
    import pyarrow as pa

    row = pa.table({"__packet_hash": [bytes([i]) * 16], "n": [i], "__run_id": [f"r{i}"]})
    store.append(_RESULTS, row, key=["__packet_hash"])
    store.flush()
