"""Runs: the events a run writes to the ``runs`` table, its handle, and what they say.

A run appends events (``started``, ``environment`` (orca, Python and library versions, host,
user, git commit), ``node_started``,
``node_finished``, ``node_materialised`` -- with the asset version the node produced --,
``heartbeat`` every
``HEARTBEAT`` seconds while it lives, ``finished``; see ``docs/pipelines.md``). Its status is
the ``finished`` event's status once there is one. Until then (whatever its nodes' events say)
it is ``running`` -- unless nothing was heard from it for ``lost_after`` (default 5 minutes):
the process died without writing ``finished`` (killed, machine lost), and the run reads as
``lost``. "Heard from" is the newest ``at`` of its events (or of a ``heartbeat_at`` column).
"""

from __future__ import annotations

import datetime
import getpass
import json
import os
import platform
import subprocess
import sys
import threading
from importlib import metadata
from typing import Any

import polars as pl
import pyarrow as pa
import pydantic

from orca.errors import OrcaError
from orca.names import FAILURES, RUN_ID, RUNS, RUNS_SCHEMA
from orca.stores import DeltaStore, Store

__all__ = ["LOST_AFTER", "HEARTBEAT", "run_status", "RunHandle", "RunLog", "environment"]

HEARTBEAT = 60.0  # seconds between heartbeat events of a live run

LOST_AFTER = datetime.timedelta(minutes=5)
_TIME_COLUMNS = ("at", "heartbeat_at")


def run_status(events: pl.DataFrame, now: datetime.datetime, *,
               lost_after: datetime.timedelta = LOST_AFTER) -> str:
    """The status of one run from its events: ``succeeded``, ``failed``, ``interrupted``,
    ``running``, ``lost`` -- or ``unknown`` if there are no events.

    Parameters
    ----------
    events
        Rows of the ``runs`` table for one run id, in any order, with at least ``seq``,
        ``event``, ``status`` and ``at``; a ``heartbeat_at`` column counts as a sign of life.
    now
        The time to judge against (a naive datetime is taken as UTC).
    lost_after
        How long a running run may stay silent before it reads as ``lost``.

    Examples
    --------
    >>> import datetime, polars as pl
    >>> t0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    >>> events = pl.DataFrame({"seq": [0], "event": ["started"], "status": ["running"], "at": [t0]})
    >>> run_status(events, t0 + datetime.timedelta(minutes=1))
    'running'
    >>> run_status(events, t0 + datetime.timedelta(minutes=6))
    'lost'
    >>> done = pl.DataFrame({"seq": [1], "event": ["finished"], "status": ["succeeded"], "at": [t0]})
    >>> run_status(pl.concat([events, done]), t0 + datetime.timedelta(days=1))
    'succeeded'
    """
    if events.height == 0:
        return "unknown"
    events = events.sort("seq")
    finished = events.filter(pl.col("event") == "finished")
    if finished.height:
        return finished["status"][-1]
    # Without ``finished`` the run is not over, whatever its last node's status says.
    times = [events[c].max() for c in _TIME_COLUMNS if c in events.columns]
    heard = max((t for t in times if t is not None), default=None)
    if heard is None:
        return "running"
    return "lost" if _utc(now) - _utc(heard) > lost_after else "running"


def _utc(t: datetime.datetime) -> datetime.datetime:
    return t.replace(tzinfo=datetime.UTC) if t.tzinfo is None else t


def environment() -> dict[str, Any]:
    """Where this process runs: orca, Python and library versions, host, user, and -- when the
    main script lives in a git work tree -- its commit and whether it has uncommitted changes."""
    def version(package: str) -> str | None:
        try:
            return metadata.version(package)
        except metadata.PackageNotFoundError:
            return None

    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = None
    found: dict[str, Any] = {
        "orca": version("orca"), "python": platform.python_version(),
        **{p: version(p) for p in ("pyarrow", "polars", "deltalake")},
        "host": platform.node(), "user": user, "pid": os.getpid(),
    }
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    folder = os.path.dirname(os.path.abspath(script)) if script else os.getcwd()
    found.update(_git(folder))
    return found


