"""The cached function pod, over a MemoryStore and a real DeltaStore."""

from __future__ import annotations

import datetime
import time

import polars as pl
import pyarrow as pa
import pytest

import orca
from orca.errors import PodError
from orca.names import FAILURES, PACKET_HASH, RECORD_ID, hex_ids
from orca.pods import result_record_ids
from tests.helpers import load_module, result_row

RESULT_COLUMNS = {"__packet_hash", "__record_id", "__function_hash", "__computed_at", "__duration_s", "__run_id"}


def src(n=4, source_id="s", **fixed):
    return orca.DictSource([{"id": i, "x": i, **fixed} for i in range(n)], tags=["id"], source_id=source_id)


def counted(name="double", fail=()):
    """A pod whose calls are recorded in ``fn.calls``; packets ``x`` in ``fail`` raise."""
    calls: list[int] = []
    failing = set(fail)

    @orca.function_pod(output_keys="z", name=name)
    def double(x: int) -> int:
        calls.append(x)
        if x in failing:
            raise ValueError(f"bad x={x}")
        return 2 * x

    double.calls, double.failing = calls, failing
    return double


def results(store, fn) -> pl.DataFrame:
    """The live rows of ``fn``'s results table, ids in hex."""
    return hex_ids(store.scan(fn.pod.results_table).collect())


# -- caching --------------------------------------------------------------------------------
def test_cached_stream_matches_uncached_and_second_run_computes_nothing(store):
    fn = counted()
    cached = orca.CachedFunctionPod(fn.pod, store=store, on_error="raise", retries=0)
    first = cached(src()).to_polars(include_system=True)
    assert first.equals(fn.pod(src()).to_polars(include_system=True))
    assert sorted(fn.calls) == [0, 0, 1, 1, 2, 2, 3, 3]  # once cached, once uncached
    fn.calls.clear()
    again = fn.pod.cached(store)(src()).to_polars(include_system=True)
    assert fn.calls == [] and again.equals(first)


def test_results_table_layout(store):
    fn = counted()
    fn.pod.cached(store)(src()).to_polars()
    assert store.tables("results/") == [f"results/double/{fn.pod.identity.hash}"]
    rows = results(store, fn)
    assert RESULT_COLUMNS | {"z"} <= set(rows.columns)
    assert "x" not in rows.columns  # input data is not copied
    assert set(rows["__function_hash"]) == {fn.pod.identity.hash}
    hashes = orca.hash_packets(pa.table({"x": list(range(4))}))
    assert sorted(rows[PACKET_HASH]) == sorted(hashes.to_pylist())
    assert rows[RECORD_ID].to_list() == [r.hex() for r in result_record_ids(fn.pod.identity.hash, rows[PACKET_HASH]).to_pylist()]
    assert rows["__duration_s"].min() >= 0 and rows["__run_id"].n_unique() == 1
    assert rows["__computed_at"].dtype == pl.Datetime("us", "UTC")
    if isinstance(store, orca.DeltaStore):  # a plain Delta table anyone can read
        assert pl.scan_delta(store.uri(fn.pod.results_table)).collect().height == 4


def test_one_packet_under_three_tags_is_one_result_row(store):
    fn = counted()
    out = fn.pod.cached(store)(src(3, x=7)).to_polars()
    assert out["z"].to_list() == [14, 14, 14] and out["id"].to_list() == [0, 1, 2]
    assert fn.calls == [7]
    assert results(store, fn).height == 1


def test_new_rows_compute_only_the_new_packets(store):
    fn = counted()
    fn.pod.cached(store)(src(3)).to_polars()
    fn.calls.clear()
    out = fn.pod.cached(store)(src(6)).to_polars()
    assert sorted(fn.calls) == [3, 4, 5]
    assert out["id"].to_list() == list(range(6)) and out["z"].to_list() == [0, 2, 4, 6, 8, 10]


BODY = '''
import orca

CALLS = []

@orca.function_pod(output_keys="z")
def scale(x: int) -> int:
    CALLS.append(x)
    return x * {k}
'''


def load(tmp_path, name, k):
    return load_module(tmp_path, name, BODY.format(k=k))


