"""Function nodes: provenance, entry ids, two-phase iteration, invalidation."""

from __future__ import annotations

import polars as pl
import pytest

import orca
from orca.names import ENTRY_ID, hex_ids
from orca.nodes import shard_filter
from tests.helpers import result_row

CALLS: list[int] = []


@orca.function_pod(output_keys="y")
def inc(x: int) -> int:
    CALLS.append(x)
    return x + 1


@pytest.fixture
def store(store):
    CALLS.clear()
    return store


@orca.function_pod(output_keys="z")
def double(y: int) -> int:
    return 2 * y


def source(rows, source_id="s"):
    return orca.DictSource(rows, tags=["k"], source_id=source_id)


def test_rerun_computes_nothing(store):
    src = source([{"k": i, "x": i} for i in range(20)])
    node = orca.FunctionNode(inc.pod, src, store=store, pipeline="p")
    assert node.run() == orca.Counts(cached=0, computed=20, failed=0)
    assert len(CALLS) == 20
    assert node.run() == orca.Counts(cached=20, computed=0, failed=0)
    assert len(CALLS) == 20
    assert sorted(node.results().collect()["y"].to_list()) == list(range(1, 21))


def test_entry_id_is_the_documented_hash():
    # docs/pipelines.md: hash of {tags, system tags, __packet_hash as 16 bytes} XOR node identity.
    src = source([{"k": 1, "x": 5}, {"k": 2, "x": 5}])
    node = orca.FunctionNode(inc.pod, src, store=orca.MemoryStore(), pipeline="p")
    node.run()
    prov = node.provenance().collect().sort("k")
    record_ids = src.to_polars(include_system=True).sort("k")["__tag__s"].to_list()
    packet = orca.hash_packet({"x": 5})
    for k, record_id, entry_id in zip([1, 2], record_ids, prov[ENTRY_ID], strict=True):
        row = orca.hash_packet({"k": k, "__tag__s": record_id, "__packet_hash": bytes.fromhex(packet)})
        assert entry_id == f"{int(row, 16) ^ int(node.identity, 16):032x}"
    assert prov["__packet_hash"].to_list() == [packet, packet]


def test_chained_node_provenance_points_at_the_upstream_results(store):
    # The downstream node makes the __source__ references of its input itself (for the rows
    # it records); they must equal what the upstream output stream shows.
    src = source([{"k": i, "x": i % 3} for i in range(7)])
    first = orca.FunctionNode(inc.pod, src, store=store, pipeline="p", label="first")
    second = orca.FunctionNode(double.pod, first.output, store=store, pipeline="p", label="second")
    first.run()
    second.run()
    upstream = first.output.to_polars(include_system=True).select("k", "__source__y")
    prov = store.scan(second.provenance_table).collect().join(upstream, on="k")
    assert prov.height == 7
    assert prov["__source__y"].to_list() == prov["__source__y_right"].to_list()
    assert all(v.startswith(inc.pod.results_table + "#") for v in prov["__source__y"])
    assert second.run() == orca.Counts(cached=7, computed=0, failed=0)


def test_iterating_a_chained_node_survives_its_upstream_running_meanwhile(store):
    src = source([{"k": i, "x": i} for i in range(6)])
    first = orca.FunctionNode(inc.pod, src, store=store, pipeline="p", label="first")
    first.run()
    orca.FunctionNode(double.pod, first.output, store=store, pipeline="p", label="second").run()
    grown = source([{"k": i, "x": i} for i in range(8)])
    first = orca.FunctionNode(inc.pod, grown, store=store, pipeline="p", label="first")
    first.run()
    second = orca.FunctionNode(double.pod, first.output, store=store, pipeline="p", label="second")
    rows = iter(second)
    seen = [next(rows)]
    first.run()  # the upstream runs again (a new status) while the downstream is mid-iteration
    second.provenance().collect()
    seen += list(rows)
    assert sorted(t["k"] for t, _ in seen) == list(range(8))
    prov = store.scan(second.provenance_table).collect()
    upstream = first.output.to_polars(include_system=True).select("k", "__source__y")
    assert prov.join(upstream, on="k").filter(pl.col("__source__y") != pl.col("__source__y_right")).height == 0


@orca.function_pod(output_keys=["half", "label"])
def split(x: int) -> tuple[float, str]:
    if x % 7 == 3:
        raise ValueError("unlucky")
    return x / 2, f"n{x}"