def _git(folder: str) -> dict[str, Any]:
    """The commit checked out in ``folder``'s work tree and whether it is dirty ({} if none)."""
    def git(*args: str) -> str | None:
        try:
            done = subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True, timeout=5)
        except (OSError, subprocess.SubprocessError):
            return None
        return done.stdout.strip() if done.returncode == 0 else None

    commit = git("rev-parse", "HEAD")
    if commit is None:
        return {}
    return {"git_commit": commit, "git_dirty": bool(git("status", "--porcelain", "--untracked-files=no"))}


class RunLog:
    """Appends one run's events to the ``runs`` table and commits them at once (pollers read
    them); while the run lives, a daemon thread adds a ``heartbeat`` event every ``heartbeat``
    seconds so a run whose process died reads as ``lost``."""

    def __init__(self, store: Store, run_id: str, pipeline: str, *, heartbeat: float = HEARTBEAT) -> None:
        self.store, self.run_id, self.pipeline, self.seq = store, run_id, pipeline, 0
        self.started_at = datetime.datetime.now(datetime.UTC)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._heartbeat = heartbeat
        self._beating: threading.Thread | None = None

    def start(self) -> None:
        """Write the ``started`` event and start the heartbeat thread, which first writes the
        ``environment`` event (asking git about the script's work tree takes a while: it is not
        worth holding up the run for)."""
        self.event("started", "running")
        self._beating = threading.Thread(target=self._beat, name="orca-heartbeat", daemon=True)
        self._beating.start()

    def _beat(self) -> None:
        try:
            self.event("environment", "running", environment=json.dumps(environment(), sort_keys=True),
                       commit=False)  # (committed with the run's next event)
        except Exception:  # noqa: BLE001 - a run without its environment recorded still runs
            pass
        while not self._stop.wait(self._heartbeat):
            try:
                self.event("heartbeat", "running", wait=False)
            except Exception:  # noqa: BLE001 - a missed heartbeat must not break the run; the next one retries
                pass

    def finish(self, status: str) -> None:
        """Stop the heartbeat and write the ``finished`` event (waiting for its commit)."""
        self._stop.set()
        if self._beating is not None:
            self._beating.join()
        self.event("finished", status)

    def event(self, event: str, status: str, *, node: str | None = None, counts: Any = None,
              total: int | None = None, asset_version: int | None = None, environment: str | None = None,
              function_hash: str | None = None, identity: str | None = None,
              commit: bool = True, wait: bool | None = None) -> None:
        row = {
            "run_id": self.run_id, "pipeline": self.pipeline, "event": event, "status": status,
            "node": node, "total": total,
            "cached": counts.cached if counts else None, "computed": counts.computed if counts else None,
            "failed": counts.failed if counts else None,
            "started_at": self.started_at, "at": datetime.datetime.now(datetime.UTC),
            "asset_version": asset_version, "environment": environment,
            "function_hash": function_hash, "identity": identity,
        }
        with self._lock:  # (the heartbeat thread writes events too)
            row["seq"] = self.seq
            self.seq += 1
            self.store.append(RUNS, pa.Table.from_pylist([row], schema=RUNS_SCHEMA), evolve=True)
        if commit:  # pollers see it within moments; only the run's last event is waited for
            self.store.flush(wait=event == "finished" if wait is None else wait)


