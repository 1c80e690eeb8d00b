"""A rerun with nothing new reads each node's status from its asset (one join) instead of its
results and provenance tables -- and only when the asset reflects those tables as they are."""

from __future__ import annotations

import datetime
import decimal
import json
import random
import subprocess
import sys

import deltalake
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import orca
import orca.engine

N = 40


@orca.function_pod(output_keys=["i", "f", "s", "l", "d", "t", "m"])
def many(x: int) -> tuple[int, float, str, list[int], datetime.date, datetime.datetime, decimal.Decimal]:
    """Outputs of many types: each must come back from the asset exactly as from the results."""
    return (x * 3, x / 7, f"v{x}", [x, -x], datetime.date(2020, 1, 1) + datetime.timedelta(days=x),
            datetime.datetime(2021, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(seconds=x),
            decimal.Decimal(x) / 4)


@orca.function_pod(output_keys="y")
def follow(i: int) -> int:
    return i + 1


def source(n: int = N, edit: int | None = None) -> orca.PolarsSource:
    xs = [x + (1000 if x == edit else 0) for x in range(n)]
    return orca.PolarsSource(pl.DataFrame({"k": list(range(n)), "x": xs}), tags=["k"], source_id="src")


def build(store: orca.Store, src: orca.Source) -> orca.Pipeline:
    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        follow.pod(many.pod(src))
    return pipeline


@pytest.fixture(autouse=True, scope="module")
def small_inputs_read_assets():
    """The asset stands in for the tables from 50k input rows on; here from the first row."""
    with pytest.MonkeyPatch.context() as patched:
        patched.setattr(orca.engine, "_ASSET_MIN_ROWS", 1)
        yield


@pytest.fixture(params=["memory", "delta"])
def store(request, tmp_path):
    return orca.MemoryStore() if request.param == "memory" else orca.DeltaStore(tmp_path / "store")


@pytest.fixture
def reads(monkeypatch) -> list[str]:
    """The node tables each status read looked up (the asset path reads none of them)."""
    seen: list[str] = []
    results_index, recorded_entries = orca.engine.results_index, orca.engine.recorded_entries

    def index(spec, columns):
        seen.append(spec.results_table)
        return results_index(spec, columns)

    def recorded(spec):
        seen.append(spec.provenance_table)
        return recorded_entries(spec)

    monkeypatch.setattr(orca.engine, "results_index", index)
    monkeypatch.setattr(orca.engine, "recorded_entries", recorded)
    return seen


def outputs(pipeline: orca.Pipeline) -> tuple[pl.DataFrame, pl.DataFrame]:
    return (pipeline["many"].output.to_polars().sort("k"), pipeline["follow"].output.to_polars().sort("k"))


def fresh(src: orca.Source) -> tuple[pl.DataFrame, pl.DataFrame]:
    """What a store that never saw anything gives for ``src``."""
    pipeline = build(orca.MemoryStore(), src)
    pipeline.run(progress=False)
    return outputs(pipeline)


def same(a: tuple[pl.DataFrame, pl.DataFrame], b: tuple[pl.DataFrame, pl.DataFrame]) -> None:
    for x, y in zip(a, b, strict=True):
        assert x.schema == y.schema
        assert x.equals(y)


def test_a_rerun_with_nothing_new_reads_the_assets_and_serves_the_same_rows(store, reads):
    first = build(store, source())
    first.run(progress=False)
    expected = outputs(first)
    reads.clear()

    again = build(store, source())  # (a new pipeline object: nothing remembered in memory)
    result = again.run(progress=False)
    assert reads == []
    assert {label: c.computed for label, c in result.counts.items()} == {"many": 0, "follow": 0}
    assert {label: c.cached for label, c in result.counts.items()} == {"many": N, "follow": N}
    same(outputs(again), expected)
    same(outputs(again), fresh(source()))


def test_a_smaller_input_is_served_from_the_asset_too(store, reads):
    build(store, source()).run(progress=False)
    reads.clear()
    pipeline = build(store, source(N // 2))
    result = pipeline.run(progress=False)
    assert reads == [] and result.counts["many"].computed == 0
    same(outputs(pipeline), fresh(source(N // 2)))


@pytest.mark.parametrize("change", ["new rows", "edited row"])
def test_an_entry_the_asset_lacks_sends_the_run_to_the_tables(store, reads, change):
    build(store, source()).run(progress=False)
    reads.clear()
    src = source(N + 3) if change == "new rows" else source(edit=5)
    pipeline = build(store, src)
    result = pipeline.run(progress=False)
    assert reads, "the tables must be read: the asset cannot tell whether a new entry is done"
    assert result.counts["many"].computed == (3 if change == "new rows" else 1)
    same(outputs(pipeline), fresh(src))


def test_an_invalidation_is_never_served_from_the_asset(store, reads):
    pipeline = build(store, source())
    pipeline.run(progress=False)
    before = pipeline["many"].output.to_polars().filter(pl.col("k") == 3)
    pipeline.invalidate("many", pl.col("k") == 3)
    reads.clear()
    again = build(store, source())
    result = again.run(progress=False)
    assert reads  # the tables moved on since the asset was made
    assert result.counts["many"].computed == 1
    same(outputs(again), fresh(source()))
    assert again["many"].output.to_polars().filter(pl.col("k") == 3).equals(before)


def test_upstream_tables_moving_on_send_a_downstream_node_to_its_tables(store, reads):
    """Another pipeline over the same function writes to the upstream results table: the
    downstream node's asset no longer reflects every table its status depends on."""
    pipeline = build(store, source())
    pipeline.run(progress=False)
    other = orca.Pipeline("q", store=store)
    with other:
        many.pod(orca.PolarsSource(pl.DataFrame({"k": [999], "x": [999]}), tags=["k"], source_id="other"))
    other.run(progress=False)
    reads.clear()
    again = build(store, source())
    again.run(progress=False)
    assert pipeline["many"].spec.results_table in reads
    same(outputs(again), fresh(source()))


def test_an_asset_changed_outside_orca_is_not_trusted(tmp_path, reads):
    store = orca.DeltaStore(tmp_path / "store")
    pipeline = build(store, source())
    pipeline.run(progress=False)
    asset = deltalake.DeltaTable(store.uri(pipeline["many"].spec.asset_table))
    asset.update(updates={"i": "i + 1000"})  # an analyst's write: wrong values in every row
    reads.clear()
    again = build(store, source())
    again.run(progress=False)
    assert reads  # the asset's latest commit is not a materialisation
    same(outputs(again), fresh(source()))


def test_a_failed_asset_write_leaves_the_run_to_the_tables(tmp_path, monkeypatch, reads):
    store = orca.DeltaStore(tmp_path / "store")
    build(store, source()).run(progress=False)
    with monkeypatch.context() as patched:
        patched.setattr(orca.assets, "materialise", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.warns(UserWarning, match="asset was not written"), pytest.raises(OSError):
            build(store, source(N + 2)).run(progress=False)
    reads.clear()
    again = build(store, source(N + 2))
    result = again.run(progress=False)
    assert reads  # the assets reflect the first run's tables, not these
    assert result.counts["many"].computed == 0
    same(outputs(again), fresh(source(N + 2)))


def test_a_result_invalidated_through_another_pipeline_is_computed_again(store, reads):
    """The asset's rows are untouched, but the shared results table moved on: the run must not
    serve the invalidated result (its entry is novel again)."""
    pipeline = build(store, source())
    pipeline.run(progress=False)
    other = orca.Pipeline("q", store=store)
    with other:
        many.pod(orca.PolarsSource(pl.DataFrame({"k": [999], "x": [3]}), tags=["k"], source_id="other"))
    other.run(progress=False)
    assert other.invalidate("many", pl.col("k") == 999) == 1  # the packet x=3 is pipeline p's too
    reads.clear()
    again = build(store, source())
    result = again.run(progress=False)
    assert reads
    assert result.counts["many"].computed == 1
    same(outputs(again), fresh(source()))


_STEP = st.one_of(
    st.tuples(st.just("add"), st.integers(1, 4)),
    st.tuples(st.just("drop"), st.integers(1, 4)),
    st.tuples(st.just("edit"), st.integers(0, 30)),
    st.tuples(st.just("invalidate"), st.integers(0, 30)),
    st.tuples(st.just("invalidate elsewhere"), st.integers(0, 30)),
    st.tuples(st.just("invalidate downstream"), st.integers(0, 30)),
    st.tuples(st.just("rename source"), st.just(0)),
    st.tuples(st.just("rerun"), st.just(0)),
)


@settings(max_examples=20, deadline=None)
@given(steps=st.lists(_STEP, min_size=1, max_size=6))
def test_any_sequence_of_changes_serves_what_a_fresh_store_computes(steps):
    """Whatever happened before (inputs grown, shrunk, edited; entries invalidated, here or
    through another pipeline sharing a packet), a run serves exactly what a store that never
    saw anything computes, asset shortcut or not, and every value it serves has a live result."""
    store, keys, edits, source_id = orca.MemoryStore(), list(range(8)), {}, ["src"]

    def current() -> orca.PolarsSource:
        xs = [k + edits.get(k, 0) for k in keys]
        return orca.PolarsSource(pl.DataFrame({"k": keys, "x": xs}), tags=["k"], source_id=source_id[0])

    build(store, current()).run(progress=False)
    for op, n in steps:
        if op == "add":
            keys += list(range(max(keys, default=-1) + 1, max(keys, default=-1) + 1 + n))
        elif op == "drop":
            keys = keys[:-n] or keys[:1]
        elif op == "edit" and n in keys:
            edits[n] = edits.get(n, 0) + 100
        elif op == "invalidate":
            build(store, current()).invalidate("many", pl.col("k") == n)
        elif op == "rename source":  # the same values, other entries
            source_id[0] = "other" if source_id[0] == "src" else "src"
        elif op == "invalidate downstream":
            build(store, current()).invalidate("follow", pl.col("k") == n)
        elif op == "invalidate elsewhere":  # the same packet as key n, in another pipeline
            other = orca.Pipeline("q", store=store)
            with other:
                many.pod(orca.PolarsSource(pl.DataFrame({"k": [n], "x": [n + edits.get(n, 0)]}), tags=["k"],
                                           source_id="other"))
            other.run(progress=False)
            other.invalidate("many", pl.col("k") == n)
        pipeline = build(store, current())
        pipeline.run(progress=False)
        same(outputs(pipeline), fresh(current()))
        live = store.scan(many.pod.results_table).collect()["__packet_hash"].bin.encode("hex").to_list()
        served = pipeline["many"].output.to_polars()
        assert all(orca.hash_packet({"x": x}) in live for x in [k + edits.get(k, 0) for k in served["k"]])


@orca.function_pod(output_keys="r")
def noisy(x: int) -> float:
    """Not deterministic: a recomputed value differs from the one it replaces."""
    return x + random.random()


def noisy_pipeline(store: orca.Store, frame: pl.DataFrame, name: str = "p") -> orca.Pipeline:
    pipeline = orca.Pipeline(name, store=store)
    with pipeline:
        noisy.pod(orca.PolarsSource(frame, tags=["k"], source_id=name))
    return pipeline


def test_a_value_recomputed_while_the_asset_write_failed_reaches_the_asset(store, monkeypatch):
    """Design issue 30: a result invalidated through another pipeline sharing its packet is
    recomputed by a run whose asset write fails; a later run must write the new value, and a
    no-change run after it must serve the value the results table holds."""

    rows = pl.DataFrame({"k": list(range(6)), "x": list(range(6))})
    noisy_pipeline(store, rows).run(progress=False)
    other = noisy_pipeline(store, pl.DataFrame({"k": [100], "x": [3]}), "q")  # the packet x=3 again
    other.run(progress=False)
    other.invalidate("noisy", pl.col("k") == 100)
    with monkeypatch.context() as patched:
        patched.setattr(orca.assets, "materialise", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.warns(UserWarning, match="asset was not written"), pytest.raises(OSError):
            noisy_pipeline(store, rows).run(progress=False)  # recomputes x=3
    grown = pl.concat([rows, pl.DataFrame({"k": [6], "x": [6]})])
    for frame in (grown, grown):  # a run that writes the asset, then one with nothing new
        pipeline = noisy_pipeline(store, frame)
        pipeline.run(progress=False)
        asset = pipeline.asset("noisy").collect().select("k", "r").sort("k")
        assert asset.equals(pipeline["noisy"].results().collect().select("k", "r").sort("k"))
        live = store.scan(noisy.pod.results_table).collect()
        assert sorted(asset["r"].to_list()) == sorted(live["r"].to_list())


# -- regressions found in review --------------------------------------------------------------
def _tens(store: orca.Store, xs: list[int]) -> orca.Pipeline:
    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        tens.pod(orca.PolarsSource(pl.DataFrame({"k": xs, "x": xs}), tags=["k"], source_id="src"))
    return pipeline


@orca.function_pod(output_keys="y")
def tens(x: int) -> int:
    if x == -1:
        raise ValueError("bad row")
    return x * 10


def test_tables_made_anew_at_the_same_versions_are_not_the_asset_s(tmp_path):
    """`orca rm` drops the provenance tables, not the assets; the new tables count versions
    from 0 again and, after one failed run, stand at the numbers the old asset records."""
    path = tmp_path / "store"
    _tens(orca.DeltaStore(path), list(range(10))).run(progress=False)
    done = subprocess.run([sys.executable, "-m", "orca", "--store", str(path), "rm", "p", "--yes"],
                          capture_output=True, text=True, stdin=subprocess.DEVNULL)
    assert done.returncode == 0, done.stderr
    with pytest.raises(Exception, match="bad row"):
        _tens(orca.DeltaStore(path), [0, 1, 2, 3, 4, -1]).run(progress=False)
    store = orca.DeltaStore(path)
    pipeline = _tens(store, list(range(10)))
    pipeline.run(progress=False)
    assert store.scan("pipelines/p/tens").collect().height == 10  # every entry served has provenance
    assert pipeline.invalidate("tens", pl.col("k") == 7) == 1


def test_a_commit_by_another_writer_during_the_run_is_not_counted_in(tmp_path, monkeypatch):
    """Another process invalidates a shared packet right after the run checked that only it
    wrote the node's tables: the asset must not be marked exact at versions that include it."""
    path = tmp_path / "store"
    _tens(orca.DeltaStore(path), list(range(10))).run(progress=False)
    other = orca.Pipeline("q", store=orca.DeltaStore(path))
    with other:  # the packet x=3 again, in another pipeline
        tens.pod(orca.PolarsSource(pl.DataFrame({"k": [100], "x": [3]}), tags=["k"], source_id="other"))
    other.run(progress=False)
    real, fired = orca.engine._refreshed_from_run, []

    def refreshed(spec, status, work):  # just after the run's own-commits check
        if not fired:
            fired.append(other.invalidate("tens", pl.col("k") == 100))
        return real(spec, status, work)

    monkeypatch.setattr(orca.engine, "_refreshed_from_run", refreshed)
    _tens(orca.DeltaStore(path), list(range(11))).run(progress=False)  # one new row
    monkeypatch.setattr(orca.engine, "_refreshed_from_run", real)
    assert fired == [1]
    result = _tens(orca.DeltaStore(path), list(range(11))).run(progress=False)
    assert result.counts["tens"].computed == 1  # x=3 has no live result: computed again


def test_an_asset_write_landing_between_a_run_s_look_and_its_merge_is_compared(store, monkeypatch):
    """A slower run's late (legitimate, older) asset write lands after this run looked at the
    asset and before its merge: the merge must compare, not carry the asset over as exact."""

    rows = pl.DataFrame({"k": list(range(10)), "x": list(range(10))})
    noisy_pipeline(store, rows).run(progress=False)
    slow_spec = noisy_pipeline(store, rows.head(9))["noisy"].spec  # another done set: its write is not skipped
    slow_status = orca.engine.read_status(slow_spec)
    shared = noisy_pipeline(store, pl.DataFrame({"k": [100], "x": [3]}), "q")
    shared.run(progress=False)
    shared.invalidate("noisy", pl.col("k") == 100)
    noisy_pipeline(store, rows).run(progress=False)  # recomputes x=3
    real, fired = orca.assets.materialise, []

    def materialise(*args, **kwargs):
        if not fired:
            monkeypatch.setattr(orca.assets, "materialise", real)
            fired.append(orca.engine._materialise(slow_spec, slow_status, (), "slow", slow_status.versions))
        return real(*args, **kwargs)

    monkeypatch.setattr(orca.assets, "materialise", materialise)
    grown = pl.concat([rows, pl.DataFrame({"k": [10], "x": [10]})])
    noisy_pipeline(store, grown).run(progress=False)
    monkeypatch.setattr(orca.assets, "materialise", real)
    assert fired and fired[0] is not None
    again = noisy_pipeline(store, grown)
    again.run(progress=False)
    served = again["noisy"].output.to_polars().filter(pl.col("k") == 3)["r"].item()
    live = store.scan(noisy.pod.results_table).collect()
    assert live.filter(pl.col("__packet_hash").bin.encode("hex") == orca.hash_packet({"x": 3}))["r"].to_list() == [served]


def test_a_stale_row_is_found_after_a_sliced_run(store, monkeypatch):
    """Design issue 30 again, with a run in slices in between: it keeps the asset's rows it does
    not write, so its commit is not exact (the asset was not), and the next whole run compares
    even with nothing new."""

    rows = pl.DataFrame({"k": list(range(6)), "x": list(range(6))})
    noisy_pipeline(store, rows).run(progress=False)
    shared = noisy_pipeline(store, pl.DataFrame({"k": [100], "x": [3]}), "q")
    shared.run(progress=False)
    shared.invalidate("noisy", pl.col("k") == 100)
    with monkeypatch.context() as patched:
        patched.setattr(orca.assets, "materialise", lambda *a, **k: (_ for _ in ()).throw(OSError("disk full")))
        with pytest.warns(UserWarning), pytest.raises(OSError):
            noisy_pipeline(store, rows).run(progress=False)
    grown = pl.concat([rows, pl.DataFrame({"k": [6], "x": [6]})])
    noisy_pipeline(store, grown).run(progress=False, memory_rows=3)
    pipeline = noisy_pipeline(store, grown)
    pipeline.run(progress=False)
    asset = pipeline.asset("noisy").collect().select("k", "r").sort("k")
    assert asset.equals(pipeline["noisy"].results().collect().select("k", "r").sort("k"))


def test_an_unreadable_asset_leaves_the_status_to_the_tables(tmp_path):
    path = tmp_path / "store"
    _tens(orca.DeltaStore(path), list(range(10))).run(progress=False)
    for data in (path / "assets" / "p" / "tens").glob("*.parquet"):
        data.unlink()
    pipeline = _tens(orca.DeltaStore(path), list(range(10)))
    assert pipeline["tens"].output.to_polars().height == 10
    assert pipeline.plan()["tens"] is not None


def test_an_asset_not_known_exact_is_checked_once_then_read(store, reads, monkeypatch):
    """An asset whose last commit is not known exact (an older orca's) is compared by the next
    run, marked exact by one commit, and then stands in for the tables."""
    pipeline = build(store, source())
    pipeline.run(progress=False)
    table = pipeline["many"].spec.asset_table
    with monkeypatch.context() as older:  # what an orca before session 8 recorded
        older.setattr(orca.engine.Reflects, "text", lambda self: json.dumps([list(self.versions), self.digest]))
        build(store, source(N + 1)).run(progress=False)
    assert not orca.engine.Reflects.parse(orca.assets.reflected(store, table)[1]).exact
    versions = len(pipeline.history("many"))
    build(store, source(N + 1)).run(progress=False)  # nothing new: compares, marks exact
    assert orca.engine.Reflects.parse(orca.assets.reflected(store, table)[1]).exact
    assert len(pipeline.history("many")) == versions + 1
    reads.clear()
    again = build(store, source(N + 1))
    again.run(progress=False)
    assert reads == [] and len(pipeline.history("many")) == versions + 1
    same(outputs(again), fresh(source(N + 1)))


def test_runs_in_slices_keep_an_asset_exact(store, reads):
    """A run in slices that writes into an exact asset made from the tables it started from
    leaves it exact: the next whole run with nothing new reads it and writes nothing."""
    build(store, source()).run(progress=False, memory_rows=7)
    pipeline = build(store, source(N + 5))
    pipeline.run(progress=False, memory_rows=7)
    versions = len(pipeline.history("many"))
    reads.clear()
    again = build(store, source(N + 5))
    again.run(progress=False)
    assert reads == [] and len(again.history("many")) == versions
    same(outputs(again), fresh(source(N + 5)))


def test_a_compaction_between_runs_keeps_the_asset_exact(store):
    """Upkeep compacts the node's tables between runs (rows unchanged): a run in slices still
    leaves the asset exact, and a whole run with nothing new after it writes no version."""
    pipeline = build(store, source())
    pipeline.run(progress=False)
    build(store, source(N + 1)).run(progress=False)
    spec = pipeline["many"].spec
    before = orca.engine.table_versions(spec)
    for name in (spec.results_table, spec.provenance_table):  # (what upkeep does at 32 files)
        store.compact(name)
    assert orca.engine.table_versions(spec) != before
    build(store, source(N + 5)).run(progress=False, memory_rows=7)
    look = orca.assets.reflected(store, spec.asset_table)
    assert orca.engine.Reflects.parse(look[1]).exact
    versions = len(pipeline.history("many"))
    build(store, source(N + 5)).run(progress=False)
    assert len(pipeline.history("many")) == versions


# -- an unchanged input matched to the asset by tags and packet (no entry ids hashed) ---------
def _statuses(pipeline: orca.Pipeline, monkeypatch) -> tuple[list, list[int]]:
    """Each node's status read now, and the row counts entry ids were hashed for meanwhile."""
    hashed: list[int] = []
    entry_keys = orca.engine._entry_keys

    def counting(spec, frame):
        hashed.append(frame.height)
        return entry_keys(spec, frame)

    monkeypatch.setattr(orca.engine, "_entry_keys", counting)
    upstream, statuses = None, []
    for label in ("many", "follow"):
        upstream = orca.engine.read_status(pipeline[label].spec, upstream)
        upstream.found, upstream.entries  # noqa: B018 - (a settled status reads its rows when asked)
        statuses.append(upstream)
    monkeypatch.setattr(orca.engine, "_entry_keys", entry_keys)
    return statuses, hashed


def test_an_unchanged_input_is_matched_to_the_asset_without_hashing_entry_ids(store, monkeypatch):
    """The asset's commit digests its input; a rerun whose input digests the same takes each
    row's entry id and outputs from the asset row with its tags and packet, and hashes entry ids
    only for the few rows that check the asset holds the input. Its status equals the one made
    by hashing every entry id and joining on them."""
    pipeline = build(store, source())
    pipeline.run(progress=False)
    shortcut, hashed = _statuses(pipeline, monkeypatch)
    assert hashed and max(hashed) <= orca.engine._SAMPLE
    monkeypatch.setattr(orca.engine, "_values_digest", lambda spec, entries: "polars: another input")
    hashing, hashed = _statuses(pipeline, monkeypatch)
    assert N in hashed
    for a, b in zip(shortcut, hashing, strict=True):
        assert a.versions == b.versions and a.done == b.done == N
        assert a.found.equals(b.found) and a.entries.equals(b.entries)
    assert pipeline.run(progress=False).counts["follow"] == orca.Counts(cached=N)


def test_an_edited_input_digests_otherwise_and_is_computed(store, monkeypatch):
    build(store, source()).run(progress=False)
    pipeline = build(store, source(edit=7))
    assert pipeline.run(progress=False).counts["many"] == orca.Counts(cached=N - 1, computed=1)
    same(outputs(pipeline), fresh(source(edit=7)))


@orca.function_pod(output_keys="y")
def halve(x: int) -> float:
    return x / 2


def test_two_entries_with_one_tag_and_packet_are_not_matched_by_them(store, monkeypatch):
    """A tag dropped: two entries per tags and packet (their system tags, the source rows, differ).
    Matching by tags and packet would meet two asset rows, so the run hashes the entry ids
    instead, and each entry keeps its own."""
    def pipeline_of() -> orca.Pipeline:
        frame = pl.DataFrame({"k": list(range(N)) * 2, "j": [0] * N + [1] * N, "x": list(range(N)) * 2})
        pipeline = orca.Pipeline("twice", store=store)
        with pipeline:
            halve.pod(orca.PolarsSource(frame, tags=["k", "j"], source_id="a").drop_tags("j"))
        return pipeline

    assert pipeline_of().run(progress=False).counts["halve"] == orca.Counts(computed=2 * N)
    pipeline = pipeline_of()
    monkeypatch.setattr(orca.engine, "_found_unchanged", spy := _Spy(orca.engine._found_unchanged))
    status = orca.engine.read_status(pipeline["halve"].spec)
    assert status.settled is not None and status.done == 2 * N and not spy.results  # (rows not read yet)
    assert status.found.height == 2 * N
    assert spy.results == [None]  # looked at, and left to the entry ids
    assert status.done == 2 * N and status.found[orca.engine.ENTRY_KEY].n_unique() == 2 * N
    assert pipeline.run(progress=False).counts["halve"] == orca.Counts(cached=2 * N)


class _Spy:
    def __init__(self, function) -> None:
        self.function, self.results = function, []

    def __call__(self, *args):
        result = self.function(*args)
        self.results.append(result)
        return result


def test_a_stream_with_no_tags_is_matched_by_its_packets(store, monkeypatch):
    """No tags and no system tags (a stream built by hand): the rows are matched by packet hash
    alone (each packet once here), and the status still has every column."""
    from orca.streams import Stream

    stream = Stream(pl.DataFrame({"x": list(range(N))}).lazy(), tag_columns=(), packet_columns=("x",),
                    identity="by-hand")
    pipeline = orca.Pipeline("untagged", store=store)
    with pipeline:
        halve.pod(stream)
    pipeline.run(progress=False)
    monkeypatch.setattr(orca.engine, "_found_unchanged", spy := _Spy(orca.engine._found_unchanged))
    status = orca.engine.read_status(pipeline["halve"].spec)
    assert status.found.height == N and spy.results[0] is not None and status.done == N
    assert status.found.columns == [orca.engine.ENTRY_KEY, orca.engine.KEY, "y", orca.engine.HIT, orca.engine.DONE]
    assert pipeline.run(progress=False).counts["halve"] == orca.Counts(cached=N)


def _spy_hashing(monkeypatch) -> list[str]:
    """The labels of the nodes whose input packets are hashed from now on."""
    hashed: list[str] = []
    hash_inputs = orca.engine.hash_inputs

    def spying(pod, frame, path_columns):
        hashed.append(pod.name)
        return hash_inputs(pod, frame, path_columns)

    monkeypatch.setattr(orca.engine, "hash_inputs", spying)
    return hashed


def test_a_downstream_node_of_a_settled_chain_is_settled_without_hashing_its_input(store, reads, monkeypatch):
    """Nothing new: the first node's input digests as its asset says, so it is settled; the
    second node's asset was made over that same first input through the first node's tables as
    they are, so it is settled too without hashing anything, and its rows -- read when asked
    for, from its asset alone -- are those the status read in full would have."""
    build(store, source()).run(progress=False)
    reads.clear()
    pipeline = build(store, source())
    hashed = _spy_hashing(monkeypatch)
    first = orca.engine.read_status(pipeline["many"].spec)
    second = orca.engine.read_status(pipeline["follow"].spec, first)
    assert first.settled is not None and second.settled is not None
    assert second.settled.root == first.settled.root and second.done == N
    assert hashed == ["many"] and reads == []
    found = second.found  # (read now: the second node's asset, joined on the tags)
    assert hashed == ["many"] and reads == []
    full = orca.engine.read_status(pipeline["follow"].spec, orca.engine.read_status(pipeline["many"].spec, settle=False),
                                   settle=False)
    assert found.equals(full.found) and second.entries.equals(full.entries) and second.versions == full.versions
    assert pipeline.run(progress=False).counts == {"many": orca.Counts(cached=N), "follow": orca.Counts(cached=N)}
    same(outputs(pipeline), fresh(source()))


def test_a_downstream_node_whose_own_table_moved_is_read(store, reads):
    """The second node's own tables moved on (an invalidation there): it is not settled, and
    the run computes the invalidated entry again."""
    pipeline = build(store, source())
    pipeline.run(progress=False)
    assert pipeline.invalidate("follow", pl.col("k") == 4) == 1
    again = build(store, source())
    first = orca.engine.read_status(again["many"].spec)
    assert first.settled is not None and orca.engine.read_status(again["follow"].spec, first).settled is None
    assert again.run(progress=False).counts["follow"] == orca.Counts(cached=N - 1, computed=1)
    same(outputs(again), fresh(source()))


def test_a_downstream_asset_made_before_roots_were_recorded_is_read(store, monkeypatch):
    """An asset whose commit does not name the chain's first input (an older orca's) says nothing
    of the downstream node's input: it is hashed and digested, as before, and the status right."""
    monkeypatch.setattr(orca.engine, "_root_digest", lambda spec, status: None)
    build(store, source()).run(progress=False)
    monkeypatch.undo()
    pipeline = build(store, source())
    hashed = _spy_hashing(monkeypatch)
    first = orca.engine.read_status(pipeline["many"].spec)
    orca.engine.read_status(pipeline["follow"].spec, first)
    assert first.settled is not None and hashed[0] == "many" and hashed[-1] == "follow"
    assert pipeline.run(progress=False).counts["follow"] == orca.Counts(cached=N)
    same(outputs(pipeline), fresh(source()))


def test_a_settled_chain_whose_tags_repeat_is_read_by_entry(store, monkeypatch):
    """Two rows per tags (a source that keeps duplicates): the downstream node is settled, but
    its rows cannot be matched by tags; they are read with the status in full, each its own."""
    def pipeline_of() -> orca.Pipeline:
        frame = pl.DataFrame({"k": list(range(N)) * 2, "x": list(range(2 * N))})
        pipeline = orca.Pipeline("twice", store=store)
        with pipeline:
            follow.pod(many.pod(orca.PolarsSource(frame, tags=["k"], source_id="a", keep_duplicates=True)))
        return pipeline

    expected = pipeline_of()
    expected.run(progress=False)
    expected = expected["follow"].output.to_polars()
    pipeline = pipeline_of()
    monkeypatch.setattr(orca.engine, "_found_by_tags", spy := _Spy(orca.engine._found_by_tags))
    first = orca.engine.read_status(pipeline["many"].spec)
    second = orca.engine.read_status(pipeline["follow"].spec, first)
    assert second.settled is not None and second.found.height == 2 * N and spy.results == [None]
    assert second.found[orca.engine.ENTRY_KEY].n_unique() == 2 * N
    assert pipeline.run(progress=False).counts["follow"] == orca.Counts(cached=2 * N)
    assert pipeline["follow"].output.to_polars().equals(expected)


def test_a_settled_chain_over_reordered_rows_serves_them_in_their_new_order(store, monkeypatch):
    """The same rows in another order digest the same: the downstream node is settled, its
    asset (in the first run's order) is matched to the input by tags, and every row keeps its
    own values, in the input's order."""
    build(store, source()).run(progress=False)
    rows = pl.DataFrame({"k": list(range(N)), "x": list(range(N))}).reverse()
    pipeline = build(store, orca.PolarsSource(rows, tags=["k"], source_id="src"))
    monkeypatch.setattr(orca.engine, "_found_by_tags", spy := _Spy(orca.engine._found_by_tags))
    first = orca.engine.read_status(pipeline["many"].spec)
    second = orca.engine.read_status(pipeline["follow"].spec, first)
    assert second.settled is not None and second.found["k"].to_list() == list(reversed(range(N)))
    assert spy.results[0] is not None
    assert second.found["y"].to_list() == [3 * k + 1 for k in reversed(range(N))]
    assert pipeline.run(progress=False).counts["follow"] == orca.Counts(cached=N)
    assert pipeline["follow"].output.to_polars()["y"].to_list() == [3 * k + 1 for k in reversed(range(N))]


def test_a_settled_status_reads_the_asset_as_it_was_looked_at(tmp_path):
    """A settled status reads its rows when asked for; an analyst's write to the asset since
    (not a materialisation: its values are not the node's) must not reach them, even once the
    store's table handle has moved on to it."""
    store = orca.DeltaStore(tmp_path / "store")
    build(store, source()).run(progress=False)
    pipeline = build(store, source())
    first = orca.engine.read_status(pipeline["many"].spec)
    second = orca.engine.read_status(pipeline["follow"].spec, first)
    assert first.settled is not None and second.settled is not None
    for label, column in (("many", "i"), ("follow", "y")):
        asset = pipeline[label].spec.asset_table
        deltalake.DeltaTable(store.uri(asset)).update(updates={column: f"{column} + 1000"})
        store.scan(asset).collect()  # (the store's handle now reads the analyst's commit)
    assert second.found["y"].to_list() == [3 * k + 1 for k in range(N)]
    assert first.found["i"].to_list() == [3 * k for k in range(N)]
    assert second.entries.height == N


@pytest.mark.parametrize("renamed", ["source id", "source kind"])
def test_the_same_values_under_another_source_are_other_entries(store, renamed):
    """A source given another id (or another kind, whose default id differs) delivers the same
    values, but its entries are other entries (their ids are the node's): the input digests
    otherwise, the status is not settled, and each entry is recorded, its result a cache hit."""
    rows = pl.DataFrame({"k": list(range(N)), "x": list(range(N))})
    first = orca.PolarsSource(rows, tags=["k"], source_id=None if renamed == "source kind" else "src")
    build(store, first).run(progress=False)
    again = (orca.ArrowSource(rows.to_arrow(), tags=["k"]) if renamed == "source kind"
             else orca.PolarsSource(rows, tags=["k"], source_id="other"))
    pipeline = build(store, again)
    status = orca.engine.read_status(pipeline["many"].spec)
    assert status.settled is None and status.hits == N
    assert pipeline.run(progress=False).counts["many"] == orca.Counts(cached=N)
    assert pipeline["many"].output.to_polars().height == N and pipeline["follow"].output.to_polars().height == N
    same(outputs(pipeline), fresh(again))


@orca.function_pod(output_keys="i")
def drifting(x: int) -> int:
    """Not deterministic: a recomputed value differs from the one it replaces."""
    return x * 3 + random.randrange(1, 10**6) * 1000


@orca.function_pod(output_keys="y")
def after_drifting(i: int) -> int:
    return i + 1


def test_a_downstream_node_is_not_settled_on_an_upstream_status_older_than_its_asset(store):
    """One process reads the first node's (settled) status; another invalidates an entry there
    and runs again, so the first node gets a new value and the second node's asset is made from
    it. A status of the second node over the older upstream status must not take its asset's
    rows: their input is not that status's output."""
    def build_drifting() -> orca.Pipeline:
        pipeline = orca.Pipeline("d", store=store)
        with pipeline:
            after_drifting.pod(drifting.pod(source()))
        return pipeline

    build_drifting().run(progress=False)
    held = build_drifting()
    upstream = orca.engine.read_status(held["drifting"].spec)
    assert upstream.settled is not None
    other = build_drifting()
    assert other.invalidate("drifting", pl.col("k") == 4) == 1
    other.run(progress=False)
    status = orca.engine.read_status(held["after_drifting"].spec, upstream)
    full = orca.engine.read_status(held["after_drifting"].spec, upstream, settle=False)
    assert status.settled is None
    assert status.found.equals(full.found)
    i = orca.engine.output_frame(held["drifting"].spec, upstream).filter(pl.col("k") == 4)["i"][0]
    assert status.found.filter(pl.col("k") == 4)["y"].to_list() == [i + 1]


def test_a_settled_status_whose_asset_version_is_gone_after_a_change_asks_to_be_read_again(store, monkeypatch):
    """Its rows cannot then be told as they were when it was settled: an error, not other rows."""
    build(store, source()).run(progress=False)
    pipeline = build(store, source())
    status = orca.engine.read_status(pipeline["many"].spec)
    assert status.settled is not None
    assert build(store, source()).invalidate("many", pl.col("k") == 4) == 1
    monkeypatch.setattr(type(store), "scan_version", lambda self, name, **kwargs: None)  # (vacuumed)
    with pytest.raises(orca.StoreError, match="changed since this status was read"):
        status.found  # noqa: B018
