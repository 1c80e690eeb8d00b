"""Assets: each node's current output as a versioned Delta table (issue 11)."""

from __future__ import annotations

import datetime
import pathlib

import polars as pl
import pyarrow as pa
import pytest

import orca
from tests.helpers import SPAWN, load_module
from tests.pipelines import assets_files
from tests.pipelines.assets_files import build

ASSET_COLUMNS = ["__entry_id", "__record_id", "__function_hash", "__run_id"]


def write(folder: pathlib.Path, **files: str) -> None:
    folder.mkdir(exist_ok=True)
    for name, text in files.items():
        (folder / f"{name}.txt").write_text(text)


def same(pipeline: orca.Pipeline, label: str) -> pl.DataFrame:
    """The asset equals node.results() row for row; returns it sorted by tags."""
    node = pipeline[label]
    tags, outputs = list(node.input.tag_columns), list(node.pod.output_keys)
    asset = pipeline.asset(label).collect()
    assert asset.columns == [*tags, *outputs, *ASSET_COLUMNS]
    assert asset["__entry_id"].n_unique() == asset.height
    results = node.results().collect()
    assert asset.select(*tags, *outputs).sort(tags).equals(results.sort(tags))
    return asset.sort(tags)


@pytest.fixture
def data(tmp_path) -> pathlib.Path:
    folder = tmp_path / "data"
    write(folder, a="x", b="yy", c="zzz")
    return folder


@pytest.fixture(params=["memory", "delta"])
def store(request, tmp_path):
    return orca.MemoryStore() if request.param == "memory" else orca.DeltaStore(tmp_path / "store")


def test_assets_follow_every_kind_of_change(store, data):
    pipeline = build(store, data)
    first = pipeline.run(progress=False)
    assert same(pipeline, "double")["m"].to_list() == [2, 4, 6]
    versions = {label: len(pipeline.history(label)) for label in ("size", "double")}

    pipeline.run(progress=False)  # nothing changed: no new materialisation
    assert {label: len(pipeline.history(label)) for label in versions} == versions

    write(data, d="dddd")  # a new file
    write(data, a="xxxxx")  # an edited file
    (data / "c.txt").unlink()  # a deleted file: its row leaves the asset (its result stays cached)
    pipeline = build(store, data)
    pipeline.run(progress=False)
    asset = same(pipeline, "double")
    assert dict(zip(asset["name"], asset["m"], strict=True)) == {"a": 10, "b": 4, "d": 8}
    assert pipeline.history("double")["deleted"].sum() >= 1
    assert store.scan(assets_files.size.pod.results_table).collect().height == 5  # nothing forgotten

    pipeline.invalidate("size", pl.col("name") == "b")
    pipeline.run(progress=False)
    asset = same(pipeline, "size")
    assert asset.filter(pl.col("name") == "b")["__run_id"].item() != first.run_id

    # the first materialisation is still there, exactly
    old = pipeline.asset("double", run_id=first.run_id).collect().sort("name")
    assert dict(zip(old["name"], old["m"], strict=True)) == {"a": 2, "b": 4, "c": 6}
    assert pipeline.asset("double", version=int(pipeline.history("double")["version"][0])).collect().height == 3


def test_a_code_change_replaces_the_rows(tmp_path, data):
    store = orca.DeltaStore(tmp_path / "store")
    body = '''
import orca

@orca.function_pod(output_keys="m")
def double(n: int) -> int:
    return {k} * n
'''
    v1, v2 = (load_module(tmp_path, f"assets_double_v{k}", body.format(k=k)) for k in (2, 3))
    for module in (v1, v2):
        pipeline = orca.Pipeline("code", store=store)
        with pipeline:
            module.double.pod(assets_files.size.pod(orca.GlobSource(str(data / "{name}.txt"))))
        pipeline.run(progress=False)
    asset = same(pipeline, "double")
    assert asset["m"].to_list() == [3, 6, 9]
    assert set(asset["__function_hash"]) == {v2.double.pod.identity.hash}
    history = pipeline.history("double")
    assert history["inserted"].to_list()[-1] + history["updated"].to_list()[-1] == 3