class RunHandle(pydantic.BaseModel):
    """Where to find a run: serialise it with ``to_json()``, poll it from any process.

    The JSON carries the store's location (a path or an object-storage URL), never its
    credentials: a poller gives them again, ``RunHandle.from_json(text, storage_options=...)``,
    or lets deltalake read them from the standard environment variables (see ``docs/scaling.md``).

    >>> h = RunHandle(run_id="r1", pipeline="p", store="/tmp/s", nodes={"f": "pipelines/p/f"})
    >>> RunHandle.from_json(h.to_json()) == h
    True
    """

    run_id: str
    pipeline: str
    store: str
    nodes: dict[str, str]  # label -> provenance table
    _store: Any = pydantic.PrivateAttr(default=None)
    _storage_options: dict[str, str] | None = pydantic.PrivateAttr(default=None)

    def to_json(self) -> str:
        """The handle as JSON: run id, pipeline, store location, nodes -- no credentials."""
        return self.model_dump_json()

    @classmethod
    def from_json(cls, text: str, *, storage_options: dict[str, str] | None = None) -> RunHandle:
        """The handle ``to_json`` wrote; ``storage_options`` reach a store on object storage
        (without them, the environment's credentials are used)."""
        handle = cls.model_validate_json(text)
        handle._storage_options = storage_options
        return handle

    def _open(self) -> Store:
        if self._store is None:
            if self.store == "memory":
                raise OrcaError("a run on a MemoryStore can only be polled from the process that ran it")
            self._store = DeltaStore(self.store, storage_options=self._storage_options)
        return self._store

    def _events(self) -> pl.DataFrame:
        runs = self._open().scan(RUNS)
        if runs is None:
            return pl.DataFrame()
        return runs.filter(pl.col("run_id") == self.run_id).sort("seq").collect()

    def status(self, *, lost_after: datetime.timedelta = LOST_AFTER) -> str:
        """``running``, ``succeeded``, ``failed``, ``interrupted``, ``lost`` (no sign of life for
        ``lost_after``: the process died) -- or ``unknown`` if nothing is committed yet."""
        return run_status(self._events(), datetime.datetime.now(datetime.UTC), lost_after=lost_after)

    def environment(self) -> dict[str, Any]:
        """Where the run ran: orca, Python and library versions, host, user, the git commit of
        the script (see :func:`environment`); empty if not recorded."""
        events = self._events()
        if events.height == 0 or "environment" not in events.columns:
            return {}
        found = events.filter(pl.col("environment").is_not_null())["environment"]
        return json.loads(found[0]) if found.len() else {}

    def progress(self) -> dict[str, dict[str, Any]]:
        """Per node: ``total`` input entries, ``completed``, ``failed``, ``fraction`` (as committed so far)."""
        store = self._open()
        events = self._events()
        failures = store.scan(FAILURES)
        report = {}
        for label, table in self.nodes.items():
            started = events.filter((pl.col("event") == "node_started") & (pl.col("node") == label)) \
                if events.height else events
            total = int(started["total"][-1]) if started.height else None
            done_before = int(started["cached"][-1]) if started.height else 0
            prov = store.scan(table)
            done_now = 0 if prov is None else prov.filter(pl.col(RUN_ID) == self.run_id).select(pl.len()).collect().item()
            failed = 0 if failures is None else failures.filter(
                (pl.col("run_id") == self.run_id) & (pl.col("node") == label)).select(pl.len()).collect().item()
            completed = done_before + done_now
            finished = events.filter((pl.col("event") == "node_finished") & (pl.col("node") == label)) \
                if events.height else events
            if finished.height:  # the node's own final counts (a run in slices logs none before)
                completed = int(finished["cached"][-1]) + int(finished["computed"][-1])
            report[label] = {"total": total, "completed": completed, "failed": failed,
                             "fraction": (completed / total) if total else (1.0 if total == 0 else 0.0),
                             **self._claims(store, table)}
        return report

    @staticmethod
    def _claims(store: Store, provenance: str) -> dict[str, Any]:
        """For a node run with ``claim=True``: its chunks (done / working / all claimed so far) and
        the workers holding or having held them (by run id); empty otherwise."""
        claims = store.scan(provenance.replace("pipelines/", "claims/", 1))
        if claims is None:
            return {}
        rows = claims.select("of", "state", "owner").collect()
        if rows.height == 0:
            return {}
        latest = rows.filter(pl.col("of") == rows["of"].max())  # (the split of the latest run)
        return {"chunks": {"of": int(latest["of"][0]), "done": int((latest["state"] == "done").sum()),
                           "working": int((latest["state"] == "working").sum())},
                "workers": sorted(set(latest["owner"].to_list()))}


