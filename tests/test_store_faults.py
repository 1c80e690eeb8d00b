"""A store never serves wrong data silently: unsafe paths are refused, damage is reported.

Every damaged-store case damages a real Delta table on disk, checks that the first read raises a
StoreError naming the table and what is wrong (no Rust backtrace, no colour codes), that the
store's files were left as they were, and that once the damage is undone every row is back.
"""

from __future__ import annotations

import errno
import glob
import hashlib
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest
from deltalake import DeltaTable

import orca.stores.delta as delta_module
from orca.errors import StoreError
from orca.stores import DeltaStore

KEY = ["__packet_hash"]
TABLE = "results/f/h"


def rows(keys, value=0, run="run-1") -> pa.Table:
    return pa.table({"__packet_hash": keys, "value": [value] * len(keys), "__run_id": [run] * len(keys)})


def filled(path, commits: int = 3) -> DeltaStore:
    """A store with ``commits`` commits of two keys each to TABLE, and a failures table."""
    store = DeltaStore(path)
    for i in range(commits):
        store.append(TABLE, rows([f"k{i}a", f"k{i}b"], value=i), key=KEY)
        store.flush()
    store.append("failures", pa.table({"node": ["n"], "message": ["boom"]}))
    store.flush()
    return store


def snapshot(root) -> dict[str, str]:
    """Every file under ``root`` and a digest of its bytes."""
    found = {}
    for path in sorted(Path(root).rglob("*")):
        if path.is_file():
            found[str(path.relative_to(root))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def assert_clean(message: str, path: str) -> None:
    assert path in message
    assert "\x1b" not in message
    assert "backtrace" not in message.lower()
    assert not re.search(r"(^|\s)\d+: (<unknown>|\w+::)", message)


def all_keys(path) -> list[str]:
    return sorted(DeltaStore(path).scan(TABLE).collect()["__packet_hash"])


EXPECTED = sorted(f"k{i}{s}" for i in range(3) for s in "ab")


# ---- paths (item 4) -------------------------------------------------------------------------
def test_a_relative_path_is_fixed_at_construction(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = DeltaStore(".orca")
    assert store.location == str(tmp_path / ".orca")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    store.append(TABLE, rows(["a"]), key=KEY)
    store.flush()
    assert (tmp_path / ".orca" / "results" / "f" / "h" / "_delta_log").is_dir()
    assert os.listdir(elsewhere) == []
    assert DeltaStore(tmp_path / ".orca").keys(TABLE).to_list() == ["a"]


def test_an_empty_path_is_refused_at_the_first_io(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    store = DeltaStore("")  # construction does no I/O, so it cannot refuse yet
    store.append(TABLE, rows(["a"]), key=KEY)
    with pytest.raises(StoreError, match="store path is empty"):
        store.flush()
    with pytest.raises(StoreError, match="store path is empty"):
        store.scan(TABLE)
    assert os.listdir(tmp_path) == []


def test_a_folder_of_other_files_is_refused(tmp_path):
    data = tmp_path / "my_data"
    data.mkdir()
    (data / "measurements.csv").write_text("a,b\n1,2\n")
    before = snapshot(data)
    store = DeltaStore(data)
    store.append(TABLE, rows(["a"]), key=KEY)
    with pytest.raises(StoreError, match="not an orca store") as info:
        store.flush()
    assert str(data) in str(info.value)
    with pytest.raises(StoreError, match="not an orca store"):
        DeltaStore(data).lookup(TABLE, pl.Series(["a"]))
    assert snapshot(data) == before


def test_a_store_is_marked_and_an_empty_folder_is_fine(tmp_path):
    (tmp_path / "s").mkdir()
    store = DeltaStore(tmp_path / "s")
    store.append(TABLE, rows(["a"]), key=KEY)
    store.flush()
    assert (tmp_path / "s" / delta_module.MARKER).is_file()
    assert DeltaStore(tmp_path / "s").keys(TABLE).to_list() == ["a"]


def test_a_store_from_before_the_marker_is_recognised_by_its_tables(tmp_path):
    store = filled(tmp_path / "s")
    os.remove(tmp_path / "s" / delta_module.MARKER)  # as the previous orca version left it
    old = DeltaStore(tmp_path / "s")
    assert sorted(old.keys(TABLE)) == EXPECTED
    old.append(TABLE, rows(["new"]), key=KEY)
    old.flush()
    assert (tmp_path / "s" / delta_module.MARKER).is_file()
    assert len(store.keys(TABLE)) == len(EXPECTED) + 1


# ---- an empty commit file (item 5) ------------------------------------------------------------
def test_an_empty_commit_file_is_reported_not_read_around(tmp_path):
    store = filled(tmp_path)
    log = Path(store.uri(TABLE)) / "_delta_log"
    commit = log / f"{2:020d}.json"
    backup = commit.read_bytes()
    commit.write_bytes(b"")
    before = snapshot(tmp_path)
    fresh = DeltaStore(tmp_path)
    fresh.append(TABLE, rows(["x"]), key=KEY)
    for read in (lambda s: s.scan(TABLE), lambda s: s.keys(TABLE), lambda s: s.version(TABLE),
                 lambda s: s.flush()):
        with pytest.raises(StoreError, match="is empty") as info:
            read(fresh)
        assert_clean(str(info.value), str(commit))
    assert snapshot(tmp_path) == before  # nothing written over the damage
    # a store object that had read the table before the damage finds it at its next read
    with pytest.raises(StoreError, match="is empty"):
        DeltaStore(tmp_path).lookup(TABLE, pl.Series(["k0a"]))
    commit.write_bytes(backup)
    assert all_keys(tmp_path) == EXPECTED


# ---- damaged tables (item 7) ----------------------------------------------------------------------
def _truncate(path: Path, size: int = 20) -> None:
    with open(path, "r+b") as file:
        file.truncate(size)


def _garble(path: Path) -> None:
    """Same size, different bytes (passes the size check; the reader must fail cleanly)."""
    data = bytearray(path.read_bytes())
    data[4:-8] = bytes(len(data) - 12)
    path.write_bytes(bytes(data))


def _commit_file(table: Path, version: int) -> Path:
    return table / "_delta_log" / f"{version:020d}.json"


def _data_file(table: Path) -> Path:
    return Path(sorted(glob.glob(str(table / "*.parquet")))[0])


def _checkpoint(table: Path) -> Path:
    DeltaTable(str(table)).create_checkpoint()
    return Path(glob.glob(str(table / "_delta_log" / "*.checkpoint.parquet"))[0])


DAMAGE = {
    "truncated commit": (lambda t: _commit_file(t, 2), _truncate, "damaged"),
    "garbage commit": (lambda t: _commit_file(t, 1), lambda p: p.write_text("garbage\n"), "damaged"),
    "missing first commit": (lambda t: _commit_file(t, 0), os.remove, "version 0|damaged"),
    "deleted data file": (_data_file, os.remove, "is missing"),
    "truncated data file": (_data_file, _truncate, "truncated"),
    "garbled data file": (_data_file, _garble, "damaged"),
    "truncated checkpoint": (_checkpoint, _truncate, "damaged"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_damaged_table_is_a_store_error_at_the_first_read(tmp_path, case):
    store = filled(tmp_path)
    table = Path(store.uri(TABLE))
    pick, damage, expected = DAMAGE[case]
    victim = pick(table)
    backup = tmp_path.parent / f"{tmp_path.name}-backup"
    shutil.copy2(victim, backup)
    damage(victim)
    before = snapshot(tmp_path)

    def reads(s: DeltaStore):
        yield lambda: s.collect(TABLE, s.scan(TABLE))
        yield lambda: s.lookup(TABLE, pl.Series(["k0a"]))
        yield lambda: s.keys(TABLE)

    for read in reads(DeltaStore(tmp_path)):
        with pytest.raises(StoreError, match=expected) as info:
            read()  # a panic (BaseException) would escape pytest.raises
        assert_clean(str(info.value), str(table))
    # a raw scan is collected by the caller: the store's collect() names the table
    fresh = DeltaStore(tmp_path)
    with pytest.raises(StoreError, match=expected):
        fresh.collect(TABLE, fresh.scan(TABLE, include_invalidated=True))
    if case != "garbled data file":  # (an append reads no data file: only sizes are checked)
        writer = DeltaStore(tmp_path)
        writer.append(TABLE, rows(["new"]), key=KEY)
        with pytest.raises(StoreError) as info:
            writer.flush()
        assert str(table) in str(info.value)
    assert snapshot(tmp_path) == before  # the store is left as it was

    if not victim.exists():
        victim.touch()
    shutil.copy2(backup, victim)  # restored from the backup: every row is back
    assert all_keys(tmp_path) == EXPECTED


def test_a_panic_while_reading_is_caught_narrowly(tmp_path, monkeypatch):
    """pyo3's PanicException is a BaseException; it becomes a StoreError, nothing else does."""
    store = filled(tmp_path)
    panic = type("PanicException", (BaseException,), {})

    def explode(*args, **kwargs):
        raise panic("called `Option::unwrap()` on a `None` value\n\x1b[31mstack backtrace:\n   0: x::y\n")

    store.scan(TABLE)  # opened once, so the next read updates the handle
    monkeypatch.setattr(DeltaTable, "update_incremental", explode)
    with pytest.raises(StoreError, match="unwrap") as info:
        store.scan(TABLE)
    assert_clean(str(info.value), store.uri(TABLE))
    monkeypatch.setattr(DeltaTable, "update_incremental", lambda self: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        store.scan(TABLE)


def test_an_orca_table_with_another_schema(tmp_path):
    store = filled(tmp_path)
    # a reader that expects an output column the table does not have (other code wrote it)
    with pytest.raises(StoreError, match="lacks a column") as info:
        store.collect(TABLE, store.scan(TABLE, include_invalidated=True).select("__packet_hash", "y"))
    assert_clean(str(info.value), store.uri(TABLE))
    # an orca-configured keyed table without the system columns the dedup rule needs
    other = tmp_path / "results" / "g" / "h"
    DeltaTable.create(str(other), pa.schema([("__packet_hash", pa.string()), ("y", pa.int64())]),
                      configuration={"orca.format": "1", "orca.key": '["__packet_hash"]'},
                      raise_if_key_not_exists=False)
    with pytest.raises(StoreError, match="lacks the columns") as info:
        DeltaStore(tmp_path).scan("results/g/h")
    assert str(other) in str(info.value) and "__run_id" in str(info.value)
    assert all_keys(tmp_path) == EXPECTED


def test_a_damaged_failures_table_is_reported_before_any_work(tmp_path):
    filled(tmp_path)
    commit = _commit_file(tmp_path / "failures", 0)
    backup = commit.read_bytes()
    commit.write_text("garbage\n")
    store = DeltaStore(tmp_path)
    # the first thing a run does is read its results table: that is where it must stop
    with pytest.raises(StoreError, match="damaged") as info:
        store.lookup(TABLE, pl.Series(["k0a"]))
    assert_clean(str(info.value), str(tmp_path / "failures"))
    commit.write_bytes(backup)
    assert DeltaStore(tmp_path).scan("failures").collect()["message"].to_list() == ["boom"]


# ---- read-only stores (item 8) ----------------------------------------------------------------
def test_an_unwritable_location_fails_at_once(tmp_path, monkeypatch):
    """The OSError a read-only file system raises, injected where the store first writes."""
    def read_only(*args, **kwargs):
        raise OSError(errno.EROFS, "Read-only file system", str(tmp_path))

    monkeypatch.setattr(delta_module.os, "makedirs", read_only)
    store = DeltaStore(tmp_path / "new")
    store.append(TABLE, rows(["a"]), key=KEY)
    start = time.monotonic()
    with pytest.raises(StoreError, match="read-only") as info:
        store.flush()
    assert time.monotonic() - start < 2
    assert str(tmp_path / "new") in str(info.value)


def _can_mount_read_only(tmp_path) -> bool:
    probe = tmp_path / "probe"
    probe.mkdir()
    try:
        done = subprocess.run(["unshare", "-m", "sh", "-c", f"mount --bind -o ro {probe} {probe}"],
                              capture_output=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return done.returncode == 0


READ_ONLY_SCRIPT = textwrap.dedent("""
    import sys, time
    import polars as pl, pyarrow as pa
    from orca.errors import StoreError
    from orca.stores import DeltaStore
    path, table = sys.argv[1], sys.argv[2]
    store = DeltaStore(path)
    assert len(store.scan(table).collect()) == 6, "reads work"
    assert store.lookup(table, pl.Series(["k0a"])).height == 1
    assert len(store.keys(table)) == 6
    for target in (table, "results/brand/new"):
        store.append(target, pa.table({"__packet_hash": ["x"], "value": [1], "__run_id": ["r"]}),
                     key=["__packet_hash"])
        start = time.monotonic()
        try:
            store.flush()
        except StoreError as exc:
            assert time.monotonic() - start < 5, time.monotonic() - start
            assert path in str(exc), exc
            print("refused:", exc)
        else:
            raise AssertionError("wrote to a read-only store")
        store = DeltaStore(path)
""")


def test_a_read_only_store_serves_reads_and_refuses_writes_at_once(tmp_path):
    """A real read-only file system: the store bind-mounted read-only in a private mount
    namespace (tests run as root, for whom permission bits do not stop writes)."""
    if not _can_mount_read_only(tmp_path):
        pytest.skip("cannot bind-mount read-only here (needs `unshare -m` and mount rights); "
                    "test_an_unwritable_location_fails_at_once covers the error path")
    store = filled(tmp_path / "s")
    before = snapshot(tmp_path / "s")
    script = tmp_path / "read_only.py"
    script.write_text(READ_ONLY_SCRIPT)
    root = str(Path(__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    mount = f"mount --bind -o ro {store.location} {store.location}"
    done = subprocess.run(["unshare", "-m", "sh", "-c", f'{mount} && exec "$0" "$@"',
                           sys.executable, str(script), store.location, TABLE],
                          capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("refused:") == 2
    assert "read-only" in done.stdout
    assert snapshot(tmp_path / "s") == before
