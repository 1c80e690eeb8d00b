"""Assets: each function node's current output, materialised as a versioned Delta table.

``assets/<pipeline>/<node>`` holds exactly one row per current entry of the node: its tag
columns, output columns, ``__entry_id``, ``__record_id``, ``__function_hash`` and ``__run_id``
(the run that wrote the row). After a run it equals ``node.results()`` row for row. Each Delta
version of the table is a *materialisation*: time travel reads an earlier one, and the ``runs``
table records which version each run produced. See ``docs/assets.md``.

A run changes only what changed: it reads the asset's entry ids, deletes the rows whose entry is
no longer current (or that this run recorded again) and inserts the new ones, in one commit. A
run that changes nothing writes nothing (no new version). Concurrent writers: each commit is a
Delta merge on ``__entry_id``; a conflicting commit is retried on the new version, so the table
never holds two rows for an entry and always equals one writer's complete view.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from orca.errors import OrcaError
from orca.hashing import KeySet
from orca.names import ENTRY_ID, FUNCTION_HASH, RUN_ID, hex_ids
from orca.stores import Store
from orca.stores.base import comparable_keys, member
from orca.types import storable_table

__all__ = ["Materialisation", "Staging", "materialise", "read_asset", "asset_history"]


@dataclasses.dataclass(frozen=True)
class Materialisation:
    """What one run did to an asset table: its new version (None: nothing changed)."""

    table: str
    version: int | None


def materialise(store: Store, table: str, current: pa.Table, recorded: pl.Series, run_id: str,
                function_hash: str, reflects: str, compare: Sequence[str] = (),
                trust_since: int | None = None) -> Materialisation:
    """Make asset ``table`` hold exactly ``current`` (one row per entry: tags, outputs and
    ``__entry_id``, ``__record_id``), in one commit, touching only the rows that changed.

    ``recorded``: entry ids this run recorded; their rows are written again even if present
    (an invalidated entry recomputed keeps its id but may have a new value). ``reflects``: the
    versions of the node's tables ``current`` was read from, kept in the commit's metadata
    (see :func:`reflected`). ``compare``: columns whose values are compared with the table's, a
    row that differs being written again (the table may hold values its keys do not tell),
    unless the table is still at version ``trust_since`` (the caller knows what it held then).
    """
    rows = _with_run(current, run_id, function_hash)
    version = store.sync_rows(table, ENTRY_ID, rows, recorded,
                              metadata={"orca.run": run_id, "orca.versions": reflects}, compare=compare,
                              trust_since=trust_since)
    return Materialisation(table, version)


class Staging:
    """An asset written in slices (a run with ``memory_rows``, :mod:`orca.slices`) and committed
    once, so the run stays one materialisation.

    The asset's entry ids are read once. Each slice's rows that the asset lacks, or that the run
    recorded again, are written to a Parquet file in a temporary folder, and the asset's rows
    the slice holds are marked as seen; :meth:`commit` writes the staged rows and deletes the
    rows no slice held, in one merge planned against the version read. Held meanwhile: 16 bytes
    per asset row and per entry, and a flag per asset row -- not the rows.
    """

    def __init__(self, store: Store, table: str, run_id: str, function_hash: str) -> None:
        self.store, self.table, self.run_id, self.function_hash = store, table, run_id, function_hash
        self._version: int | None = None  # the asset's version the plan is made against (see _open)
        self._existing = pl.Series(ENTRY_ID, [], pl.UInt128)
        self._seen = pl.Series([], dtype=pl.Boolean)
        self._folder: str | None = None  # (made when the first slice has rows to stage)
        self._files: list[str] = []
        self._staged: list[pl.Series] = []
        self.entries = KeySet()  # the digest of every slice's entries (what the asset holds after commit)
        self._schema: pa.Schema | None = None  # the rows' (known from the first slice)
        # What the asset was made from at the version read (see reflected; None: unknown or not
        # orca's), and whether it held no row then: what the run keeps of it is exact only so.
        self.previous: str | None = None
        self.empty = False

    def _open(self) -> None:
        """Create the asset if it is absent (so a run that leaves no entry done still makes it),
        then note its version and read its entry ids: the commit's plan holds against them."""
        self.store.ensure(self.table, self._schema)
        self._version = self.store.version(self.table)
        look = reflected(self.store, self.table)
        self.previous = look[1] if look is not None and look[0] == self._version else None
        frame = self.store.scan(self.table)  # (a commit after the version read only fails the plan)
        ids = self.store.collect(self.table, frame.select(ENTRY_ID)).to_series()
        self.empty = ids.len() == 0
        self._existing = comparable_keys(ids)
        self._seen = pl.repeat(False, ids.len(), eager=True, dtype=pl.Boolean)

    def add(self, rows: pa.Table, entries: pl.Series, changed: pl.Series) -> None:
        """Stage one slice: ``rows`` (tags, outputs, entry and record ids, as
        :func:`orca.engine.asset_rows` makes them), ``entries`` their entry keys in order
        (``UInt128``), ``changed`` the keys recorded by this run."""
        self._schema = _with_run(rows.slice(0, 0), self.run_id, self.function_hash).schema
        if self._version is None:
            self._open()
        self.entries = self.entries.add(entries)
        held = np.zeros(entries.len(), bool)
        if self._existing.len():
            # One join for both sides (half the cost of two membership tests): which of the
            # slice's entries the asset holds, and which asset rows the slice holds.
            pairs = entries.to_frame("k").with_row_index("e").join(
                self._existing.to_frame("k").with_row_index("x"), on="k", how="inner")
            held[pairs["e"].to_numpy()] = True
            self._seen.scatter(pairs["x"], True)
        fresh = pl.Series(~held)
        if changed.len():
            fresh = fresh | member(entries, changed)
        if not fresh.any():
            return
        self._folder = self._folder or tempfile.mkdtemp(prefix="orca-asset-")
        path = os.path.join(self._folder, f"{len(self._files):06d}.parquet")
        pq.write_table(_with_run(rows.filter(fresh.to_arrow()), self.run_id, self.function_hash), path)
        self._files.append(path)
        self._staged.append(entries.filter(fresh))

    def commit(self, reflects: str) -> Materialisation:
        """Write what was staged and delete the rows no slice held, in one commit (none when
        nothing changed), and remove the files. If another writer moved the asset meanwhile,
        nothing is written (with a warning): the asset stays that writer's complete view, and
        the next run brings it up to date."""
        try:
            delete = self._existing.filter(~self._seen)
            if not self._staged and delete.len() == 0:
                return Materialisation(self.table, None)  # the asset holds exactly the slices' rows
            staged = pl.concat(self._staged) if self._staged else pl.Series(ENTRY_ID, [], pl.UInt128)
            version = self.store.sync_staged(self.table, ENTRY_ID, self._reader, staged, delete, since=self._version,
                                             metadata={"orca.run": self.run_id, "orca.versions": reflects})
            if version is None:
                warnings.warn(f"{self.store.uri(self.table)}: another writer changed the asset during this run; "
                              "it was not written (the next run writes it)", stacklevel=2)
            return Materialisation(self.table, version)
        finally:
            self.discard()

    def discard(self) -> None:
        """Remove the staged files (a run that failed writes no asset; the next run does)."""
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    def _reader(self) -> pa.RecordBatchReader:
        """The staged rows, read one batch at a time (a ``pyarrow.dataset`` scanner reads ahead
        of a slower consumer: the merge of 10M staged rows peaked +1.9 GB through one, +0.7 GB
        through this)."""
        def batches() -> Iterator[pa.RecordBatch]:
            for path in self._files:
                yield from pq.ParquetFile(path).iter_batches(batch_size=64_000)

        return pa.RecordBatchReader.from_batches(self._schema, batches())


