"""Runs in slices (``Pipeline.run(memory_rows=N)``): memory bounded by a setting (issue 10)."""

from __future__ import annotations

import math

import hypothesis.strategies as st
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings

import orca
from orca import engine
from tests.pipelines.assets_files import build as build_files
from tests.test_assets import same, write


@orca.function_pod(output_keys="y")
def double(x: int) -> int:
    return 2 * x


@orca.function_pod(output_keys="z")
def plus_one(y: int) -> int:
    return y + 1


@orca.function_pod(output_keys="y")
def picky(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return 2 * x


def chain(store: orca.Store, xs: list[int], first: orca.FunctionPod = double.pod) -> orca.Pipeline:
    pipeline = orca.Pipeline("sliced", store=store)
    source = orca.PolarsSource(pl.DataFrame({"i": range(len(xs)), "x": xs}), tags=["i"], source_id="numbers")
    with pipeline:
        plus_one.pod(first(source))
    return pipeline


def outputs(pipeline: orca.Pipeline) -> dict[str, list]:
    return {label: pipeline[label].results().collect().sort("i").rows() for label in ("double", "plus_one")}


def test_a_run_in_slices_holds_at_most_memory_rows_rows_at_once(store, monkeypatch):
    seen: list[tuple[str, int]] = []
    calls: list[int] = []
    hash_inputs, map_chunks = engine.hash_inputs, orca.ThreadExecutor.map_chunks

    def hashing(pod, frame, path_columns):
        seen.append((pod.name, frame.height))
        return hash_inputs(pod, frame, path_columns)

    def mapping(self, fn, table: pa.Table):
        calls.append(table.num_rows)
        return map_chunks(self, fn, table)

    def whole(*args, **kwargs):
        raise AssertionError("a run in slices read a node's status whole")

    monkeypatch.setattr(engine, "hash_inputs", hashing)
    monkeypatch.setattr(orca.ThreadExecutor, "map_chunks", mapping)
    reads: list[str] = []
    results_index = engine.results_index

    def index(spec, columns):
        reads.append(spec.label)
        return results_index(spec, columns)

    monkeypatch.setattr(engine, "read_status", whole)
    monkeypatch.setattr(engine, "results_index", index)
    rows, limit = 300, 37
    xs = [k % 13 for k in range(rows)]
    pipeline = chain(store, xs)
    result = pipeline.run(orca.ThreadExecutor(), progress=False, memory_rows=limit)

    slices = math.ceil(rows / limit)
    expected = [limit] * (slices - 1) + [rows - limit * (slices - 1)]
    assert [h for name, h in seen if name == "double"] == expected
    assert [h for name, h in seen if name == "plus_one"] == expected
    assert calls and max(calls) <= limit  # every batch the executor got
    assert reads == ["double", "plus_one"]  # each node's results read once, for its index
    # as a run taken whole counts: every entry whose packet this run computed is computed
    assert result.counts["double"] == orca.Counts(cached=0, computed=rows, failed=0)
    assert result.counts["plus_one"] == orca.Counts(cached=0, computed=rows, failed=0)
    assert sum(calls) == 13 + 13  # each distinct packet computed once, though it recurs across slices

    monkeypatch.undo()
    assert outputs(pipeline)["plus_one"] == [(i, 2 * x + 1) for i, x in enumerate(xs)]
    assert same(pipeline, "plus_one").height == rows
    assert len(pipeline.history("plus_one")) == 1  # the run is one materialisation


def test_slices_give_what_a_whole_run_gives_through_every_kind_of_change(store, tmp_path):
    whole_store = orca.MemoryStore() if isinstance(store, orca.MemoryStore) else orca.DeltaStore(tmp_path / "whole")
    steps = [list(range(30)), list(range(30)), list(range(45)), [x + 100 for x in range(10)] + list(range(5))]
    for xs in steps:
        sliced, whole = chain(store, xs), chain(whole_store, xs)
        a = sliced.run(progress=False, memory_rows=4)
        b = whole.run(progress=False)
        assert a.counts == b.counts
        assert outputs(sliced) == outputs(whole)
        for label in ("double", "plus_one"):
            asset = same(sliced, label)
            assert asset.drop("__run_id").equals(same(whole, label).drop("__run_id"))
        assert [len(sliced.history(n)) for n in ("double", "plus_one")] == \
            [len(whole.history(n)) for n in ("double", "plus_one")]


@orca.function_pod(output_keys="text")
def spelled(x: int) -> str:
    return "n" * (x % 5) + str(x)


def test_wide_outputs_are_read_per_slice_and_give_what_a_whole_run_gives(store, tmp_path, monkeypatch):
    """Text outputs are not held in the key index: each slice reads its stored packets' outputs."""
    whole_store = orca.MemoryStore() if isinstance(store, orca.MemoryStore) else orca.DeltaStore(tmp_path / "whole")
    reads: list[int] = []
    results_of = engine._results_of
    monkeypatch.setattr(engine, "_results_of", lambda spec, keys, columns: reads.append(keys.len()) or
                        results_of(spec, keys, columns))
    for xs in ([k % 7 for k in range(20)], [k % 9 for k in range(26)]):
        pipelines = []
        for target in (store, whole_store):
            pipeline = orca.Pipeline("wide", store=target)
            source = orca.PolarsSource(pl.DataFrame({"i": range(len(xs)), "x": xs}), tags=["i"], source_id="wide")
            with pipeline:
                spelled.pod(source)
            pipelines.append(pipeline)
        a = pipelines[0].run(progress=False, memory_rows=6)
        b = pipelines[1].run(progress=False)
        assert a.counts == b.counts
        assert same(pipelines[0], "spelled").drop("__run_id").equals(same(pipelines[1], "spelled").drop("__run_id"))
    assert sum(reads) > 0  # the second input's stored packets were read slice by slice


def test_a_no_change_rerun_in_slices_writes_no_asset_version_and_computes_nothing(store):
    pipeline = chain(store, list(range(20)))
    pipeline.run(progress=False, memory_rows=6)
    versions = len(pipeline.history("plus_one"))
    again = pipeline.run(progress=False, memory_rows=6)
    assert again.counts["plus_one"] == orca.Counts(cached=20, computed=0, failed=0)
    assert len(pipeline.history("plus_one")) == versions
    whole = pipeline.run(progress=False)  # a run taken whole trusts what the sliced run recorded
    assert whole.counts["plus_one"].computed == 0 and len(pipeline.history("plus_one")) == versions


def test_failures_in_slices_are_counted_and_left_out_of_the_asset(store):
    xs = [1, 2, 3, 4, 3, 5, 6, 3]
    pipeline = chain(store, xs, first=picky.pod)
    result = pipeline.run(progress=False, memory_rows=3, on_error="continue")
    assert result.status == "failed"
    assert result.counts["picky"] == orca.Counts(cached=0, computed=5, failed=3)
    assert result.counts["plus_one"] == orca.Counts(cached=0, computed=5, failed=0)
    assert sorted(same(pipeline, "plus_one")["i"].to_list()) == [i for i, x in enumerate(xs) if x != 3]
    assert pipeline.failures(open_only=True).height == 3


def test_files_in_slices_follow_edits_and_deletions(store, tmp_path):
    data = tmp_path / "data"
    write(data, a="x", b="yy", c="zzz", d="dddd")
    pipeline = build_files(store, data)
    pipeline.run(progress=False, memory_rows=1)
    assert same(pipeline, "double")["m"].to_list() == [2, 4, 6, 8]
    write(data, a="xxxxx")
    (data / "c.txt").unlink()
    pipeline = build_files(store, data)
    result = pipeline.run(progress=False, memory_rows=2)
    assert result.counts["size"].computed == 1
    assert same(pipeline, "double")["m"].to_list() == [10, 4, 8]


@orca.function_pod(output_keys="s")
def add(y: int, w: int) -> int:
    return y + w


def left_and_right() -> tuple[orca.Source, orca.Source]:
    return (orca.PolarsSource(pl.DataFrame({"i": range(10), "x": range(10)}), tags=["i"], source_id="left"),
            orca.PolarsSource(pl.DataFrame({"i": range(10), "w": range(10, 20)}), tags=["i"], source_id="right"))


def test_nodes_fed_by_an_operator_over_nodes_run_whole_with_a_warning(store):
    pipeline = orca.Pipeline("joined", store=store)
    left, right = left_and_right()
    with pipeline:
        add.pod(double.pod(left).join(right))
    with pytest.warns(UserWarning, match=r"\['add'\].*run whole"):
        result = pipeline.run(progress=False, memory_rows=3)
    assert result.counts["double"].computed == 10 and result.counts["add"].computed == 10
    assert sorted(pipeline["add"].results().collect()["s"].to_list()) == [3 * i + 10 for i in range(10)]
    same(pipeline, "add")


@pytest.mark.parametrize("bad", [0, -1, 2.5, True, "10"])
def test_memory_rows_must_be_a_positive_integer(bad):
    pipeline = chain(orca.MemoryStore(), [1, 2])
    with pytest.raises(ValueError, match="memory_rows"):
        pipeline.run(progress=False, memory_rows=bad)


def test_memory_rows_is_not_combined_with_claims():
    pipeline = chain(orca.MemoryStore(), [1, 2])
    with pytest.raises(ValueError, match="memory_rows cannot be combined"):
        pipeline.run(progress=False, memory_rows=10, claim=True)


def test_shards_in_slices_add_up_to_one_run(tmp_path):
    """A SLURM array over a large input: each process a shard, each in slices. Shards follow
    tags, so every shard finds its upstream entries done in each slice."""
    store, rows = orca.DeltaStore(tmp_path / "store"), list(range(40))
    computed = {"double": 0, "plus_one": 0}
    for i in range(3):
        result = chain(orca.DeltaStore(tmp_path / "store"), rows).run(progress=False, memory_rows=6, shard=(i, 3))
        for label in computed:
            computed[label] += result.counts[label].computed
    assert computed == {"double": 40, "plus_one": 40}  # each entry computed by exactly one shard
    final = chain(store, rows).run(progress=False, memory_rows=6)
    assert all(c.computed == 0 for c in final.counts.values())
    assert same(chain(store, rows), "plus_one").height == 40


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(runs=st.lists(st.tuples(st.lists(st.integers(0, 6), min_size=1, max_size=25), st.integers(1, 9)), min_size=1, max_size=3))
def test_any_slicing_gives_the_whole_run(runs):
    """Property: for any inputs (repeated packets included) and any memory_rows, run after run,
    a pipeline run in slices has the counts, outputs and assets of one run whole."""
    sliced_store, whole_store = orca.MemoryStore(), orca.MemoryStore()
    for xs, memory_rows in runs:
        sliced, whole = chain(sliced_store, xs), chain(whole_store, xs)
        assert sliced.run(progress=False, memory_rows=memory_rows).counts == whole.run(progress=False).counts
        assert outputs(sliced) == outputs(whole)
        assert same(sliced, "plus_one").drop("__run_id").equals(same(whole, "plus_one").drop("__run_id"))


# -- the store's staged sync -------------------------------------------------------------------
def _reader(table: pa.Table):
    return lambda: pa.RecordBatchReader.from_batches(table.schema, table.to_batches(max_chunksize=2))


def _ids(*ns: int) -> pl.Series:
    return pl.Series("__entry_id", ns, pl.UInt128)


def _rows(*ns: int, v: int = 0) -> pa.Table:
    return pa.table({"__entry_id": orca.hashing.keys_binary(_ids(*ns)), "v": pa.array([n + v for n in ns], pa.int64())})


def test_sync_staged_deletes_and_replaces_in_one_version(store):
    store.ensure("t", _rows().schema)
    first = store.sync_staged("t", "__entry_id", _reader(_rows(1, 2, 3)), _ids(1, 2, 3), _ids(),
                              since=store.version("t"))
    second = store.sync_staged("t", "__entry_id", _reader(_rows(3, 4, v=10)), _ids(3, 4), _ids(1), since=first)
    assert second == store.version("t") and second > first
    assert sorted(store.scan("t").collect()["v"].to_list()) == [2, 13, 14]


def test_sync_staged_writes_nothing_when_the_table_moved(store):
    store.ensure("t", _rows().schema)
    version = store.sync_staged("t", "__entry_id", _reader(_rows(1, 2)), _ids(1, 2), _ids(), since=store.version("t"))
    assert store.sync_staged("t", "__entry_id", _reader(_rows(1)), _ids(1), _ids(2), since=version - 1) is None
    assert store.sync_staged("absent", "__entry_id", _reader(_rows(1)), _ids(1), _ids(), since=0) is None
    assert store.version("t") == version and store.scan("t").collect().height == 2


def test_an_asset_another_writer_moves_during_a_run_in_slices_is_left_to_the_next_run(store, monkeypatch):
    pipeline = chain(store, list(range(12)))
    pipeline.run(progress=False, memory_rows=5)
    commit = orca.assets.Staging.commit

    def racing(self, reflects):  # another writer deletes an asset row just before the commit
        if self.table.endswith("plus_one"):
            some = self.store.scan(self.table).collect()["__entry_id"].head(1)
            self.store.delete_rows(self.table, "__entry_id", some)
        return commit(self, reflects)

    monkeypatch.setattr(orca.assets.Staging, "commit", racing)
    bigger = chain(store, list(range(15)))
    with pytest.warns(UserWarning, match="another writer changed the asset"):
        bigger.run(progress=False, memory_rows=5)
    assert bigger.asset("plus_one").collect().height == 11  # that writer's table, untouched
    assert same(bigger, "double").height == 15  # the other node's asset was written all the same
    monkeypatch.undo()
    bigger.run(progress=False, memory_rows=5)
    assert same(bigger, "plus_one").height == 15


# -- what review found (each of these failed before its fix) -----------------------------------
def test_an_invalidation_in_slices_records_and_rewrites_what_a_whole_run_does(store, tmp_path):
    """Invalidating one entry drops its packet's result, which another entry shares: that entry
    is novel in a run taken whole, and must be in slices too, though an earlier slice stored the
    packet again (else its count and asset row differ)."""
    whole_store = orca.MemoryStore() if isinstance(store, orca.MemoryStore) else orca.DeltaStore(tmp_path / "whole")
    xs = [1, 2, 3, 1]
    sliced, whole = chain(store, xs), chain(whole_store, xs)
    sliced.run(progress=False, memory_rows=2)
    whole.run(progress=False)
    for pipeline in (sliced, whole):
        pipeline.invalidate("double", pl.col("i") == 0)
    a, b = sliced.run(progress=False, memory_rows=2), whole.run(progress=False)
    assert a.counts == b.counts
    assert a.counts["double"] == orca.Counts(cached=2, computed=2, failed=0)
    assert same(sliced, "double").filter(pl.col("i") == 3)["__run_id"].item() == a.run_id  # its row rewritten


def test_nodes_of_one_function_share_what_they_compute_in_slices(store, tmp_path):
    """Two nodes of one function write one results table: in slices, as whole, what one computes
    the other finds (no packet computed twice, no second result row)."""
    def build(target):
        pipeline = orca.Pipeline("twins", store=target)
        with pipeline:
            for name in ("a", "b"):
                double.pod(orca.PolarsSource(pl.DataFrame({"i": range(8), "x": range(8)}), tags=["i"],
                                             source_id=name))
        return pipeline

    whole_store = orca.MemoryStore() if isinstance(store, orca.MemoryStore) else orca.DeltaStore(tmp_path / "whole")
    sliced, whole = build(store), build(whole_store)
    a, b = sliced.run(progress=False, memory_rows=3), whole.run(progress=False)
    assert a.counts == b.counts == {"double": orca.Counts(0, 8, 0), "double_2": orca.Counts(8, 0, 0)}
    table = double.pod.results_table
    assert store.scan(table).collect().height == whole_store.scan(table).collect().height == 8
    assert same(sliced, "double_2")["y"].to_list() == [2 * i for i in range(8)]


def test_an_operator_made_outside_the_pipeline_over_a_node_runs_whole(store):
    pipeline = orca.Pipeline("outside", store=store)
    left, right = left_and_right()
    with pipeline:
        doubled = double.pod(left)
    joined = doubled.join(right)  # not recorded: the pipeline cannot see that it reads a node
    with pipeline:
        add.pod(joined)
    with pytest.warns(UserWarning, match="run whole"):
        result = pipeline.run(progress=False, memory_rows=3)
    assert result.counts["add"].computed == 10
    same(pipeline, "add")


def test_a_first_run_in_slices_that_leaves_nothing_done_still_makes_the_asset(store):
    pipeline = chain(store, [3, 3, 3], first=picky.pod)
    result = pipeline.run(progress=False, memory_rows=2, on_error="continue")
    assert result.counts["picky"].failed == 3
    assert pipeline.asset("picky").collect().height == 0


def test_a_finished_run_in_slices_reports_its_progress_whole(store):
    pipeline = chain(store, list(range(12)))
    pipeline.run(progress=False, memory_rows=5)
    result = chain(store, list(range(14))).run(progress=False, memory_rows=5)
    progress = result.handle.progress()
    assert progress["double"]["completed"] == 14 and progress["double"]["fraction"] == 1.0


def test_packets_repeated_within_a_slice_do_not_make_later_slices_read_the_store(store, monkeypatch):
    pipeline = chain(store, [k % 3 for k in range(30)])
    looked: list[str] = []
    lookup = type(store).lookup

    def counting(self, name, keys, columns=None):
        looked.append(name)
        return lookup(self, name, keys, columns)

    monkeypatch.setattr(type(store), "lookup", counting)
    # Slice 1 computes the 3 packets; later slices find them in the index (narrow outputs, held
    # once each: a packet held twice looks like two live rows, which sends a slice to the store).
    result = pipeline.run(progress=False, memory_rows=5)
    assert result.counts["double"].computed == 30
    # (the slice that computed them reads them back once per node: its packets repeat, so the
    # status after it is read, not assembled from what was computed)
    assert len([n for n in looked if n.startswith("results/")]) <= 2
