"""pipeline.plan(): what the next run would do and why, agreeing with the run that follows."""

from __future__ import annotations

import os
import pathlib

import polars as pl
import pytest

import orca
from tests.helpers import load_module

STEPS = '''
import pathlib
import orca

@orca.function_pod(output_keys="n")
def size(path: pathlib.Path) -> int:
    text = path.read_text()
    if "boom" in text:
        raise ValueError("boom")
    return len(text) * {k}

@orca.function_pod(output_keys="m")
def double(n: int) -> int:
    return 2 * n
'''


def build(store, folder: pathlib.Path, module) -> orca.Pipeline:
    pipeline = orca.Pipeline("p", store=store)
    with pipeline:
        module.double.pod(module.size.pod(orca.GlobSource(str(folder / "{name}.txt"))))
    return pipeline


def write(folder: pathlib.Path, **files: str) -> None:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.txt").write_text(text)


def agree(plan: orca.Plan, result) -> None:
    """The plan's counts are the run's: served = cached; to compute = computed + failed. Rows
    still pending upstream may go either way (or fail upstream and never arrive)."""
    for label, node in plan.items():
        counts = result.counts[label]
        served, called = counts.cached - node.cached, counts.computed + counts.failed - node.to_compute
        assert served >= 0 and called >= 0 and served + called <= node.pending, (label, node, counts)
        if node.pending == 0:
            assert (served, called) == (0, 0), label


