"""Claimed work: independent processes share out a node's novel entries, with no scheduler.

``pipeline.run(claim=True)`` in any number of processes (a SLURM array, several machines on one
store) splits each node's entries into ``of`` chunks by a hash of their tags and system tags --
the same split in every process. A process takes a chunk by recording a *lease* in
``claims/<pipeline>/<node>``: one Delta merge, so of two processes claiming at once exactly one
wins (the other's commit conflicts and, retried, finds the chunk held). While it works the
holder renews the lease; when done it marks the chunk done. A chunk whose lease expired -- its
holder died -- is taken over by the next process that looks. A process goes on until every
chunk is done, helping with what is left, so one started late only helps, and one that dies
costs at most its chunk in flight, computed again after the lease expires.

Leases are the one place orca reads a clock to decide something: only *when* a dead worker's
chunk is taken over, never which result is kept (results stay first-committed-wins).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from orca.stores import Store

__all__ = ["take_chunks", "Lease"]


class Lease:
    """A held chunk: renewed on a daemon thread every third of the lease until :meth:`done`."""

    def __init__(self, store: Store, table: str, chunk: int, of: int, owner: str, seconds: float) -> None:
        self.store, self.table, self.chunk, self.of, self.owner, self.seconds = store, table, chunk, of, owner, seconds
        self.lost = False  # set when a renewal finds the chunk taken over (this worker was too slow)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew, name="orca-lease", daemon=True)
        self._thread.start()

    def _renew(self) -> None:
        while not self._stop.wait(self.seconds / 3):
            try:
                if not self.store.update_claim(self.table, self.chunk, self.of, self.owner, lease_seconds=self.seconds):
                    self.lost = True
                    return
            except Exception:  # noqa: BLE001 - a missed renewal is retried; the lease still runs
                continue

    def release(self) -> None:
        self._stop.set()
        self._thread.join()

    def done(self) -> None:
        """Stop renewing and mark the chunk done."""
        self.release()
        self.store.update_claim(self.table, self.chunk, self.of, self.owner, done=True)


def take_chunks(store: Store, table: str, chunks: list[int], of: int, owner: str, *,
                lease_seconds: float, poll_seconds: float | None = None) -> Iterator[Lease]:
    """Yield a :class:`Lease` for each of ``chunks`` this worker takes, until every one of them
    is done by someone. The caller works on the chunk, then calls ``lease.done()``.

    Chunks are tried from a worker-specific starting point (so workers rarely collide); chunks
    held by others are looked at again every ``poll_seconds`` (default a quarter of the lease)
    until they are done or their lease expires.
    """
    pending = list(chunks)
    random.Random(owner).shuffle(pending)
    poll = poll_seconds if poll_seconds is not None else max(0.05, min(lease_seconds / 4, 2.0))
    while pending:
        states = store.claims(table, of)
        done = {c for c, s in states.items() if s == "done"}
        progressed = False
        for chunk in list(pending):
            if chunk in done:
                pending.remove(chunk)
                progressed = True
                continue
            if store.claim(table, chunk, of, owner, lease_seconds):
                lease = Lease(store, table, chunk, of, owner, lease_seconds)
                try:
                    yield lease
                finally:
                    lease.release()
                pending.remove(chunk)
                progressed = True
        if pending and not progressed:
            time.sleep(poll)