def test_editing_the_body_recomputes_and_keeps_old_rows(store, tmp_path):
    old = load(tmp_path, "scale_v1", 2)
    new = load(tmp_path, "scale_v2", 3)
    assert old.scale.pod.identity.hash != new.scale.pod.identity.hash
    assert old.scale.pod.cached(store)(src(3)).to_polars()["z"].to_list() == [0, 2, 4]
    assert new.scale.pod.cached(store)(src(3)).to_polars()["z"].to_list() == [0, 3, 6]
    assert new.CALLS == [0, 1, 2]
    tables = store.tables("results/scale/")
    assert len(tables) == 2
    every = pl.concat([store.scan(t).collect() for t in tables], how="diagonal_relaxed")
    by_function = dict(every.group_by("__function_hash").len().iter_rows())
    assert by_function == {old.scale.pod.identity.hash: 3, new.scale.pod.identity.hash: 3}
    if isinstance(store, orca.DeltaStore):  # the same listing straight from the files
        files = pl.scan_parquet(f"{store.location}/results/scale/*/*.parquet").collect()
        assert files.group_by("__function_hash").len().height == 2


# -- failures -------------------------------------------------------------------------------
def test_failure_is_recorded_not_cached_and_retried_next_run(store):
    fn = counted(fail={2})
    cached = fn.pod.cached(store, on_error="continue")
    out = cached(src(4)).to_polars()
    assert out["id"].to_list() == [0, 1, 3]  # the failed row is skipped
    assert sorted(results(store, fn)["z"]) == [0, 2, 6]
    failures = hex_ids(store.scan(FAILURES).collect())
    assert failures.height == 1
    row = failures.row(0, named=True)
    assert row["function_hash"] == fn.pod.identity.hash
    assert row["packet_hash"] == orca.hash_packet({"x": 2})
    assert row["tag"] == '{"id":2}' and row["error_type"] == "ValueError" and row["message"] == "bad x=2"
    assert "Traceback" in row["traceback"] and "bad x=2" in row["traceback"]
    assert isinstance(row["failed_at"], datetime.datetime) and row["attempts"] == 1
    fn.failing.clear()  # fixed: the next run computes only that packet
    fn.calls.clear()
    assert cached(src(4)).to_polars()["z"].to_list() == [0, 2, 4, 6]
    assert fn.calls == [2]
    assert results(store, fn).height == 4


def test_on_error_raise_commits_what_succeeded_then_names_the_tag(store):
    fn = counted(fail={2})
    with pytest.raises(PodError, match=r"'double'.*\{'id': 2\}.*bad x=2"):
        fn.pod.cached(store, on_error="raise")(src(4)).to_polars()
    assert sorted(results(store, fn)["z"]) == [0, 2, 6]  # x=2 (z would be 4) failed, the rest is kept
    assert store.scan(FAILURES).collect()["tag"].to_list() == ['{"id":2}']
    fn.failing.clear()
    fn.calls.clear()
    assert fn.pod.cached(store)(src(4)).to_polars()["z"].to_list() == [0, 2, 4, 6]
    assert fn.calls == [2]


