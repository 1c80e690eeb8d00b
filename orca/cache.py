"""The cached function pod: a result computed once is never computed again.

Results live in the store table ``results/<function name>/<function hash>``, one row per
input packet hash (the hash of the packet columns the function reads). A run hashes its input
once, reads the table's live rows once and joins them in one pass on the hashes held as one
``UInt128`` each (joining 32-character strings is several times slower). Only misses
are computed; they are then looked up again, so the output is what the store holds. A
function that raises writes no result, only a row in the ``failures`` table, so the next run
tries that packet again. See ``docs/pods-and-caching.md``.

>>> import orca
>>> @orca.function_pod(output_keys="z")
... def double(x: int) -> int:
...     return 2 * x
>>> store = orca.MemoryStore()
>>> src = orca.DictSource([{"id": i, "x": i % 2} for i in range(4)], tags=["id"], source_id="d")
>>> double.pod.cached(store)(src).to_polars()["z"].to_list()
[0, 2, 0, 2]
>>> len(store.scan(double.pod.results_table).collect())   # 4 rows, 2 distinct packets
2
"""

from __future__ import annotations

import dataclasses
import datetime
import functools
import os
import time
from collections.abc import Callable, Iterator
from typing import Any, Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from orca import _context
from orca.errors import PodError
from orca.executors import Executor, InProcessExecutor
from orca.hashing import HASH_KEY, digests_hex, hash_keys, hash_packet_keys, key_digests, keys_hex
from orca.pods import (
    ATTEMPTS,
    DURATION,
    ERROR_COLUMNS,
    OK,
    ROW,
    FunctionPod,
    input_packets,
    result_record_ids,
    run_chunk,
)
from orca.stores import Store, default_store
from orca.stores.base import INVALIDATED_AT
from orca.streams import Stream

__all__ = ["CachedFunctionPod", "RunContext", "Counts", "new_run_id", "FAILURES"]

PACKET_HASH = "__packet_hash"
RECORD_ID = "__record_id"
FAILURES = "failures"
RECHECK_SECONDS = 10.0  # how often a long run looks for results other processes committed
# Working columns (never stored).
HIT = "__hit"
KEY = HASH_KEY  # the packet hash as one UInt128 (see hashing.hash_keys)
ENTRY_KEY = "__entry_key"  # a node's entry id as one UInt128
INDEX = "__index"
ENTRY_ROW = "__entry_row"
POSITION = "__position"
OnError = Literal["raise", "continue"]
_NO_FAILURES = pl.DataFrame(schema={KEY: pl.UInt128})


def new_run_id() -> str:
    """A unique run id whose text order follows start time (for humans; no rule relies on it)."""
    return f"{time.time_ns():016x}-{os.urandom(6).hex()}"


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


@dataclasses.dataclass
class Counts:
    """Entries served from the store, computed now, and failed, in one run of one node."""

    cached: int = 0
    computed: int = 0
    failed: int = 0


@dataclasses.dataclass(frozen=True)
class RunContext:
    """Everything one run of a cached pod or node needs besides its input."""

    run_id: str
    executor: Executor
    on_error: OnError = "raise"
    retries: int = 0
    node: str | None = None
    batch_rows: int = 100_000


def check_on_error(on_error: str, retries: int) -> None:
    if on_error not in ("raise", "continue"):
        raise ValueError(f"on_error must be 'raise' or 'continue', got {on_error!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")


def tag_json(frame: pl.DataFrame, tags: tuple[str, ...]) -> pl.Series:
    """Each row's tags as a JSON object (for failure rows and messages)."""
    if not tags:
        return pl.Series("tag", ["{}"] * frame.height, pl.String)
    return frame.select(pl.struct(list(tags)).struct.json_encode().alias("tag")).to_series()


