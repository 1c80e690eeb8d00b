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
    operations = [c["operation"] for c in store.history(upkept.triple.pod.results_table)]
    assert "OPTIMIZE" in operations  # upkeep compacted while the others wrote
    # The asset (rewritten whole once it had compact_files files) is exactly one run's output.
    asset = pl.read_delta(str(tmp_path / "s" / "assets/upkept/triple"))
    assert asset["k"].is_unique().all()
    assert sorted(asset["k"].to_list()) == list(range(asset.height))
    assert asset.height in {20 * (r + 1) + 5 * w for r in range(4) for w in range(4)}
    assert (asset["y"] == 3 * asset["k"]).all()
    assert "WRITE" in [c["operation"] for c in store.history("assets/upkept/triple")]  # a rewrite


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


def test_compacting_an_asset_rewrites_it_without_a_materialisation(tmp_path):
    store = orca.DeltaStore(tmp_path / "s")
    pipeline = grown(store, 3, 3)
    before = pipeline.history("triple")
    store.compact("assets/u/triple")  # merges change assets without the lease: a whole rewrite
    from deltalake import DeltaTable
    assert len(DeltaTable(store.uri("assets/u/triple")).file_uris()) == 1
    assert pipeline.history("triple").equals(before)  # the same rows: not a materialisation
    version = store.version("assets/u/triple")
    pipeline.run(progress=False)  # nothing changed: the asset is still known to be current
    assert store.version("assets/u/triple") == version
    assert sorted(pipeline.asset("triple").collect()["y"].to_list()) == [3 * i for i in range(9)]
