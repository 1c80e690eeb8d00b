"""Bad input gets a named error before work is done, and leaves the store as it was (issue 14)."""

from __future__ import annotations

import polars as pl
import pytest

import orca


def rows(n=3, **fixed):
    return orca.DictSource([{"k": i, "x": i, **fixed} for i in range(n)], tags=["k"], source_id="s")


@orca.function_pod(output_keys="y")
def inc(x: int) -> int:
    return x + 1


# -- item 6: pods outside `with pipeline:`, nodes of another pipeline --------------------------
def test_running_an_empty_pipeline_says_why(tmp_path):
    pipeline = orca.Pipeline("p", store=orca.DeltaStore(tmp_path / "s"))
    inc.pod(rows())  # applied outside the with block: not recorded
    with pytest.raises(orca.OrcaError, match="no function nodes.*inside `with pipeline:`"):
        pipeline.run(progress=False)
    assert not (tmp_path / "s").exists()  # nothing written


def test_a_node_of_another_pipeline_is_refused_as_input():
    store = orca.MemoryStore()
    first, second = orca.Pipeline("a", store=store), orca.Pipeline("b", store=store)
    with first:
        out = inc.pod(rows())
    with second, pytest.raises(orca.OrcaError, match=r"node\(s\) \['inc'\] of another pipeline"):
        inc.pod(out.rename_packets({"y": "x"}))


# -- item 9: a schema conflict is found before computing ----------------------------------------
def test_a_retyped_tag_fails_before_computing_and_the_run_is_marked_failed(tmp_path):
    store = orca.DeltaStore(tmp_path / "s")
    calls = []

    @orca.function_pod(output_keys="y")
    def counted(x: int) -> int:
        calls.append(x)
        return x

    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        counted.pod(rows())
    pipeline.run(progress=False)
    calls.clear()
    again = orca.Pipeline("p", store=orca.DeltaStore(tmp_path / "s"))
    with again:  # same pipeline name and label, the tag is now text
        counted.pod(orca.DictSource([{"k": f"n{i}", "x": i + 10} for i in range(3)], tags=["k"], source_id="s"))
    with pytest.raises(orca.SchemaError, match=r"node 'counted'.*provenance table .*pipelines/p/counted.*k \("):
        again.run(progress=False)
    assert calls == []  # refused before any call
    runs = store.scan("runs").collect()
    last = runs.filter(pl.col("run_id") == runs.sort("at")["run_id"][-1]).sort("seq")
    assert last["status"][-1] == "failed"
    assert store.scan("pipelines/p/counted").collect()["k"].to_list() == [0, 1, 2]  # as it was


def test_an_added_tag_names_the_extra_column(tmp_path):
    store = orca.DeltaStore(tmp_path / "s")
    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        inc.pod(rows())
    pipeline.run(progress=False)
    again = orca.Pipeline("p", store=store)
    with again:
        inc.pod(orca.DictSource([{"k": i, "j": 1, "x": i + 5} for i in range(2)], tags=["k", "j"], source_id="s"))
    with pytest.raises(orca.SchemaError, match=r"unexpected \[\]|missing \['j'\]"):
        again.run(progress=False)


# -- item 11: pods declared or applied wrongly -------------------------------------------------
def test_a_pod_applied_to_nothing():
    with pytest.raises(orca.PodError, match="apply it to a stream"):
        inc.pod()
    with pytest.raises(orca.PodError, match="apply it to a stream"):
        inc.pod.cached(orca.MemoryStore())()


def test_a_bound_method_cannot_be_decorated_but_can_be_a_pod():
    class Scaler:
        def __init__(self, k: int) -> None:
            self.k = k

        def scale(self, x: int) -> int:
            return x * self.k

    scaler = Scaler(3)
    with pytest.raises(orca.PodError, match="bound method.*orca.FunctionPod"):
        orca.function_pod(output_keys="y")(scaler.scale)
    pod = orca.FunctionPod(scaler.scale, output_keys="y", code_hash=False)
    assert pod(rows()).to_polars()["y"].to_list() == [0, 3, 6]


