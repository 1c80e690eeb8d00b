"""Regressions found by review: each was a way to a silently wrong or missing result."""

from __future__ import annotations

import random

import polars as pl
import pytest

import orca
from orca import engine


@orca.function_pod(output_keys="y")
def square(x: int) -> int:
    return x * x


@orca.function_pod(output_keys="z")
def plus1(y: int) -> int:
    return y + 1


FAIL_AT: list[int] = []


@orca.function_pod(output_keys="v")
def sample(x: int) -> float:
    if x in FAIL_AT:
        raise ValueError("flaky")
    return random.random()


def squares(store, xs, name="p") -> orca.Pipeline:
    pipeline = orca.Pipeline(name, store=store)
    with pipeline:
        square.pod(orca.DictSource([{"k": i, "x": x} for i, x in enumerate(xs)], tags=["k"], source_id="n"))
    return pipeline


def test_claims_of_an_earlier_run_never_skip_this_run_s_work(store):
    squares(store, range(40)).run(progress=False, claim=True, claim_rows=10)
    changed = squares(store, range(1000, 1040))  # new input, the same number of chunks
    assert changed.run(progress=False, claim=True, claim_rows=10).counts["square"].computed == 40
    assert changed.plan()["square"].to_compute == 0 and len(changed["square"]) == 40
    # the new input's chunks are claimed afresh (each chunk id is a digest of its entries)
    assert len(store.claims("claims/p/square", 4)) == 8
    again = squares(store, range(40))
    assert again.invalidate("square") == 40
    assert again.run(progress=False, claim=True, claim_rows=10).counts["square"].computed == 40


def test_an_asset_drops_rows_whose_input_rows_are_gone(store):
    squares(store, range(10)).run(progress=False)
    fewer = squares(store, range(5))
    fewer.run(progress=False)
    assert fewer.asset("square").collect().height == 5 == fewer["square"].results().collect().height


def test_an_asset_never_keeps_a_value_its_entry_no_longer_has(store):
    pipeline = orca.Pipeline("flaky", store=store)
    with pipeline:
        sample.pod(orca.DictSource([{"k": i, "x": i} for i in range(10)], tags=["k"], source_id="n"))
    pipeline.run(progress=False)
    pipeline.invalidate("sample")
    FAIL_AT[:] = [9]
    try:
        with pytest.raises(orca.PodError):  # recomputes some entries, then fails before the asset
            pipeline.run(progress=False, batch_rows=1)
    finally:
        FAIL_AT.clear()
    pipeline.run(progress=False)
    results = pipeline["sample"].results().collect().sort("k")
    assert pipeline.asset("sample").collect().sort("k").select("k", "v").equals(results)


def test_a_node_fed_through_an_operator_sees_its_upstream_change():
    pipeline = orca.Pipeline("memo", store=orca.MemoryStore())
    with pipeline:
        upstream = square.pod(orca.DictSource([{"k": i, "x": i} for i in range(10)], tags=["k"], source_id="n"))
        plus1.pod(upstream.filter(pl.col("y") >= 0))
    pipeline.run(progress=False)
    assert len(pipeline["plus1"]) == 10
    pipeline.invalidate("square", pl.col("k") < 5)
    assert len(pipeline["plus1"]) == 5  # not the status remembered from the run


def test_another_writer_s_invalidation_during_a_run_is_not_hidden(tmp_path, monkeypatch):
    path = tmp_path / "s"
    squares(orca.DeltaStore(path), range(5)).run(progress=False)
    other = squares(orca.DeltaStore(path), range(5))  # stands for another process
    real_drive = engine.drive

    def drive(store, steps, on_step=None, **_):  # (waits for the run's commits, then the other writer acts)
        real_drive(store, steps, on_step)
        other.invalidate("square", pl.col("k") < 2)

    monkeypatch.setattr(engine, "drive", drive)
    pipeline = squares(orca.DeltaStore(path), range(10))
    pipeline.run(progress=False)
    monkeypatch.setattr(engine, "drive", real_drive)
    assert len(pipeline["square"]) == 8
    assert pipeline.asset("square").collect().height == 8
