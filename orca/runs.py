"""What a run's events in the ``runs`` table say about it: :func:`run_status`.

A run appends events (``started``, ``node_started``, ``node_finished``, ``finished``; see
``docs/pipelines.md``). Its status is the ``finished`` event's status once there is one. Until
then (whatever its nodes' events say) it is ``running`` -- unless nothing was heard from it for ``lost_after`` (default 5
minutes): the process died without writing ``finished`` (killed, machine lost), and the run
reads as ``lost``. "Heard from" is the newest ``at`` of its events, or of a ``heartbeat_at``
column when the table has one (heartbeat events are planned; extra columns are ignored).

Until the engine writes heartbeats, a run whose current node computes for longer than
``lost_after`` without another event also reads as ``lost``; pass a larger ``lost_after``
for such pipelines.
"""

from __future__ import annotations

import datetime

import polars as pl

__all__ = ["LOST_AFTER", "run_status"]

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
