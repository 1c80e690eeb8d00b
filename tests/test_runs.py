"""orca.runs.run_status: a run's status from its events, including runs that died silently."""

from __future__ import annotations

import datetime

import polars as pl

from orca.runs import LOST_AFTER, run_status

T0 = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)


def events(*rows: tuple[int, str, str, float], **extra: list) -> pl.DataFrame:
    """Events from (seq, event, status, minutes after T0) tuples, plus extra columns."""
    frame = pl.DataFrame({
        "seq": [r[0] for r in rows], "event": [r[1] for r in rows], "status": [r[2] for r in rows],
        "at": [T0 + datetime.timedelta(minutes=r[3]) for r in rows],
    })
    return frame.with_columns(pl.Series(k, v) for k, v in extra.items())


def test_finished_run_reads_its_final_status_whatever_the_order_or_age() -> None:
    run = events((2, "finished", "failed", 3), (0, "started", "running", 0), (1, "node_started", "running", 1))
    assert run_status(run, T0 + datetime.timedelta(days=30)) == "failed"
    assert run_status(run.head(0), T0) == "unknown"


def test_silent_running_run_is_lost_after_the_threshold() -> None:
    run = events((0, "started", "running", 0), (1, "node_started", "running", 1))
    assert run_status(run, T0 + datetime.timedelta(minutes=1) + LOST_AFTER) == "running"
    assert run_status(run, T0 + datetime.timedelta(minutes=1, seconds=1) + LOST_AFTER) == "lost"
    assert run_status(run, T0 + datetime.timedelta(minutes=30), lost_after=datetime.timedelta(hours=1)) == "running"
    naive_now = (T0 + datetime.timedelta(minutes=2)).replace(tzinfo=None)  # taken as UTC
    assert run_status(run, naive_now) == "running"


def test_heartbeats_and_extra_columns() -> None:
    beat = [T0, T0 + datetime.timedelta(minutes=20)]
    run = events((0, "started", "running", 0), (1, "heartbeat", "running", 0),
                 heartbeat_at=beat, environment=['{"python": "3.12"}', None])
    assert run_status(run, T0 + datetime.timedelta(minutes=22)) == "running"
    assert run_status(run, T0 + datetime.timedelta(minutes=26)) == "lost"
    # A node that finished (even failed) does not end the run: only the ``finished`` event does.
    mid_run = events((0, "started", "running", 0), (1, "node_finished", "failed", 1))
    assert run_status(mid_run, T0 + datetime.timedelta(minutes=2)) == "running"
