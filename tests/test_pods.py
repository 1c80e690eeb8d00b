"""Function pods: declaration, identity, laziness, validation, async, several inputs."""

from __future__ import annotations

import time
from typing import TypedDict

import polars as pl
import pytest

import orca
from orca.errors import PodError
from orca.operators import Join
from orca.pods import result_record_ids
from tests.helpers import load_module as load


class Out(TypedDict):
    a: int
    b: str


def src(rows=3, source_id="s"):
    return orca.DictSource([{"id": i, "x": float(i), "y": i, "extra": "e"} for i in range(rows)],
                           tags=["id"], source_id=source_id)


# -- declaring ------------------------------------------------------------------------------
def test_decorated_function_stays_callable_and_has_a_pod():
    @orca.function_pod(output_keys="z")
    def add(x: float, y: int) -> float:
        return x + y

    assert add(1.0, 2) == 3.0
    assert isinstance(add.pod, orca.FunctionPod)
    assert add.pod.name == "add" and add.pod.output_keys == ("z",)
    assert list(add.pod.parameters) == ["x", "y"]
    assert str(add.pod.output_schema.field("z").type) == "double"


def test_several_output_keys_from_tuple_or_typeddict():
    @orca.function_pod(output_keys=["a", "b"])
    def split(x: float) -> tuple[int, str]:
        return int(x), str(x)

    @orca.function_pod(output_keys=["a", "b"])
    def as_dict(x: float) -> Out:
        return {"a": int(x), "b": str(x)}

    for fn in (split, as_dict):
        out = fn.pod(src(2)).to_polars()
        assert out.columns == ["id", "a", "b"]
        assert out["a"].to_list() == [0, 1] and out["b"].to_list() == ["0.0", "1.0"]


@pytest.mark.parametrize("source", [
    "def f(*args) -> int:\n    return 1",
    "def f(**kwargs) -> int:\n    return 1",
    "def f(x) -> int:\n    return 1",
    "def f(x: int):\n    return 1",
])
def test_bad_declarations_raise_at_decoration(source):
    namespace = {}
    exec(source, namespace)  # noqa: S102 - building the bad function is the point
    with pytest.raises(PodError, match="'f'"):
        orca.function_pod(output_keys="z", code_hash=False)(namespace["f"])


def test_several_output_keys_need_a_tuple_annotation():
    with pytest.raises(PodError, match="several output keys"):
        @orca.function_pod(output_keys=["a", "b"])
        def f(x: int) -> int:
            return x


# -- applying -------------------------------------------------------------------------------
def test_pod_call_is_lazy_and_output_points_at_result_records():
    calls = []

    @orca.function_pod(output_keys="z")
    def add(x: float, y: int) -> float:
        calls.append(x)
        return x * 2 + y

    stream = add.pod(src(3))
    assert calls == []  # nothing computed at call time
    assert stream.tag_columns == ("id",) and stream.packet_columns == ("z",)
    out = stream.to_polars(include_system=True)
    assert len(calls) == 3
    assert out["id"].to_list() == [0, 1, 2] and out["z"].to_list() == [0.0, 3.0, 6.0]
    hashes = orca.hash_packets(src(3).to_arrow(), ["x", "y"])
    ids = [r.hex() for r in result_record_ids(add.pod.identity.hash, hashes).to_pylist()]
    assert out["__source__z"].to_list() == [f"results/add/{add.pod.identity.hash}#{i}" for i in ids]
    assert "extra" not in out.columns  # packet columns the function does not read are dropped


def test_missing_parameter_column_is_an_error_naming_it():
    @orca.function_pod(output_keys="z")
    def f(w: int) -> int:
        return w

    with pytest.raises(PodError, match="'w'"):
        f.pod(src())


def test_several_input_streams_are_joined_on_shared_tags():
    @orca.function_pod(output_keys="z")
    def add(x: float, age: int) -> float:
        return x + age

    ages = orca.DictSource([{"id": i, "age": 10 * i} for i in range(3)], tags=["id"], source_id="ages")
    out = add.pod(src(3), ages).to_polars()
    expected = Join()(src(3), ages).to_polars().select("id", (pl.col("x") + pl.col("age")).alias("z"))
    assert out.sort("id").equals(expected.sort("id"))


def test_async_functions_work():
    @orca.function_pod(output_keys="z")
    async def twice(x: float) -> float:
        return 2 * x

    assert twice.pod(src(3)).to_polars()["z"].to_list() == [0.0, 2.0, 4.0]
    assert twice.pod.cached(orca.MemoryStore())(src(3)).to_polars()["z"].to_list() == [0.0, 2.0, 4.0]


def test_keyword_only_parameters_and_defaults():
    @orca.function_pod(output_keys="z")
    def f(x: float, *, scale: int = 10) -> float:
        return x * scale

    assert f.pod(src(2)).to_polars()["z"].to_list() == [0.0, 10.0]