def test_runs_record_the_asset_version_and_time_travel_by_time(tmp_path, data):
    store = orca.DeltaStore(tmp_path / "store")
    first = build(store, data).run(progress=False)
    between = datetime.datetime.now(datetime.UTC)
    write(data, e="eeeeeeeee")
    pipeline = build(store, data)
    second = pipeline.run(progress=False)
    events = store.scan("runs").collect().filter(pl.col("event") == "node_materialised")
    made = dict(events.filter(pl.col("run_id") == second.run_id).select("node", "asset_version").iter_rows())
    assert made["double"] == int(pipeline.history("double")["version"][-1])
    assert pipeline.asset("double", as_of=between).collect().height == 3
    assert pipeline.asset("double", run_id=first.run_id).collect().height == 3
    assert pipeline.asset("double").collect().height == 4
    # an analyst reads the same table without orca
    assert pl.scan_delta(store.uri("assets/files/double")).collect().height == 4


def test_operator_nodes_are_materialised_on_request(store, data):
    meta = orca.DictSource([{"name": n, "group": g} for n, g in (("a", 1), ("b", 2), ("c", 1))],
                           tags=["name"], source_id="meta")
    pipeline = orca.Pipeline("ops", store=store)
    with pipeline:
        joined = assets_files.size.pod(orca.GlobSource(str(data / "{name}.txt"))).join(meta)
    pipeline.run(progress=False)
    label = [k for k, v in pipeline.nodes.items() if isinstance(v, orca.OperatorNode)][0]
    assert pipeline.materialise(label) is not None
    assert pipeline.materialise(label) is None  # unchanged: no new version
    asset = pipeline.asset(label).collect().sort("name")
    assert asset.select("name", "n", "group").equals(joined.to_polars().select("name", "n", "group").sort("name"))
    with pytest.raises(orca.OrcaError, match="function node"):
        pipeline.materialise("size")


def test_two_processes_leave_consistent_assets(tmp_path, data):
    write(data, **{f"f{i}": "q" * i for i in range(40)})
    path = str(tmp_path / "store")
    procs = [SPAWN.Process(target=assets_files.run, args=(path, str(data))) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=180)
    assert [p.exitcode for p in procs] == [0, 0]
    pipeline = build(orca.DeltaStore(path), data)
    for label in ("size", "double"):
        asset = same(pipeline, label)
        assert asset.height == 43


# -- sources and lineage ---------------------------------------------------------------------
def joined_pipeline(store, data):
    meta = orca.DictSource([{"name": n, "group": g} for n, g in (("a", 1), ("b", 2), ("c", 1))],
                           tags=["name"], source_id="meta")
    pipeline = orca.Pipeline("lin", store=store)
    with pipeline:
        sized = assets_files.size.pod(orca.GlobSource(str(data / "{name}.txt"), source_id="files"))
        assets_files.double.pod(sized.join(meta).rename_packets({"group": "g"}).drop_packets("g"))
    return pipeline


def test_sources_are_recorded_once_per_content(store, data):
    pipeline = joined_pipeline(store, data)
    pipeline.run(progress=False)
    pipeline.run(progress=False)
    files = store.scan("sources/files").collect().sort("name")
    assert files["name"].to_list() == ["a", "b", "c"]
    assert files["path_size"].to_list() == [1, 2, 3]
    assert files["path_content_hash"].to_list() == [orca.hash_file(data / f"{n}.txt") for n in "abc"]
    assert store.scan("sources/meta").collect().height == 3
    write(data, a="changed")
    joined_pipeline(store, data).run(progress=False)
    assert store.scan("sources/files").collect().height == 4  # the new content of a.txt


def test_sources_are_recorded_a_slice_at_a_time_and_once(store, data, monkeypatch):
    monkeypatch.setattr(orca.lineage, "_RECORD_SLICE", 2)  # 3 rows of meta, 3 of files: two slices each
    pipeline = joined_pipeline(store, data)
    pipeline.run(progress=False)
    assert sorted(store.scan("sources/meta").collect()["name"].to_list()) == ["a", "b", "c"]
    assert sorted(store.scan("sources/files").collect()["name"].to_list()) == ["a", "b", "c"]
    pipeline.run(progress=False)
    assert store.scan("sources/meta").collect().height == 3
    steps = pipeline.lineage("double", pl.col("name") == "c")
    assert steps.filter(pl.col("kind") == "source")["path"].to_list() == [str((data / "c.txt").resolve())]