def files_and_versions(root: pathlib.Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


@pytest.fixture
def steps(tmp_path):
    return load_module(tmp_path, "plan_steps_v1", STEPS.format(k=1))


def test_first_plan_is_all_new_and_agrees_with_the_run(tmp_path, steps):
    data = tmp_path / "data"
    write(data, a="xx", b="yyy")
    pipeline = build(orca.DeltaStore(tmp_path / "s"), data, steps)
    plan = pipeline.plan()
    assert plan["size"].reasons == {"new input": 2}
    assert plan["double"].pending == 2 and plan["double"].to_compute == 0
    agree(plan, pipeline.run(progress=False))
    again = pipeline.plan()
    assert [(n.cached, n.to_compute) for n in again.values()] == [(2, 0), (2, 0)]


def test_plan_writes_nothing(tmp_path, steps):
    data = tmp_path / "data"
    write(data, a="xx")
    store_path = tmp_path / "s"
    pipeline = build(orca.DeltaStore(store_path), data, steps)
    pipeline.run(progress=False)
    write(data, b="new")
    before = files_and_versions(store_path)
    versions = {t: orca.DeltaStore(store_path).version(t) for t in orca.DeltaStore(store_path).tables()}
    plan = build(orca.DeltaStore(store_path), data, steps).plan()
    assert plan["size"].to_compute == 1
    assert files_and_versions(store_path) == before
    assert {t: orca.DeltaStore(store_path).version(t) for t in versions} == versions


def test_new_rows_and_an_edited_file(tmp_path, steps):
    data = tmp_path / "data"
    write(data, a="xx", b="yyy")
    store = orca.DeltaStore(tmp_path / "s")
    build(store, data, steps).run(progress=False)
    write(data, b="changed", c="z")
    os.utime(data / "b.txt", ns=(1, 1))  # a different mtime as well as content
    pipeline = build(store, data, steps)
    plan = pipeline.plan()
    assert plan["size"].reasons == {"new input": 1, "changed input": 1}
    assert set(plan["size"].entries["reason"]) == {"new input", "changed input"}
    assert plan["double"].cached == 1 and plan["double"].pending == 2
    agree(plan, pipeline.run(progress=False))


def test_a_code_change_names_the_old_function_hash(tmp_path, steps):
    data = tmp_path / "data"
    write(data, a="xx", b="yyy")
    store = orca.DeltaStore(tmp_path / "s")
    build(store, data, steps).run(progress=False)
    edited = load_module(tmp_path, "plan_steps_v2", STEPS.format(k=3))
    pipeline = build(store, data, edited)
    plan = pipeline.plan()
    assert plan["size"].reasons == {"code changed": 2}
    assert plan["size"].old_function_hashes == (steps.size.pod.identity.hash,)
    assert plan["size"].function_hash == edited.size.pod.identity.hash
    agree(plan, pipeline.run(progress=False))


def test_an_invalidation_and_a_previous_failure(tmp_path, steps):
    data = tmp_path / "data"
    write(data, a="xx", b="yyy", c="boom")
    store = orca.DeltaStore(tmp_path / "s")
    pipeline = build(store, data, steps)
    first = pipeline.run(progress=False, on_error="continue")
    assert first.counts["size"].failed == 1
    assert pipeline.invalidate("size", pl.col("name") == "a") == 1
    plan = pipeline.plan()
    assert plan["size"].reasons == {"invalidated": 1, "previously failed": 1}
    by_tag = dict(plan["size"].entries.select("name", "reason").iter_rows())
    assert by_tag == {"a": "invalidated", "c": "previously failed"}
    agree(plan, pipeline.run(progress=False, on_error="continue"))


def test_plan_summary_is_a_frame(tmp_path, steps):
    data = tmp_path / "data"
    write(data, a="xx")
    summary = build(orca.MemoryStore(), data, steps).plan().summary()
    assert summary.columns == ["node", "total", "cached", "to_compute", "pending", "reasons"]
    assert summary["node"].to_list() == ["size", "double"]


ADOPTED = '''
import pathlib
import orca

@orca.function_pod(output_keys="n")
def size(path: pathlib.Path) -> int:
    text = path.read_text()
    if "boom" in text:
        raise ValueError("boom")
    return {k} * len(text)  # refactored: {note}

@orca.function_pod(output_keys="m")
def double(n: int) -> int:
    return 2 * n
'''


def test_adopting_a_compatible_change_reuses_results_and_is_audited(tmp_path, steps):
    data = tmp_path / "data"
    write(data, a="xx", b="yyy")
    store = orca.DeltaStore(tmp_path / "s")
    build(store, data, steps).run(progress=False)
    refactored = load_module(tmp_path, "plan_steps_refactored", ADOPTED.format(k=1, note="same outputs"))
    pipeline = build(store, data, refactored)
    plan = pipeline.plan()
    assert plan["size"].reasons == {"code changed": 2}
    assert ("function", "size") in plan["size"].identity_changes
    assert pipeline.adopt("size") == 2
    after = pipeline.plan()
    assert after["size"].to_compute == 0 and after["size"].cached == 2
    result = pipeline.run(progress=False)
    assert result.counts["size"] == orca.Counts(cached=2, computed=0, failed=0)
    assert result.counts["double"].computed == 0
    audit = store.scan("adoptions").collect()
    assert audit.select("node", "old_function_hash", "new_function_hash", "rows").row(0) == (
        "size", steps.size.pod.identity.hash, refactored.size.pod.identity.hash, 2)
    assert "size" in audit["changed"][0]
    with pytest.raises(orca.OrcaError, match="nothing to adopt|earlier function hashes"):
        pipeline.adopt("size")


def test_a_pod_whose_helper_changed_after_declaration_is_refused(tmp_path):
    module = load_module(tmp_path, "plan_helper_v1", """
import orca

FACTOR = 2

def helper(x):
    return x * FACTOR

@orca.function_pod(output_keys="y")
def scale(x: int) -> int:
    return helper(x)
""")
    pipeline = orca.Pipeline("p", store=orca.MemoryStore())
    with pipeline:
        module.scale.pod(orca.DictSource([{"k": 1, "x": 1}], tags=["k"], source_id="s"))
    module.FACTOR = 3  # a value changed after the pipeline was declared: a warning
    with pytest.warns(orca.IdentityWarning, match="values function 'scale' reads changed.*FACTOR"):
        pipeline.run(progress=False)
    exec("def helper(x):\n    return x + FACTOR\n", module.__dict__)  # a notebook cell re-run
    with pytest.raises(orca.OrcaError, match="changed since the pod was declared.*function"):
        pipeline.run(progress=False)
