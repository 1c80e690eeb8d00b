"""The cached function pod: a result computed once is never computed again.

Results live in the store table ``results/<function name>/<function hash>``, one row per
input packet hash (the hash of the packet columns the function reads). Looking results up is
one vectorised join per batch against the table's key column; only misses are computed. A
function that raises writes no result, only a row in the ``failures`` table, so the next run
tries that packet again.

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

import polars as pl
import pyarrow as pa

from orca import _context
from orca.errors import PodError
from orca.executors import Executor, InProcessExecutor
from orca.hashing import PATH_METADATA, hash_packets
from orca.pods import ATTEMPTS, DURATION, ERROR_COLUMNS, OK, ROW, FunctionPod, result_record_ids, run_chunk
from orca.streams import Stream, source_column
from orca.stores import Store, default_store

__all__ = ["CachedFunctionPod", "RunContext", "Counts", "new_run_id", "FAILURES"]

PACKET_HASH = "__packet_hash"
RECORD_ID = "__record_id"
FAILURES = "failures"
OnError = Literal["raise", "continue"]


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


def input_packets(pod: FunctionPod, frame: pl.DataFrame, path_columns: frozenset[str]) -> pa.Table:
    """The packet columns ``pod`` reads, as Arrow, with path columns marked for hashing."""
    table = frame.select([p for p in pod.parameters if p in frame.columns]).to_arrow()
    fields = [f.with_metadata(PATH_METADATA) if f.name in path_columns else f for f in table.schema]
    return table.cast(pa.schema(fields))


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
        self.pod.check_input(stream)
        output = Stream(
            lambda: self._run(stream),
            tag_columns=stream.tag_columns,
            packet_columns=self.pod.output_keys,
            path_columns=self.pod.path_outputs,
            schema=self.pod.output_stream_schema(stream),
            identity=self.pod.stream_identity(stream),
            producer=self,
        )
        return _context.recorded(self, (stream,), output)

    # -- the machinery shared with function nodes --------------------------------------------
    def hash_inputs(self, frame: pl.DataFrame, path_columns: frozenset[str]) -> pl.Series:
        """Input packet hash per row (only the columns the function reads)."""
        return pl.Series(PACKET_HASH, hash_packets(input_packets(self.pod, frame, path_columns)))

    def missing(self, packet_hashes: pl.Series) -> pl.Series:
        """The distinct packet hashes among ``packet_hashes`` with no live result yet."""
        wanted = packet_hashes.unique().to_frame(PACKET_HASH)
        known = self.store.keys(self.results_table)
        if known is None or known.len() == 0:
            return wanted.to_series()
        known = known.cast(pl.String).to_frame(PACKET_HASH)
        return wanted.join(known, on=PACKET_HASH, how="anti").to_series()

    def compute(self, entries: pl.DataFrame, todo: pl.Series, ctx: RunContext,
                path_columns: frozenset[str]) -> Iterator[tuple[pl.Series, pl.DataFrame]]:
        """Compute the packets ``todo`` (hashes) found in ``entries``; append their results.

        Works in batches of ``ctx.batch_rows`` packets; before each batch, results other
        processes committed meanwhile are dropped from the work. Yields, per completed
        chunk, ``(packet hashes computed, failed rows)`` *after* appending the chunk's results,
        so callers can append rows that point at them (provenance) in the right order.
        """
        packets = entries.filter(pl.col(PACKET_HASH).is_first_distinct()).join(
            todo.to_frame(PACKET_HASH), on=PACKET_HASH, how="semi")
        fn = functools.partial(run_chunk, self.pod, ctx.retries)
        for start in range(0, packets.height, ctx.batch_rows):
            batch = packets.slice(start, ctx.batch_rows)
            if start:  # others may have committed some of these meanwhile
                batch = batch.join(self.missing(batch[PACKET_HASH]).to_frame(PACKET_HASH), on=PACKET_HASH, how="semi")
            table = input_packets(self.pod, batch, path_columns)
            table = table.append_column(ROW, pa.array(range(batch.height), pa.int64()))
            hashes = batch[PACKET_HASH]
            chunks = ctx.executor.map_chunks(fn, table)
            try:
                for out in chunks:
                    yield self._store_chunk(out, hashes, ctx)
            finally:
                chunks.close()

    def _store_chunk(self, out: pa.Table, hashes: pl.Series, ctx: RunContext) -> tuple[pl.Series, pl.DataFrame]:
        frame = pl.from_arrow(out)
        frame = frame.with_columns(hashes.gather(frame[ROW]).alias(PACKET_HASH))
        ok = frame.filter(pl.col(OK))
        if ok.height:
            record_ids = result_record_ids(self.identity.hash, ok[PACKET_HASH])
            now = utc_now()
            results = ok.select(list(self.pod.output_keys)).to_arrow().cast(self.pod.output_schema)
            results = pa.table({
                **{k: results.column(k) for k in self.pod.output_keys},
                PACKET_HASH: ok[PACKET_HASH].to_arrow(),
                RECORD_ID: record_ids,
                "__function_hash": pa.array([self.identity.hash] * ok.height, pa.large_string()),
                "__computed_at": pa.array([now] * ok.height, pa.timestamp("us", tz="UTC")),
                DURATION: ok[DURATION].to_arrow(),
                "__run_id": pa.array([ctx.run_id] * ok.height, pa.large_string()),
            })
            self.store.append(self.results_table, results, key=[PACKET_HASH])
        failed = frame.filter(~pl.col(OK)).select(PACKET_HASH, ATTEMPTS, *ERROR_COLUMNS)
        return ok[PACKET_HASH], failed

    def record_failures(self, failed: pl.DataFrame, entries: pl.DataFrame, tags: tuple[str, ...],
                        ctx: RunContext) -> None:
        """Append one ``failures`` row per input entry whose packet failed."""
        if failed.height == 0:
            return
        rows = entries.join(failed, on=PACKET_HASH, how="inner", maintain_order="left")
        entry_ids = rows["__entry_id"] if "__entry_id" in rows.columns else pl.Series([None] * rows.height, dtype=pl.String)
        table = pl.DataFrame({
            "node": pl.Series([ctx.node] * rows.height, dtype=pl.String),
            "entry_id": entry_ids.cast(pl.String),
            "packet_hash": rows[PACKET_HASH],
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
        row = entries.join(failed.head(1), on=PACKET_HASH, how="inner").row(0, named=True)
        tag = {t: row[t] for t in tags}
        return PodError(f"function {self.pod.name!r} failed for tag {tag}: "
                        f"{row[ERROR_COLUMNS[0]]}: {row[ERROR_COLUMNS[1]]}")

    def output_frame(self, entries: pl.DataFrame, tags: tuple[str, ...], system_tags: tuple[str, ...]) -> pl.DataFrame:
        """Tags + outputs + source info for every entry whose packet has a live result."""
        results = self.store.lookup(self.results_table, entries[PACKET_HASH].unique())
        outputs = list(self.pod.output_keys)
        if results.height == 0:
            results = pl.DataFrame(schema={**pl.DataFrame(pa.table([], self.pod.output_schema)).schema,
                                           PACKET_HASH: pl.String, RECORD_ID: pl.String})
        ref = pl.lit(self.results_table + "#") + pl.col(RECORD_ID)
        joined = entries.select(*tags, *system_tags, PACKET_HASH).join(
            results.select(*outputs, PACKET_HASH, RECORD_ID).with_columns(pl.col(PACKET_HASH).cast(pl.String)),
            on=PACKET_HASH, how="inner", maintain_order="left")
        return joined.select(*tags, *system_tags, *outputs, *[ref.alias(source_column(k)) for k in outputs])

    def _run(self, stream: Stream) -> pl.DataFrame:
        """Bring ``stream``'s results up to date, then return tags + outputs for it."""
        frame = stream.to_polars(include_system=True)
        entries = frame.with_columns(self.hash_inputs(frame, stream.path_columns))
        ctx = RunContext(new_run_id(), self.executor, self.on_error, self.retries)
        run_and_commit(self.store, self._work(entries, stream.tag_columns, stream.path_columns, ctx))
        return self.output_frame(entries, stream.tag_columns, stream.system_tag_columns)

    def _work(self, entries: pl.DataFrame, tags: tuple[str, ...], path_columns: frozenset[str],
              ctx: RunContext) -> Iterator[None]:
        for _, failed in self.compute(entries, self.missing(entries[PACKET_HASH]), ctx, path_columns):
            self.record_failures(failed, entries, tags, ctx)
            if failed.height and ctx.on_error == "raise":
                raise self.fail(failed, entries, tags)
            yield


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

