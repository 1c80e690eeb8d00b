"""Pipelines: recording, running in order, run log, results, invalidation, executors."""

from __future__ import annotations

import json

import polars as pl
import pytest

import orca

CALLS: dict[str, list] = {"a": [], "b": [], "c": []}


@orca.function_pod(output_keys="a")
def step_a(x: int) -> int:
    CALLS["a"].append(x)
    return x % 3  # many inputs map to few outputs


@orca.function_pod(output_keys="b")
def step_b(a: int) -> int:
    CALLS["b"].append(a)
    return a * 10


@orca.function_pod(output_keys="c")
def step_c(b: int) -> str:
    CALLS["c"].append(b)
    return f"c{b}"


@pytest.fixture
def store(tmp_path):
    for calls in CALLS.values():
        calls.clear()
    return orca.DeltaStore(tmp_path / "store")


def build(store, rows, name="p"):
    pipeline = orca.Pipeline(name, store=store)
    with pipeline:
        src = orca.DictSource(rows, tags=["k"], source_id="src")
        step_c.pod(step_b.pod(step_a.pod(src)))
    return pipeline


def test_nodes_recorded_with_unique_labels(store):
    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        src = orca.DictSource([{"k": 1, "x": 1}], tags=["k"], source_id="src")
        first = step_a.pod(src)
        step_a.pod(src.filter(pl.col("k") > 0))
        step_b.pod(first)
    assert list(pipeline.nodes) == ["step_a", "filter", "step_a_2", "step_b"]
    assert isinstance(pipeline["step_a_2"], orca.FunctionNode)
    assert isinstance(pipeline["filter"], orca.OperatorNode)
    with pytest.raises(KeyError, match="step_a_2"):
        pipeline["nope"]


def test_pod_outside_pipeline_records_nothing(store):
    pipeline = orca.Pipeline("p", store=store)
    src = orca.DictSource([{"k": 1, "x": 1}], tags=["k"], source_id="src")
    out = step_a.pod(src)
    assert pipeline.nodes == {}
    assert out.to_polars()["a"].to_list() == [1]


def test_a_stream_with_no_tags_at_all_runs_and_reruns(store):
    """A stream built by hand may have neither tags nor system tags: each row's entry is then
    its packet alone (the entry ids once failed with an Arrow error: no columns selected)."""
    from orca.streams import Stream

    stream = Stream(pl.DataFrame({"x": [4, 5]}).lazy(), tag_columns=(), packet_columns=("x",), identity="by-hand")
    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        step_a.pod(stream)
    assert pipeline.run(progress=False).counts["step_a"] == orca.Counts(0, 2, 0)
    assert pipeline.run(progress=False).counts["step_a"] == orca.Counts(2, 0, 0)
    assert sorted(pipeline["step_a"].output.to_polars()["a"].to_list()) == [1, 2]  # (x % 3)
    assert set(pl.scan_delta(store.uri("pipelines/p/step_a")).collect()["__system_tags"]) == {"{}"}


def test_run_in_dependency_order_then_everything_cached(store):
    rows = [{"k": i, "x": i} for i in range(30)]
    result = build(store, rows).run(progress=False)
    assert result.status == "succeeded"
    assert result.counts["step_a"] == orca.Counts(0, 30, 0)
    # step_b sees 30 entries but only 3 distinct packets: 3 computations, 30 provenance rows
    assert result.counts["step_b"] == orca.Counts(0, 30, 0)
    assert len(CALLS["b"]) == 3
    again = build(store, rows).run(progress=False)
    assert {k: v.computed for k, v in again.counts.items()} == {"step_a": 0, "step_b": 0, "step_c": 0}
    assert len(CALLS["a"]) == 30


def test_upstream_change_recomputes_only_affected_rows(store):
    rows = [{"k": i, "x": i} for i in range(9)]
    build(store, rows).run(progress=False)
    for calls in CALLS.values():
        calls.clear()
    changed = [dict(r, x=100) if r["k"] == 4 else r for r in rows]  # 100 % 3 == 1 == 4 % 3
    changed = [dict(r, x=50) if r["k"] == 0 else r for r in changed]  # 50 % 3 == 2 != 0
    result = build(store, changed).run(progress=False)
    assert sorted(CALLS["a"]) == [50, 100]
    assert result.counts["step_a"].computed == 2
    # b: k=4's packet (a=1) is unchanged -> nothing new; k=0's a changed 0 -> 2: a cache hit (a=2 exists)
    assert CALLS["b"] == [] and CALLS["c"] == []
    assert result.counts["step_b"] == orca.Counts(cached=9, computed=0, failed=0)