def _with_run(rows: pa.Table, run_id: str, function_hash: str) -> pa.Table:
    """``rows`` as the asset holds them: storable types, plus the function hash and run id."""
    n = rows.num_rows
    return storable_table(rows).append_column(
        FUNCTION_HASH, pa.repeat(pa.scalar(function_hash, pa.string()), n)).append_column(
        RUN_ID, pa.repeat(pa.scalar(run_id, pa.string()), n))  # (``string``, as the table holds text)


def reflected(store: Store, table: str) -> tuple[int, str | None] | None:
    """Asset ``table``'s latest version and what it was made from (the ``reflects`` given to
    :func:`materialise`; None for another writer's commit), None if unknown: when it still
    holds, a run need not read the asset (a no-change run is O(1)). Looked at twice: deltalake
    1.6 can number a commit wrongly when another lands during the read."""
    latest = store.history(table, limit=1)
    if not latest or latest[0]["operation"] == "CREATE TABLE" or store.history(table, limit=1) != latest:
        return None
    return latest[0]["version"], latest[0].get("versions")


def read_asset(store: Store, table: str, *, version: int | None = None,
               as_of: datetime.datetime | None = None) -> pl.LazyFrame:
    """The asset as of its latest version, a given ``version``, or the version current at ``as_of``."""
    if version is not None and as_of is not None:
        raise OrcaError("give version= or as_of=, not both")
    frame = store.scan_version(table, version=version, as_of=as_of)
    if frame is None:
        raise OrcaError(f"no asset table {store.uri(table)} yet: run the pipeline first")
    return hex_ids(frame)


def asset_history(store: Store, table: str) -> pl.DataFrame:
    """One row per materialisation: version, time, run id, rows inserted, updated and deleted."""
    rows = [r for r in store.history(table) if r["operation"] != "CREATE TABLE"]  # (made empty, then merged)
    schema = {"version": pl.Int64, "at": pl.Datetime("us", "UTC"), "run_id": pl.String,
              "operation": pl.String, "inserted": pl.Int64, "updated": pl.Int64, "deleted": pl.Int64}
    return pl.DataFrame(rows, schema=schema, orient="row").sort("version") if rows else pl.DataFrame(schema=schema)