def test_lineage_through_a_join_and_two_pods_names_the_files(store, data):
    pipeline = joined_pipeline(store, data)
    pipeline.run(progress=False)
    steps = pipeline.lineage("double", pl.col("name") == "b")
    nodes = steps.filter(pl.col("kind") == "node")
    assert nodes.sort("depth")["node"].to_list() == ["double", "size"]
    sources = steps.filter(pl.col("kind") == "source")
    assert set(sources["source_id"]) == {"files"}  # the join's meta columns were dropped before double
    files = sources.filter(pl.col("source_id") == "files")
    assert files["path"].to_list() == [str((data / "b.txt").resolve())]
    assert files["content_hash"].to_list() == [orca.hash_file(data / "b.txt")]
    whole = pipeline.lineage("double")
    assert whole["row"].n_unique() == 3
    with pytest.raises(orca.SchemaError, match=r"unknown asset column\(s\) \['nope'\]"):
        pipeline.lineage("double", pl.col("nope") == 1)


def test_downstream_lists_exactly_the_dependent_rows(store, data):
    pipeline = joined_pipeline(store, data)
    pipeline.run(progress=False)
    rows = pipeline.downstream("files", pl.col("name") == "c")
    assert sorted(zip(rows["node"], rows["name"], strict=True)) == [("double", "c"), ("size", "c")]
    with pytest.raises(orca.StoreError, match="group"):  # sources record tags and files, not data
        pipeline.downstream("meta", pl.col("group") == 1)
    meta_rows = pipeline.downstream("meta", pl.col("name").is_in(["a", "c"]))
    assert sorted(zip(meta_rows["node"], meta_rows["name"], strict=True)) == [("double", "a"), ("double", "c")]


RERUN = '''
import sys
from tests.pipelines.assets_files import build
import orca
result = build(orca.DeltaStore(sys.argv[1]), sys.argv[2]).run(progress=False, rehash_files=sys.argv[3] == "1")
print(result.counts["size"].computed)
'''


def test_a_new_process_trusts_recorded_file_hashes_until_asked(tmp_path, data):
    import os
    import subprocess
    import sys

    store = tmp_path / "store"
    build(orca.DeltaStore(store), data).run(progress=False)
    target = data / "b.txt"
    stat = target.stat()
    target.write_text("QQ")  # same size, and the mtime put back: only a re-read can tell
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns))

    def rerun(rehash: str) -> int:
        done = subprocess.run([sys.executable, "-c", RERUN, str(store), str(data), rehash], capture_output=True,
                              text=True, cwd=str(pathlib.Path(__file__).parent.parent), check=True)
        return int(done.stdout.strip().splitlines()[-1])

    assert rerun("0") == 0  # the recorded (size, mtime, hash) spared reading the files
    assert rerun("1") == 1  # rehash_files=True reads them all again and finds the change


def test_open_failures_close_when_their_entry_succeeds(tmp_path, data):
    flaky_body = '''
import pathlib
import orca

@orca.function_pod(output_keys="n")
def size(path: pathlib.Path) -> int:
    text = path.read_text()
    if "boom" in text:
        raise ValueError("boom")
    return len(text)
'''
    module = load_module(tmp_path, "assets_flaky", flaky_body)
    store_path = tmp_path / "store"

    def run():
        pipeline = orca.Pipeline("f", store=orca.DeltaStore(store_path))
        with pipeline:
            module.size.pod(orca.GlobSource(str(data / "{name}.txt")))
        pipeline.run(progress=False, on_error="continue")
        return pipeline

    write(data, b="boom", c="boom")
    pipeline = run()
    assert pl.scan_delta(str(store_path / "failures")).collect().height == 2  # readable without orca
    assert sorted(json_tags(pipeline.failures(open_only=True))) == ["b", "c"]
    write(data, b="fine now")
    pipeline = run()
    assert sorted(json_tags(pipeline.failures())) == ["b", "c", "c"]  # every failure is kept
    assert sorted(json_tags(pipeline.failures(open_only=True))) == ["c"]


def json_tags(failures: pl.DataFrame) -> list[str]:
    import json

    return [json.loads(t)["name"] for t in failures["tag"]]