def test_a_function_of_no_column(store):
    @orca.function_pod(output_keys="y")
    def constant() -> int:
        return 7

    assert constant.pod(rows()).to_polars()["y"].to_list() == [7, 7, 7]
    assert constant.pod.cached(store)(rows()).to_polars()["y"].to_list() == [7, 7, 7]
    assert len(store.scan(constant.pod.results_table).collect()) == 1  # one (empty) packet


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_an_exception_whose_str_raises_is_recorded(store):
    @orca.function_pod(output_keys="y")
    def nasty(x: int) -> int:
        if x == 1:
            raise BrokenStr()
        return x

    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        nasty.pod(rows())
    result = pipeline.run(progress=False, on_error="continue")
    assert result.counts["nasty"] == orca.Counts(cached=0, computed=2, failed=1)
    assert "BrokenStr.__str__ raised RuntimeError" in result.failures["message"][0]


def test_the_wrong_number_of_outputs_names_the_length():
    @orca.function_pod(output_keys=["a", "b"])
    def three(x: int) -> tuple[int, int]:
        return x, x, x

    with pytest.raises(orca.PodError, match=r"the 2 outputs \['a', 'b'\], got tuple of length 3"):
        three.pod(rows()).to_polars()


def test_a_lambda_in_a_pipeline_is_asked_for_a_name():
    pod = orca.FunctionPod(lambda x: x, output_keys="y", input_types={"x": int}, output_types={"y": int})
    with orca.Pipeline("p", store=orca.MemoryStore()), pytest.raises(orca.PodError, match="pass name="):
        pod(rows())
    named = orca.FunctionPod(lambda x: x, output_keys="y", input_types={"x": int}, output_types={"y": int},
                             name="identity")
    with orca.Pipeline("p", store=orca.MemoryStore()) as pipeline:
        named(rows())
    assert list(pipeline.nodes) == ["identity"]


def test_a_packet_column_of_the_wrong_type_is_refused_when_applied():
    text = orca.DictSource([{"k": i, "x": f"v{i}"} for i in range(2)], tags=["k"], source_id="t")
    with pytest.raises(orca.PodError, match=r"parameter 'x' is annotated int .* holds large_string|holds string"):
        inc.pod(text)

    @orca.function_pod(output_keys="y")
    def half(x: float) -> float:
        return x / 2

    assert half.pod(rows()).to_polars()["y"].to_list() == [0.0, 0.5, 1.0]  # int into float is fine


# -- item 14: a run id is used once -------------------------------------------------------------
def test_a_used_run_id_is_refused(tmp_path):
    pipeline = orca.Pipeline("p", store=orca.DeltaStore(tmp_path / "s"))
    with pipeline:
        inc.pod(rows())
    run_id = orca.new_run_id()
    pipeline.run(progress=False, run_id=run_id)
    with pytest.raises(orca.OrcaError, match="already used"):
        pipeline.run(progress=False, run_id=run_id)
    events = orca.DeltaStore(tmp_path / "s").scan("runs").collect()
    assert events.filter(pl.col("run_id") == run_id)["event"].to_list().count("started") == 1


# -- item 15: reading a node after a run does not retry its failures ------------------------------
def test_iterating_after_a_continue_run_does_not_retry_failures(store):
    calls = []

    @orca.function_pod(output_keys="y")
    def flaky(x: int) -> int:
        calls.append(x)
        if x == 1:
            raise ValueError("bad")
        return x

    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        flaky.pod(rows())
    pipeline.run(progress=False, on_error="continue")
    calls.clear()
    seen = [(dict(t)["k"], dict(p)["y"]) for t, p in pipeline["flaky"]]
    assert seen == [(0, 0), (2, 2)] and calls == []
    assert pipeline["flaky"].results().collect()["k"].to_list() == [0, 2]
    assert pipeline.run(progress=False, on_error="continue").counts["flaky"].failed == 1  # run() retries