def test_retries_with_backoff_and_one_row_per_success(store):
    attempts: dict[int, int] = {}

    @orca.function_pod(output_keys="z")
    def flaky(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        if x == 1 and attempts[x] < 3:
            raise ConnectionError("try again")
        return x

    start = time.perf_counter()
    out = flaky.pod.cached(store, retries=2)(src(3)).to_polars()
    assert time.perf_counter() - start >= 0.05 + 0.1  # two backoffs
    assert out["z"].to_list() == [0, 1, 2] and attempts == {0: 1, 1: 3, 2: 1}
    assert results(store, flaky).height == 3 and store.scan(FAILURES) is None

    attempts.clear()

    @orca.function_pod(output_keys="z")
    def hopeless(x: int) -> int:
        attempts[x] = attempts.get(x, 0) + 1
        raise ConnectionError("down")

    hopeless.pod.cached(store, retries=2, on_error="continue")(src(2)).to_polars()
    assert attempts == {0: 3, 1: 3} and store.scan(hopeless.pod.results_table) is None
    assert store.scan(FAILURES).collect()["attempts"].to_list() == [3, 3]


def test_bad_output_fails_the_row_and_names_it(store):
    @orca.function_pod(output_keys="z")
    def bad(x: int) -> int:
        return "no" if x == 1 else x

    with pytest.raises(PodError, match=r"'bad'.*\{'id': 1\}.*'z'"):
        bad.pod.cached(store)(src(3)).to_polars()
    assert sorted(results(store, bad)["z"]) == [0, 2]


def test_options_are_checked():
    fn = counted()
    with pytest.raises(ValueError, match="on_error"):
        fn.pod.cached(orca.MemoryStore(), on_error="ignore")
    with pytest.raises(ValueError, match="retries"):
        fn.pod.cached(orca.MemoryStore(), retries=-1)
    with pytest.raises(TypeError, match="unknown"):
        fn.pod.cached(orca.MemoryStore()).with_options(colour="red")


# -- no I/O until collected -----------------------------------------------------------------
class Recording:
    """Wraps a store and records every method called on it."""

    def __init__(self, inner):
        self._inner, self.calls = inner, []
        self.location = inner.location

    def __getattr__(self, name):
        attr = getattr(self._inner, name)
        if not callable(attr):
            return attr

        def call(*args, **kwargs):
            self.calls.append(name)
            result = attr(*args, **kwargs)
            return Recording(result) if name == "with_options" else result

        return call


def test_constructing_and_configuring_does_no_io(store, tmp_path):
    recording = Recording(store)
    fn = counted()
    cached = orca.CachedFunctionPod(fn.pod, store=recording, on_error="continue", retries=1)
    cached = cached.with_options(retries=2, executor=orca.InProcessExecutor(max_chunk_rows=10))
    stream = fn.pod.cached(recording)(src())
    lazy = cached(src()).lazy().filter(pl.col("z") > 0)
    repr(cached), cached.results_table, stream.tag_columns, lazy.collect_schema()
    assert recording.calls == [] and fn.calls == []
    orca.DeltaStore(tmp_path / "never").with_options(max_rows=5)
    assert not (tmp_path / "never").exists()
    assert lazy.collect()["z"].to_list() == [2, 4, 6]
    assert "scan" in recording.calls and "flush" in recording.calls


# -- many writers: duplicates and near-collisions ---------------------------------------------
def test_duplicate_results_from_two_writers_resolve_by_the_store_rule(store):
    fn = counted()
    packet = orca.hash_packet({"x": 1})
    store.append(fn.pod.results_table, result_row(fn, packet, {"z": 200}, "run-b"), key=[PACKET_HASH])
    store.append(fn.pod.results_table, result_row(fn, packet, {"z": 100}, "run-a"), key=[PACKET_HASH])
    store.flush()
    out = fn.pod.cached(store)(src(3)).to_polars()
    assert out["id"].to_list() == [0, 1, 2]
    assert out["z"].to_list() == [0, 100, 4]  # smallest __run_id wins, as in store.scan
    assert sorted(fn.calls) == [0, 2]
    assert store.scan(fn.pod.results_table).collect().height == 3


def test_a_result_sharing_only_64_bits_is_not_a_hit(store):
    fn = counted()
    packet = orca.hash_packet({"x": 1})
    impostor = packet[:16] + ("0" if packet[16] != "0" else "1") + packet[17:]
    store.append(fn.pod.results_table, result_row(fn, impostor, {"z": 999}, "run-a"), key=[PACKET_HASH])
    store.flush()
    cached = fn.pod.cached(store)
    same = orca.DictSource([{"id": 0, "x": 1}, {"id": 1, "x": 1}], tags=["id"], source_id="s")
    assert orca.engine.read_status(orca.engine.NodeSpec(fn.pod, same, store)).to_compute == 2
    assert cached(src(2)).to_polars()["z"].to_list() == [0, 2]
    assert sorted(fn.calls) == [0, 1]


def test_invalidated_results_are_recomputed(store):
    fn = counted()
    fn.pod.cached(store)(src(3)).to_polars()
    store.invalidate(fn.pod.results_table, [orca.hash_packet({"x": 1})])
    fn.calls.clear()
    assert fn.pod.cached(store)(src(3)).to_polars()["z"].to_list() == [0, 2, 4]
    assert fn.calls == [1]


def test_paths_hash_by_content(tmp_path, store):
    for name, text in (("a.txt", "hello"), ("b.txt", "hello"), ("c.txt", "other")):
        (tmp_path / name).write_text(text)
    calls = []

    @orca.function_pod(output_keys="n")
    def size(p: __import__("pathlib").Path) -> int:
        calls.append(p.name)
        return len(p.read_text())

    rows = [{"id": i, "p": tmp_path / name} for i, name in enumerate(["a.txt", "b.txt", "c.txt"])]
    out = size.pod.cached(store)(orca.DictSource(rows, tags=["id"], source_id="files")).to_polars()
    assert out["n"].to_list() == [5, 5, 5] and sorted(calls) == ["a.txt", "c.txt"]


def test_long_runs_skip_packets_other_processes_committed_meanwhile(tmp_path):
    """Between batches (every recheck_seconds) the work drops packets another writer committed."""
    path = tmp_path / "store"
    other = orca.DeltaStore(path)  # another process's view of the same store
    calls = []

    @orca.function_pod(output_keys="z")
    def double(x: int) -> int:
        calls.append(x)
        if x == 0:  # while we compute packet 0, someone else finishes packets 4 and 5
            for y in (4, 5):
                row = result_row(double, orca.hash_packet({"x": y}), {"z": 2 * y}, "other")
                other.append(double.pod.results_table, row, key=[PACKET_HASH])
            other.flush()
        return 2 * x

    cached = double.pod.cached(orca.DeltaStore(path), executor=orca.InProcessExecutor(initial_chunk_rows=2),
                               batch_rows=2, recheck_seconds=0.0)
    stream = src(6)
    assert cached(stream).to_polars()["z"].to_list() == [0, 2, 4, 6, 8, 10]
    assert calls == [0, 1, 2, 3]
    assert cached(stream).to_polars()["z"].to_list() == [0, 2, 4, 6, 8, 10] and calls == [0, 1, 2, 3]


def test_several_outputs_and_an_output_named_like_its_input(store):
    @orca.function_pod(output_keys=["x", "label"])
    def describe(x: int) -> tuple[float, str]:
        return x / 2, f"#{x}"

    stream = src(3)
    out = describe.pod.cached(store)(stream).to_polars(include_system=True)
    assert out.equals(describe.pod(stream).to_polars(include_system=True))
    assert out.select("id", "x", "label").rows() == [(0, 0.0, "#0"), (1, 0.5, "#1"), (2, 1.0, "#2")]
    assert out["__source__x"].equals(out["__source__label"], check_names=False)
    assert describe.pod.cached(store)(stream).to_polars(include_system=True).equals(out)


# -- property: the cache round-trips ------------------------------------------------------
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

ROUND_TRIP_CALLS: list[tuple] = []


@orca.function_pod(output_keys=["n", "label"])
def describe_row(x: int | None, s: str) -> tuple[int, str]:
    ROUND_TRIP_CALLS.append((x, s))
    return (0 if x is None else x * 3), s.upper() + "!"


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.one_of(st.none(), st.integers(-5, 5)), st.sampled_from(["a", "b", "é", ""])),
                min_size=1, max_size=25))
def test_cached_output_equals_uncached_and_reruns_compute_nothing(packets):
    rows = [{"k": i, "x": x, "s": s} for i, (x, s) in enumerate(packets)]
    src = orca.DictSource(rows, tags=["k"], source_id="prop")
    store = orca.MemoryStore()
    ROUND_TRIP_CALLS.clear()
    first = describe_row.pod.cached(store)(src).to_polars(include_system=True)
    assert len(ROUND_TRIP_CALLS) == len(set(packets))  # one call per distinct packet
    assert first.equals(describe_row.pod(src).to_polars(include_system=True))
    ROUND_TRIP_CALLS.clear()
    again = describe_row.pod.cached(store)(src).to_polars(include_system=True)
    assert ROUND_TRIP_CALLS == [] and again.equals(first)
    assert store.scan(describe_row.pod.results_table).collect().height == len(set(packets))