def test_the_failures_table_exists_after_a_first_run(tmp_path, data):
    store_path = tmp_path / "store"
    build(orca.DeltaStore(store_path), data).run(progress=False)
    assert pl.scan_delta(str(store_path / "failures")).collect().height == 0


def test_one_source_id_in_two_pipelines_with_other_tags(tmp_path):
    store_path = tmp_path / "store"
    for tags, rows in ((["k"], [{"k": 1, "x": 1}]), (["j"], [{"j": "a", "x": 2}])):
        pipeline = orca.Pipeline("p" + tags[0], store=orca.DeltaStore(store_path))
        with pipeline:
            assets_files.double.pod(orca.DictSource(rows, tags=tags, source_id="numbers").rename_packets({"x": "n"}))
        pipeline.run(progress=False)
    recorded = pl.scan_delta(str(store_path / "sources" / "numbers")).collect()
    assert recorded.height == 2 and {"k", "j"} <= set(recorded.columns)


@orca.function_pod(output_keys="s")
def total(x: list[int]) -> int:
    return sum(x)


def test_downstream_through_a_batch(store):
    source = orca.DictSource([{"k": i, "g": i % 2, "x": i} for i in range(6)], tags=["k", "g"], source_id="nums")
    pipeline = orca.Pipeline("batched", store=store)
    with pipeline:
        total.pod(source.batch(by=["g"]))
    pipeline.run(progress=False)
    rows = pipeline.downstream("nums", pl.col("k") == 3)
    assert rows.select("node", "g", "s").rows() == [("total", 1, 9)]


@orca.function_pod(output_keys="doubled")
def twice(x: int) -> int:
    return 2 * x


def test_an_input_that_shrinks_leaves_exactly_its_rows(store):
    """Most rows leaving at once (the input shrank) take the replacing merge: its source is the
    rows that stay, not a list of every row that goes. Same rows, counts and history either way."""
    def run(ids: list[int]) -> orca.Pipeline:
        pipeline = orca.Pipeline("shrink", store=store)
        with pipeline:
            twice.pod(orca.PolarsSource(pl.DataFrame({"id": ids, "x": ids}), tags=["id"], source_id="shrink"))
        pipeline.run(progress=False)
        return pipeline

    run(list(range(40)))
    pipeline = run([1, 2, 3, 4, 5, 100, 101, 102])  # 5 stay, 35 go, 3 are new
    asset = same(pipeline, "twice")
    assert asset["doubled"].to_list() == [2, 4, 6, 8, 10, 200, 202, 204]
    history = pipeline.history("twice")
    assert history.select("inserted", "updated", "deleted").row(-1) == (3, 0, 35)
    assert history["operation"][-1] == "MERGE"  # one commit that conflicts with a concurrent writer's
    assert pipeline.asset("twice", version=int(history["version"][0])).collect().height == 40


def test_two_writers_adding_the_same_entries_leave_each_once(tmp_path, monkeypatch):
    """Adding entries only is an append, which deltalake commits blindly over a concurrent
    append. The sync transaction every materialisation carries makes the later of the two
    conflict: it is planned again on the winner's version, which holds its rows already."""
    import orca.stores.delta as delta

    first, second = orca.DeltaStore(tmp_path / "s"), orca.DeltaStore(tmp_path / "s")
    keys = pl.Series("__entry_id", [1, 2, 3], pl.UInt128)
    rows = pa.table({"__entry_id": orca.hashing.keys_binary(keys), "v": pa.array([10, 20, 30], pa.int64())})
    first.ensure("assets/race", rows.schema)
    second.version("assets/race")  # (its handle is at the empty version)
    append, raced = delta.append_file, []

    def racing(*args, **kwargs):  # the other writer commits between this one's plan and commit
        if not raced:
            raced.append(None)
            raced[0] = first.sync_rows("assets/race", "__entry_id", rows, keys.clear())
        return append(*args, **kwargs)

    monkeypatch.setattr(delta, "append_file", racing)
    version = second.sync_rows("assets/race", "__entry_id", rows, keys.clear())
    assert raced == [1] and version is None  # the loser, planned again, found nothing to write
    stored = orca.DeltaStore(tmp_path / "s").scan("assets/race").collect()
    assert sorted(stored["v"].to_list()) == [10, 20, 30]
    assert [h["operation"] for h in first.history("assets/race")] == ["WRITE", "CREATE TABLE"]
