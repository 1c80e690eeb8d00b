"""A store written before ids were stored as 16 bytes (table format "1": ids as hex text) keeps
working: read without recomputing, appended to in its own form, invalidated, traced.

The store in ``tests/fixtures/legacy_store`` was made by the orca of commit 68272bc running
``tests/pipelines/legacy.py`` (two runs: one packet fails, one entry was invalidated between).
Each test works on a copy.
"""

from __future__ import annotations

import json
import pathlib
import shutil

import polars as pl
import pytest

import orca
from tests.pipelines import legacy
from tests.test_cli import orca_cli

FIXTURE = pathlib.Path(__file__).parent / "fixtures" / "legacy_store"


@pytest.fixture
def old(tmp_path: pathlib.Path) -> pathlib.Path:
    path = tmp_path / "store"
    shutil.copytree(FIXTURE, path)
    return path


def raw(path: pathlib.Path, table: str) -> pl.DataFrame:
    return pl.read_delta(str(path / table))


def grown(store: orca.Store) -> orca.Pipeline:
    """The legacy pipeline with one more source row whose packet is new (x = 10)."""
    frame = pl.DataFrame({"id": list(range(7)), "x": [i % 4 for i in range(6)] + [10]})
    pipeline = orca.Pipeline("legacy", store=store)
    with pipeline:
        legacy.inc.pod(legacy.double.pod(orca.PolarsSource(frame, tags=["id"], source_id="numbers")))
    return pipeline


def test_the_fixture_is_a_legacy_store():
    results = raw(FIXTURE, f"results/double/{legacy.double.pod.identity.hash}")
    assert results.schema["__packet_hash"] == pl.String  # hex text: what format "1" wrote
    assert json.loads((FIXTURE / ".orca-store").read_text())["orca.format"] == "1"


def test_a_legacy_store_is_read_without_recomputing(old):
    pipeline = legacy.build(orca.DeltaStore(old))
    plan = pipeline.plan()
    assert plan["double"].to_compute == 1 and plan["double"].reasons == {"previously failed": 1}
    assert plan["inc"].to_compute == 0
    result = pipeline.run(on_error="continue", progress=False)
    assert result.counts["double"] == orca.Counts(cached=5, computed=0, failed=1)
    assert result.counts["inc"] == orca.Counts(cached=5, computed=0, failed=0)
    out = pipeline["inc"].results().collect().sort("id")
    assert out["id"].to_list() == [0, 1, 2, 4, 5] and out["z"].to_list() == [1, 3, 5, 1, 3]
    failures = pipeline.failures(open_only=True)
    assert failures["node"].to_list() == ["double"] and len(failures["entry_id"][0]) == 32
    assert failures["packet_hash"][0] == orca.hash_packet({"x": 3})


def test_a_legacy_store_takes_new_rows_in_its_own_form(old):
    store = orca.DeltaStore(old)
    pipeline = grown(store)
    before = raw(old, "pipelines/legacy/inc").height
    result = pipeline.run(on_error="continue", progress=False)
    assert result.counts["double"] == orca.Counts(cached=5, computed=1, failed=1)
    assert result.counts["inc"] == orca.Counts(cached=5, computed=1, failed=0)
    results = raw(old, f"results/double/{legacy.double.pod.identity.hash}")
    assert results.schema["__packet_hash"] == pl.String  # still hex text, new row included
    assert orca.hash_packet({"x": 10}) in results["__packet_hash"].to_list()
    prov = raw(old, "pipelines/legacy/inc")
    assert prov.schema["__entry_id"] == pl.String and prov.height == before + 1
    # A new process reads both: nothing left to compute but the failing packet.
    again = grown(orca.DeltaStore(old)).run(on_error="continue", progress=False)
    assert again.counts["double"] == orca.Counts(cached=6, computed=0, failed=1)
    assert again.counts["inc"] == orca.Counts(cached=6, computed=0, failed=0)
    out = grown(orca.DeltaStore(old))["inc"].results().collect().sort("id")
    assert out["z"].to_list() == [1, 3, 5, 1, 3, 21]


def test_a_legacy_asset_is_merged_into_in_its_own_form(old):
    # (never overwritten to change its column types: DESIGN.md, records are never overwritten)
    assert raw(old, "assets/legacy/inc").schema["__entry_id"] == pl.String
    pipeline = grown(orca.DeltaStore(old))
    pipeline.run(on_error="continue", progress=False)
    asset = raw(old, "assets/legacy/inc").sort("id")
    assert asset.schema["__entry_id"] == pl.String and asset.height == 6
    current = pipeline.asset("inc").collect().sort("id")
    assert current["__entry_id"].to_list() == asset["__entry_id"].to_list()  # hex, as the API shows ids
    assert current["z"].to_list() == [1, 3, 5, 1, 3, 21]
    assert current.drop("__run_id").equals(
        pipeline["inc"].results().collect().sort("id").join(current.select("id", "__entry_id", "__record_id",
                                                                          "__function_hash"), on="id"))
    prov = raw(old, "pipelines/legacy/inc").filter(pl.col("__invalidated_at").is_null())
    assert set(asset["__entry_id"]) == set(prov["__entry_id"])  # the asset's ids are the entries'
    version = orca.DeltaStore(old).version("assets/legacy/inc")
    assert pipeline.run(on_error="continue", progress=False).counts["inc"].computed == 0
    assert orca.DeltaStore(old).version("assets/legacy/inc") == version  # a no-change run writes nothing
    # the older materialisations are still readable (time travel)
    first = pipeline.asset("inc", version=1).collect()
    assert first.height == 5 and len(first["__entry_id"][0]) == 32


def test_a_legacy_table_is_invalidated_and_traced(old):
    pipeline = grown(orca.DeltaStore(old))
    assert pipeline.invalidate("double", pl.col("id") == 2) == 1
    prov = raw(old, "pipelines/legacy/double")
    assert prov.filter(pl.col("__invalidated_at").is_not_null()).height == 1
    result = pipeline.run(on_error="continue", progress=False)
    assert result.counts["double"].computed == 2  # the invalidated entry and the new packet
    steps = pipeline.lineage("inc", where=pl.col("id") == 6)
    assert steps.filter(pl.col("kind") == "node")["node"].to_list() == ["inc", "double"]
    assert steps.filter(pl.col("kind") == "source")["source_id"].to_list() == ["numbers"]
    down = pipeline.downstream("numbers", where=pl.col("id") == 0)
    assert sorted(down["node"].to_list()) == ["double", "inc"]


def test_the_cli_reads_a_legacy_store(old):
    done = orca_cli("--json", "failures", "legacy", store=old)
    failures = json.loads(done.stdout)
    assert failures and all(len(f["entry_id"]) == 32 for f in failures)
    shown = json.loads(orca_cli("--json", "show", "legacy", store=old).stdout)
    assert shown
