"""A node's status: per input entry, whether it is done and what its live result holds.

Read by :func:`orca.engine.read_status` before a run (and by a plan), and refreshed after it.
A status may be *settled*: known, without reading its rows, to be every entry done and
unchanged since the node's asset was made (:class:`Settled`). Its rows are then read only when
asked for -- a rerun with nothing new reads the last node's rows for its output, not every
node's (see ``docs/performance.md``).
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any

import polars as pl

from orca.names import DONE, HIT


@dataclasses.dataclass(frozen=True)
class Settled:
    """What is known of a status whose rows are not read yet: every one of its ``rows`` input
    entries is done, and they are the entries its node's asset was made from. ``tags``: the
    input's tags and system tags, in input order (a downstream node's input, when every entry
    is done, has them in the same order). ``done``: the digest of the done entries' keys, as
    the asset's commit records it. ``root``: the digest of the input of the chain's first node
    (:func:`orca.engine.inputs_digest`), which with the chain's table versions fixes this
    node's input (None: not a chain of nodes from a source)."""

    rows: int
    tags: pl.DataFrame
    done: str
    root: str | None


class Status:
    """A node's status, read without running: per input entry, whether it is done, and whether
    its packet has a live result.

    ``entries``: the input rows (tags, system tags, the packet columns the function reads) with
    ``__hash_key`` and, for a node, ``__entry_key``. ``found``: per entry, in input order, tags,
    system tags, keys, the outputs of its live result, ``__hit`` (null: no live result) and
    ``__done``. ``versions``: the versions of the node's tables it reflects (and its upstream
    nodes'). ``upstream``: the status of the node whose output was this node's input, if it
    was one. ``settled``: see :class:`Settled`; a frame not given is then made by its
    ``later`` function when first asked for, once.
    """

    def __init__(self, entries: pl.DataFrame | None, found: pl.DataFrame | None, versions: tuple[int | None, ...],
                 *, upstream: Status | None = None, settled: Settled | None = None,
                 later_entries: Callable[[], pl.DataFrame] | None = None,
                 later_found: Callable[[], pl.DataFrame] | None = None) -> None:
        if (entries is None and later_entries is None) or (found is None and later_found is None):
            raise ValueError("a status without its frames needs functions to make them")
        self.versions, self.upstream, self.settled = versions, upstream, settled
        self._frames = {"entries": entries, "found": found}
        self._later = {"entries": later_entries, "found": later_found}
        self._lock = threading.RLock()  # (a frame may be made from the other)
        self._memo: dict[str, Any] = {}  # facts of the entries, made once (see remember)

    def _frame(self, name: str) -> pl.DataFrame:
        frame = self._frames[name]
        if frame is None:
            with self._lock:  # made once, whichever thread asks first
                frame = self._frames[name]
                if frame is None:
                    frame = self._frames[name] = self._later[name]()
                    self._later[name] = None
        return frame

    @property
    def entries(self) -> pl.DataFrame:
        return self._frame("entries")

    @property
    def found(self) -> pl.DataFrame:
        return self._frame("found")

    def replace(self, *, found: pl.DataFrame | None = None, versions: tuple[int | None, ...] | None = None) -> Status:
        """This status with other ``found`` rows (then no longer settled) and/or ``versions``."""
        versions = self.versions if versions is None else versions
        if found is not None:
            status = Status(self.entries, found, versions, upstream=self.upstream)
        else:
            entries, found = self._frames["entries"], self._frames["found"]
            status = Status(entries, found, versions, upstream=self.upstream, settled=self.settled,
                            later_entries=None if entries is not None else lambda: self.entries,
                            later_found=None if found is not None else lambda: self.found)
        status._memo = self._memo  # (the same entries)
        return status

    def remember(self, key: str, make: Callable[[], Any]) -> Any:
        """A fact of the entries (e.g. their digest), made by ``make`` once per status."""
        if key not in self._memo:
            self._memo[key] = make()
        return self._memo[key]

    @property
    def done(self) -> int:
        """Entries served from the store (phase 1)."""
        return self.settled.rows if self.settled is not None else int(self.found[DONE].sum())

    @property
    def hits(self) -> int:
        """Novel entries whose packet already has a live result (only provenance is added)."""
        return 0 if self.settled is not None else int((~self.found[DONE] & self.found[HIT].is_not_null()).sum())

    @property
    def to_compute(self) -> int:
        """Novel entries whose packet has no live result: the next run computes them."""
        return 0 if self.settled is not None else int(self.found[HIT].is_null().sum())

    def __repr__(self) -> str:
        rows = "rows unread" if self._frames["found"] is None else f"{self._frames['found'].height} entries"
        return f"Status({rows}, versions={self.versions})"