def test_runs_table_and_handle(store):
    pipeline = build(store, [{"k": i, "x": i} for i in range(5)])
    result = pipeline.run(progress=False)
    runs = store.scan("runs").collect().filter(pl.col("run_id") == result.run_id).sort("seq")
    assert runs["event"].to_list()[0] == "started" and runs["event"].to_list()[-1] == "finished"
    assert runs["status"][-1] == "succeeded"
    assert runs.filter(pl.col("event") == "node_finished")["computed"].to_list() == [5, 5, 5]
    handle = orca.RunHandle.from_json(result.handle.to_json())
    assert json.loads(result.handle.to_json())["run_id"] == result.run_id
    assert handle.status() == "succeeded"
    progress = handle.progress()
    assert progress["step_c"] == {"total": 5, "completed": 5, "failed": 0, "fraction": 1.0}


def test_on_error_continue_lists_failures_and_reports_failed(store):
    @orca.function_pod(output_keys="y")
    def picky(x: int) -> int:
        if x % 4 == 0:
            raise RuntimeError(f"no multiples of four: {x}")
        return x

    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        picky.pod(orca.DictSource([{"k": i, "x": i} for i in range(8)], tags=["k"], source_id="src"))
    result = pipeline.run(on_error="continue", progress=False)
    assert result.status == "failed"
    assert result.counts["picky"] == orca.Counts(0, 6, 2)
    assert sorted(result.failures["tag"].to_list()) == ['{"k":0}', '{"k":4}']
    assert set(result.failures["error_type"]) == {"RuntimeError"}
    assert result.handle.status() == "failed"
    assert pipeline["picky"].results().collect().height == 6


def test_on_error_raise_commits_successes_and_logs_failed_run(store):
    @orca.function_pod(output_keys="y")
    def breaks(x: int) -> int:
        if x == 50:
            raise ValueError("fifty")
        return x

    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        breaks.pod(orca.DictSource([{"k": i, "x": i} for i in range(100)], tags=["k"], source_id="src"))
    with pytest.raises(orca.PodError, match="'k': 50"):
        pipeline.run(progress=False)
    runs = store.scan("runs").collect().sort("seq")
    assert runs["status"][-1] == "failed"
    committed = store.scan(pipeline["breaks"].provenance_table).collect()
    assert committed.height >= 1 and 50 not in committed["k"].to_list()


@pytest.mark.parametrize("executor", [orca.ThreadExecutor(max_workers=2), orca.ProcessExecutor(max_workers=2)],
                         ids=["threads", "processes"])
def test_executors_give_the_same_tables(tmp_path, executor):
    rows = [{"k": i, "x": i} for i in range(200)]
    local = build(orca.DeltaStore(tmp_path / "a"), rows).run(progress=False)
    other_store = orca.DeltaStore(tmp_path / "b")
    other = build(other_store, rows).run(executor=executor, progress=False)
    assert {k: v.computed for k, v in other.counts.items()} == {k: v.computed for k, v in local.counts.items()}
    a = build(orca.DeltaStore(tmp_path / "a"), rows)["step_c"].results().collect().sort("k")
    b = build(other_store, rows)["step_c"].results().collect().sort("k")
    assert a.equals(b)


def test_pipeline_invalidate(store):
    pipeline = build(store, [{"k": i, "x": i} for i in range(6)])
    pipeline.run(progress=False)
    assert pipeline.invalidate("step_a", where=pl.col("k") == 1) == 1
    result = build(store, [{"k": i, "x": i} for i in range(6)]).run(progress=False)
    assert result.counts["step_a"].computed == 1
    with pytest.raises(orca.OrcaError, match="operator"):
        p2 = orca.Pipeline("q", store=store)
        with p2:
            orca.DictSource([{"k": 1, "x": 1}], tags=["k"], source_id="s").filter(pl.col("k") == 1)
        p2.invalidate("filter")


def test_old_function_versions_listable_by_function_hash(store):
    rows = [{"k": i, "x": i} for i in range(3)]

    @orca.function_pod(output_keys="y", name="versioned", version="1")
    def v1(x: int) -> int:
        return x

    @orca.function_pod(output_keys="y", name="versioned", version="2")
    def v2(x: int) -> int:
        return x

    for pod in (v1.pod, v2.pod):
        pipeline = orca.Pipeline("p", store=store)
        with pipeline:
            pod(orca.DictSource(rows, tags=["k"], source_id="src"))
        pipeline.run(progress=False)
    every = pl.concat([store.scan(t).collect() for t in store.tables("results/versioned")])
    assert every.group_by("__function_hash").len()["len"].to_list() == [3, 3]
    old = every.filter(pl.col("__function_hash") == v1.pod.identity.hash)
    assert old.height == 3