class CachedFunctionPod:
    """A function pod whose results are stored and never computed twice.

    Parameters
    ----------
    pod
        The function pod (``f.pod``).
    store
        Where results and failures go; default :func:`orca.default_store`.
    on_error
        ``"raise"``: commit what succeeded, then raise :class:`orca.PodError` naming the tag.
        ``"continue"``: skip failed rows (they are recorded in ``failures``).
    retries
        Retry a failing call this many times, in process, with exponential backoff.
    executor
        Where calls run (default in process).

    Constructing one performs no I/O.
    """

    def __init__(self, pod: FunctionPod, *, store: Store | None = None, on_error: OnError = "raise",
                 retries: int = 0, executor: Executor | None = None) -> None:
        if not isinstance(pod, FunctionPod):
            raise PodError(f"CachedFunctionPod needs a FunctionPod (f.pod), got {type(pod).__name__}")
        check_on_error(on_error, retries)
        self.pod = pod
        self.store = store if store is not None else default_store()
        self.on_error: OnError = on_error
        self.retries = retries
        self.executor = executor or InProcessExecutor()

    @property
    def identity(self):
        return self.pod.identity

    @property
    def results_table(self) -> str:
        return self.pod.results_table

    def with_options(self, **options: Any) -> CachedFunctionPod:
        """A copy with some of ``store``, ``on_error``, ``retries``, ``executor`` changed."""
        current = dict(store=self.store, on_error=self.on_error, retries=self.retries, executor=self.executor)
        unknown = sorted(set(options) - set(current))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; valid: {sorted(current)}")
        return CachedFunctionPod(self.pod, **{**current, **options})

    def __repr__(self) -> str:
        return f"CachedFunctionPod({self.pod.name!r}, store={self.store.location!r}, on_error={self.on_error!r})"

    def __call__(self, *streams: Stream) -> Stream:
        """Apply to a stream: a lazy stream of tags + outputs, computing only what is new."""
        stream = streams[0].join(*streams[1:]) if len(streams) > 1 else streams[0]
        if not isinstance(stream, Stream):
            raise PodError(f"function {self.pod.name!r} takes streams, got {type(stream).__name__}")
        self.pod.check_input(stream)
        output = self.pod.output_stream(stream, lambda: self._run(stream), producer=self)
        return _context.recorded(self, (stream,), output)

    # -- the machinery shared with function nodes --------------------------------------------
    def hash_inputs(self, frame: pl.DataFrame, path_columns: frozenset[str]) -> pl.Series:
        """Input packet hash per row (only the columns the function reads) as ``__hash_key``.

        In memory a packet hash is a ``UInt128`` key; its hex text (``__packet_hash``) is made
        only for rows written to the store (:func:`orca.hashing.keys_hex`).
        """
        return hash_packet_keys(input_packets(self.pod, frame, path_columns)).alias(KEY)

    def missing(self, keys: pl.Series) -> pl.Series:
        """The distinct packet keys among ``keys`` with no live result yet (first-seen order)."""
        found = self.attach_results(keys.alias(KEY).to_frame(), [])
        return first_rows(found.filter(pl.col(HIT).is_null()))[KEY]

    def compute(self, entries: pl.DataFrame, ctx: RunContext, path_columns: frozenset[str],
                distinct: bool | None = None) -> Iterator[tuple[np.ndarray, pl.DataFrame, bool, pa.Table | None]]:
        """Compute every distinct packet of ``entries``; append their results.

        Works in batches of ``ctx.batch_rows`` packets. Yields, per completed chunk,
        ``(rows done, failed rows, False, their outputs)`` *after* appending the chunk's
        results, so callers can append rows that point at them (provenance) in the right
        order. ``rows done`` are the positions in ``entries`` of the first entry of each packet
        computed. Before a batch, if ``RECHECK_SECONDS`` have passed since the last look,
        packets whose results other processes committed meanwhile are skipped and yielded as
        ``(rows, no failures, True, None)``: done, but served from the store. ``distinct``: as
        for :func:`first_rows`.
        """
        keyed = with_key(entries)
        packets = first_rows(keyed.with_row_index(ENTRY_ROW), distinct)
        fn = functools.partial(run_chunk, self.pod, ctx.retries)
        checked = time.monotonic()
        for start in range(0, packets.height, ctx.batch_rows):
            batch = packets.slice(start, ctx.batch_rows)
            if start and time.monotonic() - checked >= RECHECK_SECONDS:
                still = self.missing(batch[KEY]).to_frame()
                served = batch.join(still, on=KEY, how="anti")[ENTRY_ROW]
                if served.len():
                    yield served.to_numpy(), _NO_FAILURES, True, None
                batch = batch.join(still, on=KEY, how="semi")
                checked = time.monotonic()
            table = input_packets(self.pod, batch, path_columns)
            table = table.append_column(ROW, pa.array(np.arange(batch.height, dtype=np.int64)))
            digests = key_digests(batch[KEY])
            keys = pa.table({PACKET_HASH: digests_hex(digests),
                             RECORD_ID: result_record_ids(self.identity.hash, digests),
                             ENTRY_ROW: batch[ENTRY_ROW].to_arrow()})
            chunks = ctx.executor.map_chunks(fn, table)
            try:
                for out in chunks:
                    done, failed, outputs = self._store_chunk(out, keys, ctx)
                    yield done, failed.with_columns(keyed[KEY].gather(failed[ENTRY_ROW])), False, outputs
            finally:
                chunks.close()

    def _store_chunk(self, out: pa.Table, keys: pa.Table,
                     ctx: RunContext) -> tuple[np.ndarray, pl.DataFrame, pa.Table]:
        """Append the successful rows of one computed chunk; return (their entry rows, failed rows
        with their entry rows, their outputs).

        ``keys`` holds the packet hash, record id and entry row of each row of the batch
        (``__row`` indexes it).
        """
        keys = keys.take(out.column(ROW))
        ok_mask = out.column(OK)
        failed_mask = pc.invert(ok_mask)
        has_failures = pc.any(failed_mask).as_py()
        ok, ok_keys = (out.filter(ok_mask), keys.filter(ok_mask)) if has_failures else (out, keys)
        n = ok.num_rows
        if n:
            results = pa.table({
                **{k: ok.column(k) for k in self.pod.output_keys},
                PACKET_HASH: ok_keys.column(PACKET_HASH),
                RECORD_ID: ok_keys.column(RECORD_ID),
                "__function_hash": pa.repeat(pa.scalar(self.identity.hash, pa.large_string()), n),
                "__computed_at": pa.repeat(pa.scalar(utc_now(), pa.timestamp("us", tz="UTC")), n),
                DURATION: ok.column(DURATION),
                "__run_id": pa.repeat(pa.scalar(ctx.run_id, pa.large_string()), n),
            })
            self.store.append(self.results_table, results, key=[PACKET_HASH])
        columns = [ATTEMPTS, *ERROR_COLUMNS]
        failed = out.filter(failed_mask) if has_failures else out.slice(0, 0)
        failed_keys = keys.filter(failed_mask) if has_failures else keys.slice(0, 0)
        failed = pl.from_arrow(failed.select(columns).add_column(0, ENTRY_ROW, failed_keys.column(ENTRY_ROW)))
        return ok_keys.column(ENTRY_ROW).to_numpy(), failed, ok.select(list(self.pod.output_keys))

    def record_failures(self, failed: pl.DataFrame, entries: pl.DataFrame, tags: tuple[str, ...],
                        ctx: RunContext) -> None:
        """Append one ``failures`` row per input entry whose packet failed."""
        if failed.height == 0:
            return
        rows = entries.join(failed.drop(ENTRY_ROW, strict=False), on=KEY, how="inner", maintain_order="left")
        entry_ids = (pl.Series(keys_hex(rows[ENTRY_KEY])) if ENTRY_KEY in rows.columns
                     else pl.Series([None] * rows.height, dtype=pl.String))
        table = pl.DataFrame({
            "node": pl.Series([ctx.node] * rows.height, dtype=pl.String),
            "entry_id": entry_ids.cast(pl.String),
            "packet_hash": pl.Series(keys_hex(rows[KEY])),
            "function": pl.Series([self.pod.name] * rows.height, dtype=pl.String),
            "function_hash": pl.Series([self.identity.hash] * rows.height, dtype=pl.String),
            "tag": tag_json(rows, tags),
            "error_type": rows[ERROR_COLUMNS[0]],
            "message": rows[ERROR_COLUMNS[1]],
            "traceback": rows[ERROR_COLUMNS[2]],
            "attempts": rows[ATTEMPTS],
            "run_id": pl.Series([ctx.run_id] * rows.height, dtype=pl.String),
            "failed_at": pl.Series([utc_now()] * rows.height, dtype=pl.Datetime("us", "UTC")),
        })
        self.store.append(FAILURES, table.to_arrow())

    def fail(self, failed: pl.DataFrame, entries: pl.DataFrame, tags: tuple[str, ...]) -> PodError:
        """The error ``on_error="raise"`` raises: it names the first failing tag."""
        row = entries.join(failed.head(1).drop(ENTRY_ROW, strict=False), on=KEY, how="inner").row(0, named=True)
        tag = {t: row[t] for t in tags}
        return PodError(f"function {self.pod.name!r} failed for tag {tag}: "
                        f"{row[ERROR_COLUMNS[0]]}: {row[ERROR_COLUMNS[1]]}")

    def output_frame(self, entries: pl.DataFrame, tags: tuple[str, ...], system_tags: tuple[str, ...]) -> pl.DataFrame:
        """Tags + outputs + source info for every entry whose packet has a live result (input order)."""
        found = self.attach_results(entries.select(*tags, *system_tags, KEY), list(self.pod.output_keys))
        return self.output_rows(found.filter(pl.col(HIT)), tags, system_tags)

    def output_rows(self, found: pl.DataFrame, tags: tuple[str, ...], system_tags: tuple[str, ...]) -> pl.DataFrame:
        """Rows of :meth:`attach_results` that hit, as the output stream's frame (see
        :meth:`FunctionPod.output_stream`: the source references are derived from ``__hash_key``)."""
        return found.select(*tags, *system_tags, *self.pod.output_keys, KEY)

    def results_index(self, columns: list[str]) -> pl.DataFrame | None:
        """The live result rows' ``columns``, ``__hit`` and ``__hash_key`` (None: no table yet).

        What :meth:`attach_results` joins with; reading it is independent of the input, so a
        node reads it while it hashes its input.
        """
        raw = self.store.scan(self.results_table, include_invalidated=True)
        if raw is None:
            return None
        results = raw.filter(pl.col(INVALIDATED_AT).is_null()).select(
            PACKET_HASH, *columns, pl.lit(True).alias(HIT)).collect()
        return results.with_columns(hash_keys(results[PACKET_HASH])).drop(PACKET_HASH)

    def attach_results(self, entries: pl.DataFrame, columns: list[str],
                       index: pl.DataFrame | None | Literal["read"] = "read") -> pl.DataFrame:
        """``entries`` plus ``columns`` of each one's live result and ``__hit`` (null: none), in order.

        One join on the packet hash as a ``UInt128`` (exact, and about twice as fast as joining
        32-character strings) with ``index`` (:meth:`results_index`, read now by default). An
        entry whose packet has several live rows (concurrent writers) takes the row the store's
        dedup rule keeps.
        """
        results = self.results_index(columns) if isinstance(index, str) else index
        if results is None:
            return entries.with_columns(self._nulls(columns))
        left = with_key(entries).with_row_index(POSITION)
        joined = left.join(results, on=KEY, how="left", maintain_order="left")
        if joined.height != entries.height:  # some packet has several live rows: apply the dedup rule
            several = joined[POSITION].is_duplicated()
            which = left.join(joined.filter(several).select(POSITION).unique(), on=POSITION)
            live = self.store.lookup(self.results_table, keys_hex(which[KEY]))
            live = live.select(hash_keys(live[PACKET_HASH].cast(pl.String)), *columns, pl.lit(True).alias(HIT))
            fixed = which.join(live, on=KEY, how="left")
            joined = pl.concat([joined.filter(~several), fixed.select(joined.columns)], how="vertical_relaxed")
            joined = joined.sort(POSITION)
        return joined.drop(POSITION, *([KEY] if KEY not in entries.columns else []))

    def _nulls(self, columns: list[str]) -> list[pl.Expr]:
        """Typed null columns standing for "no result" (outputs and the hit flag)."""
        types = pl.from_arrow(self.pod.output_schema.empty_table()).schema
        return [*(pl.lit(None, types[c]).alias(c) for c in columns), pl.lit(None, pl.Boolean).alias(HIT)]

    def _run(self, stream: Stream) -> pl.DataFrame:
        """Bring ``stream``'s results up to date, then return tags + outputs for it (input order)."""
        tags, system_tags = stream.tag_columns, stream.system_tag_columns
        reads = [p for p in self.pod.parameters if p in stream.packet_columns]
        frame = stream.lazy(include_system=True).select(*tags, *system_tags, *reads).collect()
        entries = frame.with_columns(self.hash_inputs(frame, stream.path_columns))
        outputs = list(self.pod.output_keys)
        keys = [*tags, *system_tags, KEY]  # (an output may share a parameter's name)
        found = self.attach_results(entries.select(keys), outputs)
        missed = found[HIT].is_null()
        if missed.any():  # compute the misses, then read back what the store now holds for them
            ctx = RunContext(new_run_id(), self.executor, self.on_error, self.retries)
            run_and_commit(self.store, self._work(entries.filter(missed), tags, stream.path_columns, ctx))
            found = found.with_row_index(INDEX)
            fresh = self.attach_results(found.filter(missed).select(INDEX, *keys), outputs)
            found = pl.concat([found.filter(~missed), fresh.select(found.columns)], how="vertical_relaxed")
            found = found.sort(INDEX)
        return self.output_rows(found.filter(pl.col(HIT)), tags, system_tags)

    def _work(self, todo: pl.DataFrame, tags: tuple[str, ...], path_columns: frozenset[str],
              ctx: RunContext) -> Iterator[None]:
        for _, failed, _, _ in self.compute(todo, ctx, path_columns):
            self.record_failures(failed, todo, tags, ctx)
            if failed.height and ctx.on_error == "raise":
                raise self.fail(failed, todo, tags)
            yield


def with_key(frame: pl.DataFrame) -> pl.DataFrame:
    """``frame`` with the ``UInt128`` key of its ``__packet_hash`` (kept if already there)."""
    return frame if KEY in frame.columns else frame.with_columns(hash_keys(frame[PACKET_HASH]))


def first_rows(frame: pl.DataFrame, distinct: bool | None = None) -> pl.DataFrame:
    """The first row of ``frame`` for each distinct packet (``__hash_key``), in order.

    ``distinct``: whether the caller already knows that every row has its own packet.
    """
    key = frame[KEY] if KEY in frame.columns else hash_keys(frame[PACKET_HASH])
    if distinct is None:
        distinct = key.n_unique() == frame.height
    if distinct:  # all distinct already (the usual first run): cheapest check
        return frame
    return frame.filter(key.is_first_distinct())


def run_and_commit(store: Store, steps: Iterator[Any], on_step: Callable[[Any], None] | None = None) -> None:
    """Drive ``steps``; commit whatever was appended when they end, fail or are interrupted."""
    try:
        for step in steps:
            if on_step is not None:
                on_step(step)
    except BaseException:
        steps.close()
        store.flush()  # commit what succeeded (results before the rows pointing at them)
        raise
    store.flush()