@pytest.mark.parametrize("shared_packets", [False, True])
def test_output_after_a_run_is_what_a_fresh_node_reads(store, shared_packets, monkeypatch):
    # After a run the node serves its output from what it computed when nobody else wrote to
    # the results table meanwhile; it must equal what the store holds.
    if not shared_packets:  # this case must not need to read the results back
        monkeypatch.setattr(orca.engine, "_refreshed", lambda *a: pytest.fail("read back"))
    warm = orca.FunctionNode(split.pod.cached(store, on_error="continue"), source([{"k": i, "x": i} for i in range(5)]),
                             store=store, pipeline="p", label="warm")
    warm.run()  # some packets are cache hits for the node below
    rows = [{"k": i, "x": i // 2 if shared_packets else i} for i in range(30)]
    node = orca.FunctionNode(split.pod.cached(store, on_error="continue"), source(rows), store=store, pipeline="p")
    counts = node.run()
    assert counts.failed > 0 and counts.cached > 0 and counts.computed > 0
    fresh = orca.FunctionNode(split.pod.cached(store), source(rows), store=store, pipeline="p")
    expected = fresh.output.to_polars(include_system=True).sort("k")
    assert node.output.to_polars(include_system=True).sort("k").equals(expected)


def test_all_null_tag_column_is_stored(store):
    # A tag column of Arrow type null (always None) must not stop provenance from committing.
    src = orca.DictSource([{"k": i, "t": None, "x": i} for i in range(3)], tags=["k", "t"], source_id="s")
    node = orca.FunctionNode(inc.pod, src, store=store, pipeline="p")
    assert node.run() == orca.Counts(cached=0, computed=3, failed=0)
    assert node.provenance().collect().height == 3
    store.compact(node.provenance_table)
    assert node.run() == orca.Counts(cached=3, computed=0, failed=0)


def test_adding_rows_computes_exactly_those(store):
    rows = [{"k": i, "x": i} for i in range(100)]
    orca.FunctionNode(inc.pod, source(rows), store=store, pipeline="p").run()
    CALLS.clear()
    more = rows + [{"k": 100, "x": 100}]
    counts = orca.FunctionNode(inc.pod, source(more), store=store, pipeline="p").run()
    assert counts == orca.Counts(cached=100, computed=1, failed=0)
    assert CALLS == [100]


def test_same_packet_under_new_tag_is_a_hit_adding_only_provenance(store):
    node = orca.FunctionNode(inc.pod, source([{"k": 1, "x": 7}]), store=store, pipeline="p")
    node.run()
    node2 = orca.FunctionNode(inc.pod, source([{"k": 1, "x": 7}, {"k": 2, "x": 7}]), store=store, pipeline="p")
    counts = node2.run()
    assert counts == orca.Counts(cached=2, computed=0, failed=0)
    assert CALLS == [7]
    assert store.scan(inc.pod.results_table).collect().height == 1
    prov = store.scan(node2.provenance_table).collect()
    assert prov.height == 2
    assert prov["__record_id"].n_unique() == 1


def test_one_packet_under_n_tags_one_result_n_provenance_rows(store):
    node = orca.FunctionNode(inc.pod, source([{"k": i, "x": 5} for i in range(3)]), store=store, pipeline="p")
    node.run()
    assert CALLS == [5]
    results = hex_ids(store.scan(inc.pod.results_table).collect())
    prov = node.provenance().collect()
    assert results.height == 1 and prov.height == 3
    assert set(prov["__record_id"]) == set(results["__record_id"])
    assert prov["__entry_id"].n_unique() == 3


def test_provenance_columns(store):
    node = orca.FunctionNode(inc.pod, source([{"k": 1, "x": 2, "other": "a"}]), store=store, pipeline="p")
    node.run()
    prov = store.scan(node.provenance_table).collect()
    assert node.provenance_table == "pipelines/p/inc"
    for column in ["k", "__system_tags", "__entry_id", "__packet_hash", "__record_id", "__source__x",
                   "__run_id", "__recorded_at"]:
        assert column in prov.columns, column
    assert "x" not in prov.columns and "other" not in prov.columns  # no input data copied
    assert prov["__source__x"][0].startswith("s#")
    # the full provenance view carries result metadata
    full = node.provenance().collect()
    assert {"__function_hash", "__computed_at", "__duration_s"} <= set(full.columns)


def test_two_sources_sharing_a_node_table_never_leak(store):
    a = source([{"k": 1, "x": 10}, {"k": 2, "x": 20}], source_id="a")
    b = source([{"k": 1, "x": 10}, {"k": 3, "x": 30}], source_id="b")
    node_a = orca.FunctionNode(inc.pod, a, store=store, pipeline="p", label="f")
    node_b = orca.FunctionNode(inc.pod, b, store=store, pipeline="p", label="f")
    node_a.run()
    node_b.run()
    out_a = node_a.output.to_polars().sort("k")
    out_b = node_b.output.to_polars().sort("k")
    assert out_a.to_dicts() == [{"k": 1, "y": 11}, {"k": 2, "y": 21}]
    assert out_b.to_dicts() == [{"k": 1, "y": 11}, {"k": 3, "y": 31}]
    assert [dict(t) for t, _ in node_b] == [{"k": 1}, {"k": 3}]


def test_two_phase_iteration_yields_existing_then_novel(store):
    node = orca.FunctionNode(inc.pod, source([{"k": 1, "x": 1}]), store=store, pipeline="p")
    node.run()
    node2 = orca.FunctionNode(inc.pod, source([{"k": 2, "x": 2}, {"k": 1, "x": 1}]), store=store, pipeline="p")
    it = iter(node2)
    first = next(it)
    assert dict(first[0]) == {"k": 1} and CALLS == [1]  # yielded before anything is computed
    rest = list(it)
    assert [dict(t) for t, _ in rest] == [{"k": 2}]
    assert CALLS == [1, 2]


def test_results_committed_before_provenance(tmp_path):
    order: list[str] = []

    class Recording(orca.MemoryStore):
        def _commit(self, name, data, key):
            order.append(name)
            return super()._commit(name, data, key)

    store = Recording(max_rows=3)
    node = orca.FunctionNode(inc.pod, source([{"k": i, "x": i} for i in range(10)]), store=store, pipeline="p")
    node.run()
    results_at = [i for i, n in enumerate(order) if n.startswith("results/")]
    prov_at = [i for i, n in enumerate(order) if n.startswith("pipelines/")]
    assert results_at and prov_at and results_at[0] < prov_at[0]
    # every provenance row points at a committed result
    prov = store.scan(node.provenance_table).collect()
    results = store.scan(inc.pod.results_table).collect()
    assert set(prov["__record_id"]) <= set(results["__record_id"])


@pytest.mark.parametrize("kind", ["memory", "delta"])
def test_no_commit_holds_provenance_ahead_of_its_results(kind, tmp_path, monkeypatch):
    # Small buffers and provenance batches: buffers fill in the middle of results/provenance runs.
    store = orca.MemoryStore(max_rows=6) if kind == "memory" else orca.DeltaStore(tmp_path / "s", max_rows=6)
    committed, early = set(), []
    original = store._commit

    def spy(name, data, key):
        if name.startswith("results/"):
            committed.update(data.column("__packet_hash").to_pylist())
        elif name.startswith("pipelines/"):
            early.extend(set(data.column("__packet_hash").to_pylist()) - committed)
        original(name, data, key)

    monkeypatch.setattr(store, "_commit", spy)
    executor = orca.InProcessExecutor(initial_chunk_rows=1, max_chunk_rows=1)
    node = orca.FunctionNode(inc.pod.cached(store, executor=executor),
                             source([{"k": i, "x": i} for i in range(12)]), store=store, pipeline="p")
    assert node.run(batch_rows=2).computed == 12
    assert early == []
    assert store.scan(node.provenance_table).collect().height == 12


def test_failed_entry_stays_out_of_the_output_when_another_writer_stores_its_packet(tmp_path):
    other = orca.DeltaStore(tmp_path / "s")  # stands for another process on the same store

    @orca.function_pod(output_keys="y")
    def flaky(x: int) -> int:
        if x == 3:  # another process stores this packet's result, then this call fails
            other.append(flaky.pod.results_table, result_row(flaky, orca.hash_packet({"x": 3}), {"y": 4}),
                         key=["__packet_hash"])
            other.flush()
            raise RuntimeError("failed here, succeeded elsewhere")
        return x + 1

    store = orca.DeltaStore(tmp_path / "s")
    src = source([{"k": i, "x": i} for i in range(5)])
    node = orca.FunctionNode(flaky.pod.cached(store, on_error="continue"), src, store=store, pipeline="p")
    assert node.run() == orca.Counts(cached=0, computed=4, failed=1)
    assert 3 not in store.scan(node.provenance_table).collect()["k"].to_list()
    assert sorted(node.output.to_polars()["k"]) == [0, 1, 2, 4]  # as a fresh node sees it
    fresh = orca.FunctionNode(flaky.pod.cached(store), src, store=store, pipeline="p")
    assert sorted(fresh.output.to_polars()["k"]) == [0, 1, 2, 4]


def test_failure_is_not_cached_and_has_no_provenance(store):
    @orca.function_pod(output_keys="y")
    def fragile(x: int) -> int:
        if x == 3:
            raise ValueError("bad x")
        return x

    node = orca.FunctionNode(fragile.pod, source([{"k": i, "x": i} for i in range(5)]), store=store, pipeline="p")
    counts = node.run(on_error="continue")
    assert counts == orca.Counts(cached=0, computed=4, failed=1)
    prov = store.scan(node.provenance_table).collect()
    assert sorted(prov["k"]) == [0, 1, 2, 4]
    failures = store.scan("failures").collect()
    assert failures.height == 1
    row = failures.row(0, named=True)
    assert row["node"] == "fragile" and row["error_type"] == "ValueError" and '"k":3' in row["tag"]
    with pytest.raises(orca.PodError, match="'k': 3"):
        node.run()  # on_error="raise" (the default) retries the failed entry and raises


def test_invalidate_recomputes_and_keeps_history(store):
    node = orca.FunctionNode(inc.pod, source([{"k": i, "x": i} for i in range(4)]), store=store, pipeline="p")
    node.run()
    assert node.invalidate(pl.col("k") >= 2) == 2
    CALLS.clear()
    counts = node.run()
    assert counts == orca.Counts(cached=2, computed=2, failed=0)
    assert sorted(CALLS) == [2, 3]
    history = store.scan(node.provenance_table, include_invalidated=True).collect()
    assert history.filter(pl.col("__invalidated_at").is_not_null()).height == 2
    assert store.scan(node.provenance_table).collect().height == 4


def test_shard_filter_partitions_entry_ids():
    ids = pl.DataFrame({ENTRY_ID: [orca.hash_packet({"i": i}) for i in range(300)]})
    parts = [ids.filter(shard_filter((i, 3), ENTRY_ID)) for i in range(3)]
    assert sum(p.height for p in parts) == 300
    assert all(p.height > 50 for p in parts)
    with pytest.raises(ValueError):
        shard_filter((3, 3))


def test_node_construction_does_no_io(tmp_path):
    path = tmp_path / "never"
    node = orca.FunctionNode(inc.pod, source([{"k": 1, "x": 1}]), store=orca.DeltaStore(path), pipeline="p")
    assert not path.exists()
    assert len(node) == 0  # reading an empty store creates nothing either
    assert not path.exists()


def test_len_and_iteration(store):
    node = orca.FunctionNode(inc.pod, source([{"k": i, "x": i} for i in range(3)]), store=store, pipeline="p")
    assert len(node) == 0
    assert sorted(p["y"] for _, p in node) == [1, 2, 3]
    assert len(node) == 3


def test_output_drops_invalidated_entries_until_rerun(store):
    node = orca.FunctionNode(inc.pod, source([{"k": i, "x": i} for i in range(3)]), store=store, pipeline="p")
    node.run()
    node.run()  # an unchanged run: the node may serve its output from what it just looked up
    node.invalidate(pl.col("k") == 0)
    assert sorted(node.results().collect()["k"].to_list()) == [1, 2]
    node.run()
    assert sorted(node.results().collect()["k"].to_list()) == [0, 1, 2]


def test_clear_errors_for_bad_node_arguments(store):
    with pytest.raises(orca.PodError, match="needs a Stream"):
        orca.FunctionNode(inc.pod, pl.DataFrame({"k": [1], "x": [1]}), store=store, pipeline="p")
    node = orca.FunctionNode(inc.pod, source([{"k": 1, "x": 1}]), store=store, pipeline="p")
    with pytest.raises(orca.SchemaError, match="unknown tag column"):
        node.invalidate(pl.col("nope") == 1)


def test_store_root_that_is_a_file_fails_at_once(tmp_path):
    (tmp_path / "store").write_text("not a directory")
    node = orca.FunctionNode(inc.pod, source([{"k": 1, "x": 1}]), store=orca.DeltaStore(tmp_path / "store"),
                             pipeline="p")
    with pytest.raises(orca.StoreError, match="is a file"):
        node.run()
    assert (tmp_path / "store").read_text() == "not a directory"
