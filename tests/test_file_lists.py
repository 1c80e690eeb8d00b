"""Files as data beyond one path per row: batches and merges of path columns, pods that take or
return lists of paths, and files a node wrote that are edited afterwards. In every case an edited
file must be computed again, never served from the cache by its unchanged name."""

from __future__ import annotations

import pathlib
import warnings

import polars as pl
import pyarrow as pa
import pytest

import orca
import orca.engine
from orca.errors import SchemaError, SourceError
from orca.hashing import PATH_METADATA, hash_packet, hash_packets
from orca.operators import MergeJoin


@pytest.fixture
def files(tmp_path: pathlib.Path) -> pathlib.Path:
    for subject in ("m1", "m2"):
        for i in range(2):
            path = tmp_path / "data" / subject / f"{i}.txt"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("x" * (i + 1))
    return tmp_path


@orca.function_pod(output_keys="size")
def total_size(path: list[pathlib.Path]) -> int:
    assert all(isinstance(p, pathlib.Path) for p in path), path
    return sum(len(p.read_text()) for p in path)


def batched(root: pathlib.Path) -> orca.Pipeline:
    pipeline = orca.Pipeline("batched", store=orca.DeltaStore(root / "store"))
    with pipeline:
        total_size.pod(orca.GlobSource(str(root / "data/{subject}/{i}.txt"), source_id="files").batch(by=["subject"]))
    return pipeline


def test_a_batch_of_files_is_hashed_by_content(files):
    first = batched(files)
    assert first.run(progress=False).counts["total_size"].computed == 2
    assert batched(files).run(progress=False).counts["total_size"].cached == 2
    (files / "data/m1/0.txt").write_text("edited")  # same name, new content
    again = batched(files)
    counts = again.run(progress=False).counts["total_size"]
    assert (counts.cached, counts.computed) == (1, 1)
    sizes = dict(again["total_size"].output.to_polars().select("subject", "size").iter_rows())
    assert sizes == {"m1": 8, "m2": 3}
    # A moved file keeps its result: the batch's content is what is hashed.
    (files / "data/m2").rename(files / "data/m3")
    assert batched(files).run(progress=False).counts["total_size"].computed == 0


def test_a_batch_keeps_its_path_columns_and_yields_paths(files):
    stream = orca.GlobSource(str(files / "data/{subject}/{i}.txt"), source_id="files").batch(by=["subject"])
    assert stream.path_columns == {"path"}
    assert stream.schema()[1].field("path").metadata == PATH_METADATA
    _, packet = next(iter(stream))
    assert [p.name for p in packet["path"]] == ["0.txt", "1.txt"]
    assert all(isinstance(p, pathlib.Path) for p in packet["path"])


def test_a_merged_path_column_is_hashed_by_content(tmp_path):
    left, right = tmp_path / "left.txt", tmp_path / "right.txt"
    left.write_text("a")
    right.write_text("b")
    a = orca.DictSource([{"id": 1, "f": left}], tags=["id"], source_id="a")
    b = orca.DictSource([{"id": 1, "f": right}], tags=["id"], source_id="b")
    merged = MergeJoin()(a, b)
    assert merged.path_columns == {"f"}
    before = hash_packets(merged.to_arrow().select(["f"]))[0].as_py()
    right.write_text("changed")
    assert hash_packets(merged.to_arrow().select(["f"]))[0].as_py() != before


def test_merging_a_path_column_with_a_text_column_is_refused(tmp_path):
    (tmp_path / "f.txt").write_text("a")
    a = orca.DictSource([{"id": 1, "f": tmp_path / "f.txt"}], tags=["id"], source_id="a")
    b = orca.DictSource([{"id": 1, "f": str(tmp_path / "f.txt")}], tags=["id"], source_id="b")
    with pytest.raises(SchemaError, match="MergeJoin: packet column .f. holds paths in the streams before it but "
                                          "not in stream 1"):
        MergeJoin()(a, b)


def test_a_column_with_no_value_merges_with_a_path_column_as_paths(tmp_path):
    (tmp_path / "f.txt").write_text("a")
    empty = orca.DictSource([{"id": 1, "f": None, "g": 1}], tags=["id"], source_id="a")  # no file here
    files = orca.DictSource([{"id": 1, "f": tmp_path / "f.txt"}], tags=["id"], source_id="b")
    merged = MergeJoin()(empty, files)
    assert merged.path_columns == {"f"}
    assert merged.to_polars()["f"].to_list() == [[str(tmp_path / "f.txt"), None]]


def test_a_join_names_the_shared_packet_column_not_its_marks(tmp_path):
    (tmp_path / "f.txt").write_text("a")
    a = orca.DictSource([{"id": 1, "f": tmp_path / "f.txt"}], tags=["id"], source_id="a")
    b = orca.DictSource([{"id": 1, "f": "text"}], tags=["id"], source_id="b")
    with pytest.raises(SchemaError, match="appear in more than one stream"):
        a.join(b)


def test_lineage_walks_a_batch_of_batches(files):
    pipeline = orca.Pipeline("twice", store=orca.DeltaStore(files / "store"))
    with pipeline:
        source = orca.GlobSource(str(files / "data/{subject}/{i}.txt"), source_id="files")
        twice = source.batch(by=["subject"]).batch()  # one packet: a list of two lists of files
        nested_size.pod(twice)
    pipeline.run(progress=False)
    lineage = pipeline.lineage("nested_size")
    assert sorted(lineage.filter(pl.col("kind") == "source")["path"].to_list()) == sorted(
        str(p) for p in (files / "data").rglob("*.txt"))