def test_construction_performs_no_io(tmp_path):
    path = tmp_path / "store"
    pipeline = build(orca.DeltaStore(path), [{"k": 1, "x": 1}])
    assert pipeline.nodes and not path.exists()


def test_bad_arguments_fail_before_any_io(tmp_path):
    path = tmp_path / "store"
    pipeline = build(orca.DeltaStore(path), [{"k": 1, "x": 1}])
    with pytest.raises(ValueError, match="shard"):
        pipeline.run(shard=(2, 2), progress=False)
    with pytest.raises(ValueError, match="on_error"):
        pipeline.run(on_error="ignore", progress=False)
    assert not path.exists()


def test_node_after_join_records_sources_from_each_side(store):
    @orca.function_pod(output_keys="ratio")
    def ratio(signal: float, weight: int) -> float:
        return signal / weight

    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        recordings = orca.DictSource([{"subject": "a", "session": 1, "signal": 1.0},
                                      {"subject": "a", "session": 2, "signal": 3.0},
                                      {"subject": "b", "session": 1, "signal": 2.0}],
                                     tags=["subject", "session"], source_id="recordings")
        subjects = orca.DictSource([{"subject": "a", "weight": 2}, {"subject": "b", "weight": 4}],
                                   tags=["subject"], source_id="subjects")
        joined = recordings.join(subjects)
        ratio.pod(joined)
    pipeline.run(progress=False)
    prov = pipeline["ratio"].provenance().collect().sort("subject", "session")
    rec = recordings.to_polars(include_system=True).sort("subject", "session")
    subj = subjects.to_polars(include_system=True).sort("subject")
    assert prov["__source__signal"].to_list() == rec["__source__signal"].to_list()
    expected_weight = {row["subject"]: row["__source__weight"] for row in subj.to_dicts()}
    assert prov["__source__weight"].to_list() == [expected_weight[s] for s in prov["subject"]]
    assert all(v.startswith("subjects#") for v in prov["__source__weight"])
    # both sources' system tags are part of the provenance row
    tags = [json.loads(t) for t in prov["__system_tags"]]
    assert all(set(t) == {"__tag__recordings", "__tag__subjects"} for t in tags)


def test_shards_of_a_chain_add_up_to_one_run(store):
    rows = [{"k": i, "x": i} for i in range(60)]
    for i in range(3):  # each shard finds its upstream rows done: shards follow tags, not nodes
        build(store, rows).run(shard=(i, 3), progress=False)
    pipeline = build(store, rows)
    assert {k: len(n.results().collect()) for k, n in pipeline.function_nodes.items()} == \
        {"step_a": 60, "step_b": 60, "step_c": 60}
    final = pipeline.run(progress=False)
    assert all(c.computed == 0 for c in final.counts.values())


def test_results_other_writers_commit_during_a_run_get_provenance(store):
    other_store = orca.DeltaStore(store.location)

    @orca.function_pod(output_keys="y")
    def racy(x: int) -> int:
        if x == 0:  # stands for another process committing results meanwhile
            other = orca.DictSource([{"k": i, "x": i} for i in range(10, 20)], tags=["k"], source_id="o")
            racy.pod.cached(other_store)(other).to_polars()
        return x + 1

    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        racy.pod.cached(store, recheck_seconds=0)(
            orca.DictSource([{"k": i, "x": i} for i in range(30)], tags=["k"], source_id="s"))
    result = pipeline.run(progress=False, batch_rows=10)
    assert result.counts["racy"] == orca.Counts(cached=10, computed=20, failed=0)
    assert pipeline["racy"].results().collect().height == 30


def test_cached_pods_recorded_in_a_pipeline_use_its_store(tmp_path):
    store = orca.MemoryStore()
    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        step_a.pod.cached(orca.DeltaStore(tmp_path / "elsewhere"), retries=2)(
            orca.DictSource([{"k": 1, "x": 1}], tags=["k"], source_id="s"))
    pipeline.run(progress=False)
    assert pipeline["step_a"].cached.retries == 2
    assert store.tables("results") and not (tmp_path / "elsewhere").exists()


def test_run_rejects_a_non_executor(store):
    with pytest.raises(orca.ExecutorError, match="executor"):
        build(store, [{"k": 1, "x": 1}]).run("threads", progress=False)


def test_pipeline_name_and_store_options_are_checked():
    with pytest.raises(orca.OrcaError, match="pipeline name"):
        orca.Pipeline("bad name!", store=orca.MemoryStore())
    with pytest.raises(orca.StoreError, match="max_rows"):
        orca.MemoryStore().with_options(rows=3)
