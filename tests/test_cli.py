"""The ``orca`` command line, run as a subprocess against a store made by a real pipeline.

The store (``tests/pipelines/cli_demo.py``: pipeline ``demo`` with nodes ``inc`` and ``check``,
``check`` failing for the row ``k == 2``, plus the cached pod ``triple`` run on its own) is
built once per module; tests that change it work on a copy. ``orca plan`` and ``orca graph``
load ``tests/pipelines/cli_script.py``, whose store is made by running that script once.
"""

from __future__ import annotations

import datetime
import importlib.metadata
import json
import os
import pathlib
import shutil
import subprocess
import sys
import xml.etree.ElementTree as ET

import polars as pl
import pyarrow as pa
import pytest

import orca
from orca.cli._common import CliError
from orca.cli.edit import parse_where
from orca.cli.script import load_pipeline
from tests.pipelines import cli_demo

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = "tests/pipelines/cli_script.py"


def orca_cli(*args: str, store: pathlib.Path | None = None, env: dict[str, str] | None = None,
             check: int | None = 0) -> subprocess.CompletedProcess[str]:
    """Run ``python -m orca [--store STORE] ARGS`` with stdin closed; assert its exit code."""
    argv = [sys.executable, "-m", "orca", *(["--store", str(store)] if store else []), *args]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          env={**os.environ, **(env or {})}, timeout=120)
    if check is not None:
        assert done.returncode == check, (argv, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr, done.stderr  # never a traceback for a user error
    return done


def as_json(*args: str, store: pathlib.Path) -> object:
    return json.loads(orca_cli("--json", *args, store=store).stdout)


def one_line_error(done: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("orca: "), done.stderr
    for needle in needles:
        assert needle in done.stderr, done.stderr


def live_keys(store: orca.DeltaStore, name: str) -> int:
    return store.scan(name).select(pl.len()).collect().item()


@pytest.fixture(scope="module")
def demo_store(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    path = tmp_path_factory.mktemp("cli") / "store"
    assert cli_demo.run(str(path), bare=True).status == "failed"
    return path


@pytest.fixture(scope="module")
def script_store(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The store of ``cli_script.py``'s pipeline after one run of the script (6 rows)."""
    path = tmp_path_factory.mktemp("cli_script") / "store"
    done = subprocess.run([sys.executable, SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CLI_SCRIPT_STORE": str(path)})
    assert done.stdout == "succeeded\n", done.stderr
    return path


def snapshot(store: pathlib.Path) -> dict[str, tuple[int, int]]:
    """Every file of a store with its size and modification time (to show nothing was written)."""
    return {str(p.relative_to(store)): (p.stat().st_size, p.stat().st_mtime_ns) for p in store.rglob("*")}


@pytest.fixture
def store_copy(demo_store: pathlib.Path, tmp_path: pathlib.Path) -> pathlib.Path:
    return pathlib.Path(shutil.copytree(demo_store, tmp_path / "store"))


def test_ls(demo_store: pathlib.Path) -> None:
    listing = as_json("ls", store=demo_store)
    assert listing["pipelines"] == [{"pipeline": "demo", "nodes": ["inc", "check"], "runs": 1, "last_run": "failed"}]
    tables = {t["name"]: t for t in listing["tables"]}
    assert tables["pipelines/demo/inc"]["rows"] == 7 and tables["pipelines/demo/check"]["rows"] == 6
    assert next(t["rows"] for n, t in tables.items() if n.startswith("results/inc/")) == 6  # k=0, k=6 share one
    assert {n.split("/")[1] for n in tables if n.startswith("results/")} == {"inc", "check", "triple"}
    assert all(t["bytes"] > 0 for t in tables.values())
    text = orca_cli("ls", env={"ORCA_STORE": str(demo_store)}).stdout  # the store from $ORCA_STORE
    assert "pipelines/demo/check" in text and "demo      inc, check" in text


def test_show(demo_store: pathlib.Path) -> None:
    text = orca_cli("show", "demo", store=demo_store).stdout
    assert "last run" in text and "failed" in text
    check_line = next(line for line in text.splitlines() if line.startswith("check"))
    assert check_line.split() == ["check", "pipelines/demo/check", "6", "6", "7", "0", "6", "1", "failed"]
    # The head of the node's current output, from its asset table, in tag order.
    shown = as_json("show", "demo", "check", store=demo_store)
    entries = shown["current_output"]
    assert "recorded_entries" not in shown
    assert all(set(e) == {"k", "group", "ok", "__run_id"} for e in entries)
    # one row per entry -- k=0 and k=6 share a packet, a result and a record id -- with its output
    assert [e["k"] for e in entries] == [0, 1, 3, 4, 5, 6]
    assert all(e["ok"] == (e["k"] in (1, 3, 5)) for e in entries)
    assert [e["k"] for e in as_json("show", "demo", "check", "--limit", "2", store=demo_store)["current_output"]
            ] == [0, 1]
    text = orca_cli("show", "demo", "inc", store=demo_store).stdout
    assert "inc: current output (assets/demo/inc: 7 rows; first 10 by tags)" in text and "recorded" not in text
    one_line_error(orca_cli("show", "nope", store=demo_store, check=None), "unknown pipeline 'nope'", "demo")
    one_line_error(orca_cli("show", "demo", "nope", store=demo_store, check=None), "no node 'nope'", "inc, check")


def test_runs(demo_store: pathlib.Path, tmp_path: pathlib.Path) -> None:
    (run,) = as_json("runs", "demo", store=demo_store)
    assert run["status"] == "failed" and run["pipeline"] == "demo" and run["duration_s"] > 0
    assert [(n["node"], n["total"], n["computed"], n["failed"]) for n in run["nodes"]] == [
        ("inc", 7, 7, 0), ("check", 7, 6, 1)]
    env = run["environment"]
    assert env["orca"] == importlib.metadata.version("orca") and env["host"] and env["python"]
    text = orca_cli("runs", "demo", store=demo_store).stdout
    assert f"orca {env['orca']} py {env['python']} on {env['host']}" in text
    if env.get("git_commit"):
        assert f"(git {env['git_commit'][:7]}" in text
    one_line_error(orca_cli("runs", "nope", store=demo_store, check=None), "unknown pipeline 'nope'")

    # A runs table with the columns it may gain (environment, heartbeat_at): a run silent for
    # an hour reads as lost, one with a recent heartbeat as running.
    now = datetime.datetime.now(datetime.UTC)
    hour_ago = now - datetime.timedelta(hours=1)
    events = pa.Table.from_pylist([
        {"run_id": "r-old", "pipeline": "p", "seq": 0, "event": "started", "status": "running", "node": None,
         "started_at": hour_ago, "at": hour_ago, "heartbeat_at": hour_ago, "environment": '{"python": "3.12"}'},
        {"run_id": "r-new", "pipeline": "p", "seq": 0, "event": "started", "status": "running", "node": None,
         "started_at": hour_ago, "at": hour_ago, "heartbeat_at": now, "environment": None},
    ])
    store = orca.DeltaStore(tmp_path / "store")
    store.append("runs", events)
    store.flush()
    listed = {r["run_id"]: r for r in as_json("runs", store=tmp_path / "store")}
    assert listed["r-old"]["status"] == "lost" and listed["r-new"]["status"] == "running"
    assert listed["r-old"]["environment"] == {"python": "3.12"}
    assert as_json("runs", "--lost-after", "120", store=tmp_path / "store")[0]["status"] == "running"


def test_failures(store_copy: pathlib.Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (failure,) = as_json("failures", "demo", "--open", store=store_copy)
    assert failure["node"] == "check" and failure["error_type"] == "ValueError"
    assert json.loads(failure["tag"]) == {"k": 2, "group": "a"} and "traceback" not in failure
    text = orca_cli("failures", "--traceback", store=store_copy).stdout
    assert "ValueError: y must not be 3" in text and "Traceback (most recent call last)" in text
    one_line_error(orca_cli("failures", "nope", store=store_copy, check=None), "unknown pipeline 'nope'")

    # The same code succeeds on a rerun: the entry gets its provenance row, the failure closes.
    monkeypatch.setenv("CLI_DEMO_FIXED", "1")
    assert cli_demo.run(str(store_copy)).status == "succeeded"
    assert as_json("failures", "demo", "--open", store=store_copy) == []
    assert len(as_json("failures", "demo", store=store_copy)) == 1  # history stays


def test_invalidate(store_copy: pathlib.Path) -> None:
    dry = as_json("invalidate", "demo", "inc", "--where", "k >= 4 AND \"group\" = 'b'", "--dry-run",
                  store=store_copy)
    assert dry["entries"] == 3 and list(dry["results"].values()) == [3]
    store = orca.DeltaStore(store_copy)
    (results,) = store.tables("results/inc/")
    assert live_keys(store, "pipelines/demo/inc") == 7  # a dry run changes nothing

    text = orca_cli("invalidate", "demo", "inc", "--where", "k >= 4", store=store_copy).stdout
    assert "invalidated 3 entries of pipelines/demo/inc" in text
    # k=6's result is k=0's too: invalidated for both (as pipeline.invalidate does)
    assert live_keys(store, "pipelines/demo/inc") == 4 and live_keys(store, results) == 3
    assert store.scan("pipelines/demo/inc").filter(pl.col("k") >= 4).collect().height == 0

    one_line_error(orca_cli("invalidate", "demo", "inc", "--where", "x = 1", store=store_copy, check=None),
                   "bad --where expression 'x = 1': 'x' is not a tag column of pipelines/demo/inc (tags: k, group)")
    one_line_error(orca_cli("invalidate", "demo", "inc", "--where", "\"group\" > 1", store=store_copy, check=None),
                   "bad --where expression", "cannot compare string with numeric type")
    assert orca_cli("invalidate", "demo", "nope", store=store_copy, check=2).stderr.endswith(
        "Missing option '--where'.\n")


@pytest.mark.parametrize("text", ["k >", "__import__('os').system('true')", "k; DROP TABLE t", "x = 1",
                                  "k IN (SELECT 1)", "group = 'a'"])
def test_where_is_parsed_as_sql_over_tags_only(text: str) -> None:
    with pytest.raises(CliError, match="bad --where expression"):
        parse_where(text, ["k", "group"], "pipelines/demo/inc")


def test_where_selects_rows() -> None:
    frame = pl.DataFrame({"k": [1, 2, 3], "group": ["a", "b", "b"]})
    where = parse_where("k >= 2 AND \"group\" = 'b' OR k IS NULL", ["k", "group"], "t")
    assert frame.filter(where)["k"].to_list() == [2, 3]


def test_maintain(store_copy: pathlib.Path) -> None:
    triple = next((store_copy / "results" / "triple").iterdir())
    dry = as_json("maintain", "--dry-run", "--retention-hours", "0", store=store_copy)
    kept = [a for a in dry["actions"] if a["action"] == "keep"]
    assert [a["table"] for a in kept] == [f"results/triple/{triple.name}"]
    assert any(a["action"] == "compact" and a["table"] == "runs" for a in dry["actions"])
    assert not any(a["done"] for a in dry["actions"]) and triple.exists()
    # Written just now: within the default retention (7 days) nothing is collected even with the flag.
    default = as_json("maintain", "--gc-unreferenced", store=store_copy)
    assert [a["detail"] for a in default["actions"] if a["action"] == "keep"] == [
        "unreferenced, written within the retention"]

    text = orca_cli("maintain", "--retention-hours", "0", "--gc-unreferenced", store=store_copy).stdout
    assert f"results/triple/{triple.name}" in text and "freed" in text
    assert not (store_copy / "results" / "triple").exists()
    assert len(list((store_copy / "runs").glob("*.parquet"))) == 1  # compacted, old files vacuumed
    shown = as_json("show", "demo", "check", store=store_copy)  # what pipelines use is intact
    assert len(shown["current_output"]) == 6
    assert cli_demo.run(str(store_copy)).counts["inc"].computed == 0


def test_rm(store_copy: pathlib.Path) -> None:
    one_line_error(orca_cli("rm", "demo", store=store_copy, check=None), "refusing", "--yes")
    assert (store_copy / "pipelines" / "demo" / "inc").exists()
    assert "removed 2 tables of pipeline demo" in orca_cli("rm", "demo", "--yes", store=store_copy).stdout
    assert not (store_copy / "pipelines").exists()
    assert as_json("ls", store=store_copy)["pipelines"][0]["nodes"] == []  # its runs stay as history
    one_line_error(orca_cli("rm", "demo", "--yes", store=store_copy, check=None), "no provenance tables")


def test_missing_and_empty_store(tmp_path: pathlib.Path) -> None:
    missing = tmp_path / "missing"
    one_line_error(orca_cli("show", "demo", store=missing, check=None), f"no orca store at {missing}")
    empty = tmp_path / "empty"
    empty.mkdir()
    assert orca_cli("ls", store=empty).stdout == f"no tables in {empty}\n"
    assert as_json("failures", "--open", store=empty) == []
    one_line_error(orca_cli("show", "demo", store=empty, check=None), "unknown pipeline 'demo'", "(no pipelines)")
    assert "Usage:" in orca_cli("--bogus", check=2).stderr


def test_history(demo_store: pathlib.Path, script_store: pathlib.Path, tmp_path: pathlib.Path) -> None:
    (made,) = as_json("history", "demo", "check", store=demo_store)
    (run,) = as_json("runs", "demo", store=demo_store)
    assert (made["version"], made["run_id"], made["inserted"], made["deleted"]) == (1, run["run_id"], 6, 0)
    assert "assets/demo/inc: 1 materialisation\n" in orca_cli("history", "demo", "inc", store=demo_store).stdout

    # A second run over more rows makes a second version, which inserts just the new rows.
    store = pathlib.Path(shutil.copytree(script_store, tmp_path / "store"))
    done = subprocess.run([sys.executable, SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "CLI_SCRIPT_STORE": str(store), "CLI_SCRIPT_ROWS": "9"})
    assert done.returncode == 0, done.stderr
    assert [(h["version"], h["inserted"]) for h in as_json("history", "script", "square", store=store)] == [
        (1, 6), (2, 3)]

    one_line_error(orca_cli("history", "nope", "inc", store=demo_store, check=None), "unknown pipeline 'nope'")
    one_line_error(orca_cli("history", "demo", "nope", store=demo_store, check=None),
                   "no asset table for node 'nope'", "nodes with assets: inc, check")
    assert "Missing argument 'NODE'" in orca_cli("history", "demo", store=demo_store, check=2).stderr


def test_plan(script_store: pathlib.Path, tmp_path: pathlib.Path) -> None:
    before = snapshot(script_store)
    env = {"CLI_SCRIPT_STORE": str(script_store)}
    text = orca_cli("plan", SCRIPT, env=env).stdout  # the one pipeline the script defines
    assert text.startswith(f"pipeline script (store {script_store}): up to date")
    more = orca_cli("--json", "plan", f"{SCRIPT}:pipeline", env={**env, "CLI_SCRIPT_ROWS": "8"}).stdout
    planned = {n["node"]: n for n in json.loads(more)["nodes"]}
    assert (planned["square"]["cached"], planned["square"]["to_compute"], planned["square"]["reasons"]) == (
        6, 2, {"new input": 2})
    assert planned["halve"]["to_compute"] == 0 and planned["halve"]["cached"] == 5
    text = orca_cli("plan", SCRIPT, env={**env, "CLI_SCRIPT_ROWS": "8"}).stdout
    assert "2 entries to compute" in text and "square      8       6           2        0  new input: 2" in text
    assert snapshot(script_store) == before  # computed nothing, wrote nothing; the __main__ block never ran

    fresh = tmp_path / "fresh"
    assert "6 entries to compute" in orca_cli("plan", SCRIPT, env={"CLI_SCRIPT_STORE": str(fresh)}).stdout
    assert not fresh.exists()


def test_plan_and_graph_script_errors(tmp_path: pathlib.Path, script_store: pathlib.Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CLI_SCRIPT_STORE", str(script_store))
    none = tmp_path / "none.py"
    none.write_text("import orca\n\ndef make():\n    return orca.Pipeline('p')\n")
    two = tmp_path / "two.py"
    two.write_text("import orca\na = orca.Pipeline('a')\nb = orca.Pipeline('b')\nx = 1\n")
    broken = tmp_path / "broken.py"
    broken.write_text("raise RuntimeError('no data here')\n")
    for command in ("plan", "graph"):  # one loader; as the user sees it
        one_line_error(orca_cli(command, str(none), check=None), "defines no orca.Pipeline")
    assert "Missing argument" in orca_cli("plan", check=2).stderr
    for target, message in [(tmp_path / "missing.py", "no script"),
                            (two, r"several pipelines \(a, b\): give SCRIPT:NAME"),
                            (f"{two}:x", "'x' in .* is a int, not an orca.Pipeline"),
                            (f"{two}:c", "defines no 'c'; pipelines: a, b"),
                            (broken, "raised RuntimeError: no data here"),
                            (f"{SCRIPT}:numbers", "is a DictSource")]:
        with pytest.raises(CliError, match=message):
            load_pipeline(str(target))


def test_graph(script_store: pathlib.Path, tmp_path: pathlib.Path) -> None:
    before = snapshot(script_store)
    env = {"CLI_SCRIPT_STORE": str(script_store)}
    mermaid = orca_cli("graph", SCRIPT, env=env).stdout.splitlines()
    assert mermaid[:4] == ["flowchart TD", '    n0[("numbers")]', '    n1["square<br/>cached 0 · computed 6 · failed 0"]',
                           '    n2{{"filter"}}']
    assert mermaid[-3:] == ["    n0 --> n1", "    n1 --> n2", "    n2 --> n3"]
    dot = orca_cli("graph", f"{SCRIPT}:pipeline", "--format", "dot", env=env).stdout
    assert all(edge in dot for edge in ('"source:numbers" -> "square";', '"square" -> "filter";',
                                        '"filter" -> "halve";'))
    out = tmp_path / "pipeline.svg"
    done = orca_cli("graph", SCRIPT, "--format", "svg", "-o", str(out), env=env)
    assert done.stdout == "" and f"wrote svg of pipeline script to {out}" in done.stderr
    svg = ET.fromstring(out.read_text())
    titles = [t.text for t in svg.iter("{http://www.w3.org/2000/svg}title")]
    assert titles == ["pipeline script", "source numbers", "function square", "operator filter", "function halve"]
    assert snapshot(script_store) == before
    assert "Invalid value for '--format'" in orca_cli("graph", SCRIPT, "--format", "png", env=env, check=2).stderr


def test_lineage(script_store: pathlib.Path) -> None:
    env = {"CLI_SCRIPT_STORE": str(script_store)}
    steps = json.loads(orca_cli("--json", "lineage", SCRIPT, "halve", "--where", "k = 3", env=env).stdout)["steps"]
    assert [s["node"] for s in steps if s["kind"] == "node"] == ["halve", "square"]
    source = [s for s in steps if s["kind"] == "source"]
    assert [s["source_id"] for s in source] == ["numbers"] and json.loads(source[0]["source_tags"]) == {"k": 3}
    assert "halve" in orca_cli("lineage", SCRIPT, "halve", env=env).stdout
    one_line_error(orca_cli("lineage", SCRIPT, "nope", env=env, check=None), "has no function node 'nope'")
    one_line_error(orca_cli("lineage", SCRIPT, "halve", "--where", "k ===", env=env, check=None),
                   "is not a SQL condition")