# -- validation -----------------------------------------------------------------------------
def test_wrong_output_type_names_function_key_and_tag():
    @orca.function_pod(output_keys="z")
    def bad(x: float) -> int:
        return "oops" if x == 1.0 else 1

    with pytest.raises(PodError) as info:
        bad.pod(src(3)).to_polars()
    message = str(info.value)
    assert "'bad'" in message and "'z'" in message and "{'id': 1}" in message


def test_null_in_non_optional_parameter_names_column_and_tag():
    @orca.function_pod(output_keys="z")
    def f(x: float) -> float:
        return x

    @orca.function_pod(output_keys="z")
    def g(x: float | None) -> float:
        return -1.0 if x is None else x

    stream = orca.DictSource([{"id": 1, "x": 1.0}, {"id": 2, "x": None}], tags=["id"], source_id="n")
    with pytest.raises(PodError) as info:
        f.pod(stream).to_polars()
    assert "'x'" in str(info.value) and "{'id': 2}" in str(info.value) and "Optional" in str(info.value)
    assert g.pod(stream).to_polars()["z"].to_list() == [1.0, -1.0]


def test_output_key_may_not_be_a_tag():
    @orca.function_pod(output_keys="id")
    def f(x: float) -> int:
        return 1

    with pytest.raises(PodError, match="tag"):
        f.pod(src())


# -- identity -------------------------------------------------------------------------------
BODY = '''
import orca

@orca.function_pod(output_keys="z", version={version!r}, code_hash={code_hash})
def f(x: int) -> int:
    """{doc}"""
    {comment}
    return x + {k}
'''


def identity(tmp_path, n, version="1", code_hash=True, doc="doc", comment="", k=1):
    module = load(tmp_path, f"pod_identity_{n}", BODY.format(version=version, code_hash=code_hash, doc=doc,
                                                             comment=comment, k=k))
    return module.f.pod.identity


def test_identity_follows_body_and_version_not_comments_or_docstrings(tmp_path):
    base = identity(tmp_path, 0)
    assert base.name == "f" and base.version == "1" and base.code_hash and len(base.hash) == 32
    assert identity(tmp_path, 1, doc="another docstring", comment="# a comment").hash == base.hash
    assert identity(tmp_path, 2, k=2).hash != base.hash
    assert identity(tmp_path, 3, version="2").hash != base.hash


def test_code_hash_false_pins_identity_to_name_and_version(tmp_path):
    a = identity(tmp_path, 4, code_hash=False)
    assert a.code_hash is None
    assert identity(tmp_path, 5, code_hash=False, k=5).hash == a.hash
    assert identity(tmp_path, 6, code_hash=False, version="2").hash != a.hash


def test_name_names_the_results_table():
    @orca.function_pod(output_keys="z", name="renamed")
    def f(x: int) -> int:
        return x

    assert f.pod.results_table == f"results/renamed/{f.pod.identity.hash}"


def test_async_pod_runs_concurrently_inside_a_running_event_loop():
    """As in a Jupyter cell: an event loop is already running in this thread."""
    import asyncio

    @orca.function_pod(output_keys="y")
    async def slow_inc(x: int) -> int:
        await asyncio.sleep(0.2)
        return x + 1

    src = orca.DictSource([{"k": i, "x": i} for i in range(40)], tags=["k"], source_id="a")

    async def cell() -> list[int]:
        return slow_inc.pod(src).to_polars()["y"].to_list()

    start = time.perf_counter()
    assert asyncio.run(cell()) == list(range(1, 41))
    assert time.perf_counter() - start < 40 * 0.2 / 2  # concurrent, not one after another


FLAKY_SEEN: set[int] = set()


@orca.function_pod(output_keys="y")
def flaky_in_a_block(x: int) -> int:
    if x in (700, 4321):
        raise ValueError("always fails")
    if x == 701 and x not in FLAKY_SEEN:  # fails once, then succeeds on retry
        FLAKY_SEEN.add(x)
        raise ValueError("fails once")
    return x * 3


def test_failures_inside_a_timed_block_keep_every_other_row():
    # Past the first 256 calls a fast function is called in blocks of 64, then 128, ... up to
    # 1024 (700: in a block of 256; 4321: of 1024): a call that raises in the middle of a block
    # must not shift or lose the values around it.
    import pyarrow as pa

    from orca.calls import run_chunk
    from orca.names import ERROR_COLUMNS, OK, ROW

    FLAKY_SEEN.clear()
    n = 6000
    out = run_chunk(flaky_in_a_block.pod, 1, pa.table({"x": list(range(n)), ROW: list(range(n))}))
    ok = out.column(OK).to_pylist()
    assert [i for i in range(n) if not ok[i]] == [700, 4321]
    ys = out.column("y").to_pylist()
    assert ys[:700] == [3 * i for i in range(700)] and ys[701:4321] == [3 * i for i in range(701, 4321)]
    assert ys[4322:] == [3 * i for i in range(4322, n)] and ys[4321] is None
    assert out.column(ERROR_COLUMNS[1]).to_pylist()[700] == "always fails"
    assert out.column("__attempts").to_pylist()[699:702] == [1, 2, 2]