@orca.function_pod(output_keys="size")
def nested_size(path: list[list[pathlib.Path]]) -> int:
    return sum(len(p.read_text()) for batch in path for p in batch)


def test_a_list_of_paths_hashes_each_file_by_content(tmp_path):
    one, two = tmp_path / "1.txt", tmp_path / "2.txt"
    one.write_text("1")
    two.write_text("2")
    as_paths = hash_packet({"f": [one, None, two]})
    field = pa.field("f", pa.large_list(pa.large_string()), metadata=PATH_METADATA)
    table = pa.table({"f": pa.array([[str(one), None, str(two)]], field.type)}, schema=pa.schema([field]))
    assert hash_packets(table)[0].as_py() == as_paths
    assert hash_packet({"f": [str(one), None, str(two)]}) != as_paths  # text is not a file
    nested = hash_packet({"f": [[one], [two]]})
    assert hash_packet({"f": [[one], []]}) == hash_packets(pa.table(
        {"f": pa.array([[[str(one)], []]], pa.large_list(pa.large_list(pa.large_string())))},
        schema=pa.schema([pa.field("f", pa.large_list(pa.large_list(pa.large_string())), metadata=PATH_METADATA)])))[0].as_py()
    two.write_text("two")
    assert hash_packet({"f": [one, None, two]}) != as_paths
    assert hash_packet({"f": [[one], [two]]}) != nested


def test_a_path_column_must_hold_text_or_lists_of_it(tmp_path):
    table = pa.table({"f": pa.array([1])}, schema=pa.schema([pa.field("f", pa.int64(), metadata=PATH_METADATA)]))
    with pytest.raises(orca.errors.HashingError, match="must hold strings or lists of them"):
        hash_packets(table)


def test_a_source_refuses_a_path_column_of_lists(tmp_path):
    (tmp_path / "a").write_text("a")
    frame = pl.DataFrame({"id": [1], "files": [[str(tmp_path / "a")]]})
    with pytest.raises(SourceError, match=r"path columns \['files'\] must hold one path"):
        orca.PolarsSource(frame, tags=["id"], source_id="s", path_columns=["files"])


@orca.function_pod(output_keys="copies")
def copies(n: int, folder: str) -> list[pathlib.Path]:
    folder = pathlib.Path(folder)
    folder.mkdir(exist_ok=True)
    made = []
    for k in range(2):
        path = folder / f"{n}_{k}.txt"
        if not path.exists():
            path.write_text("y" * n)
        made.append(path)
    return made


@orca.function_pod(output_keys="measured")
def measure(copies: list[pathlib.Path]) -> int:
    return sum(len(p.read_text()) for p in copies)


@orca.function_pod(output_keys="file")
def write_one(n: int, folder: str) -> pathlib.Path:
    path = pathlib.Path(folder) / f"{n}.txt"
    path.parent.mkdir(exist_ok=True)
    path.write_text("y" * n)
    return path


@orca.function_pod(output_keys="measured")
def measure_one(file: pathlib.Path) -> int:
    return len(file.read_text())


def written(root: pathlib.Path, writer: orca.FunctionPod, reader: orca.FunctionPod) -> orca.Pipeline:
    pipeline = orca.Pipeline("written", store=orca.DeltaStore(root / "store"))
    with pipeline:
        rows = [{"i": i, "n": i + 1, "folder": str(root / "out")} for i in range(3)]
        reader.pod(writer.pod(orca.DictSource(rows, tags=["i"], source_id="s")))
    return pipeline


def test_a_list_of_paths_output_is_a_path_column():
    assert copies.pod.path_outputs == ["copies"]


@pytest.mark.parametrize("writer, reader, edited", [(write_one, measure_one, "2.txt"), (copies, measure, "2_1.txt")])
def test_a_file_a_node_wrote_and_someone_edited_is_computed_again(tmp_path, monkeypatch, writer, reader, edited):
    # Inputs this small would not be matched to the assets; they are here (as 50k rows would be),
    # so the settled-chain shortcut, which reads no input, is tried too.
    monkeypatch.setattr(orca.engine, "_ASSET_MIN_ROWS", 1)
    assert written(tmp_path, writer, reader).run(progress=False).counts[reader.pod.name].computed == 3
    assert written(tmp_path, writer, reader).run(progress=False).counts[reader.pod.name].cached == 3
    (tmp_path / "out" / edited).write_text("edited!")
    pipeline = written(tmp_path, writer, reader)
    counts = pipeline.run(progress=False).counts
    assert counts[writer.pod.name].computed == 0
    assert (counts[reader.pod.name].cached, counts[reader.pod.name].computed) == (2, 1)
    measured = pipeline[reader.pod.name].output.to_polars().sort("i")["measured"].to_list()
    assert measured == ([1, 7, 3] if writer is write_one else [2, 2 + 7, 6])


@orca.function_pod(output_keys="n")
def read_size(f: pathlib.Path) -> int:
    return len(f.read_text())


def test_a_path_parameter_over_text_warns_that_files_are_hashed_by_name(tmp_path):
    (tmp_path / "a.txt").write_text("a")
    text = orca.DictSource([{"i": 1, "f": str(tmp_path / "a.txt")}], tags=["i"], source_id="text")
    with pytest.warns(orca.errors.IdentityWarning, match="parameter 'f' is annotated Path but the packet column it reads is not a path column"):
        read_size.pod(text)
    marked = orca.DictSource([{"i": 1, "f": tmp_path / "a.txt"}], tags=["i"], source_id="marked")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        read_size.pod(marked)
