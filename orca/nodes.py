"""Function nodes: a cached pod bound to its input, recording provenance, iterating in two phases.

A node's provenance table ``pipelines/<pipeline>/<label>`` holds one row per *entry* (a tag
row of the input): its tags, system tags, ``__entry_id``, ``__packet_hash``, the
``__record_id`` of the result it points to, ``__source__<column>`` for each input packet
column the function reads, ``__run_id`` and ``__recorded_at``. No input data is copied.

``__entry_id`` = hash(node identity, tags, system tags, input packet hash), so one packet under
N tags is one result row and N provenance rows. Running a node:

1. hashes its input in bulk;
2. **phase 1** -- entries whose id is already in the provenance table are done;
3. **phase 2** -- novel entries: a result-cache hit only adds a provenance row; misses are
   computed by the executor. Results are committed before the provenance rows pointing at them.

>>> import orca
>>> @orca.function_pod(output_keys="y")
... def inc(x: int) -> int:
...     return x + 1
>>> src = orca.DictSource([{"k": "a", "x": 1}, {"k": "b", "x": 1}], tags=["k"], source_id="s")
>>> node = orca.FunctionNode(inc.pod, src, store=orca.MemoryStore(), pipeline="demo")
>>> node.run()
Counts(cached=0, computed=2, failed=0)
>>> node.run()
Counts(cached=2, computed=0, failed=0)
>>> node.results().collect()["y"].to_list()
[2, 2]
"""

from __future__ import annotations

import concurrent.futures
import re
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from orca._operator import check_expr
from orca.cache import (
    ENTRY_KEY,
    HIT,
    KEY,
    PACKET_HASH,
    RECORD_ID,
    CachedFunctionPod,
    Counts,
    RunContext,
    new_run_id,
    run_and_commit,
    utc_now,
    with_key,
)
from orca.errors import PodError
from orca.executors import Executor
from orca.hashing import (
    digests_hex,
    hash_bytes,
    hash_keys,
    hash_packet_keys,
    hash_packets,
    key_digests,
    keys_hex,
)
from orca.pods import FunctionPod, result_record_ids, result_references
from orca.stores import Store, default_store
from orca.stores.base import INVALIDATED_AT
from orca.streams import Stream, source_column

__all__ = ["FunctionNode", "ENTRY_ID", "shard_filter"]

ENTRY_ID = "__entry_id"
SYSTEM_TAGS = "__system_tags"
KNOWN = "__known"
SHARD_KEY = "__shard_key"
FIRST = "__first_entry"  # (working column: a row number)
INPUT_ROW = "__input_row"  # (working column: an entry's row in the node's input)
UPSTREAM_KEY = "__upstream_key"  # (working column: see FunctionNode._input_frame)
PROVENANCE_BATCH = 100_000  # computed entries per provenance append ...
PROVENANCE_SECONDS = 1.0  # ... or seconds, whichever comes first (progress stays fresh)
_LABEL_OK = re.compile(r"^[A-Za-z0-9_\-.]+$")


def shard_filter(shard: tuple[int, int] | None, column: str = SHARD_KEY) -> pl.Expr:
    """Rows of shard ``i`` of ``n``: the first 8 hex digits of ``column`` (a hash), modulo ``n``."""
    if shard is None:
        return pl.lit(True)
    i, n = shard
    if not (isinstance(n, int) and isinstance(i, int) and n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    return pl.col(column).str.slice(0, 8).str.to_integer(base=16) % n == i


class FunctionNode:
    """A function pod bound to its input stream inside a pipeline (see module docs).

    Parameters
    ----------
    pod
        A :class:`FunctionPod` (``f.pod``) or a :class:`CachedFunctionPod` (its store and
        options are then the defaults of this node).
    input_stream
        The stream the node maps.
    store
        Where results and provenance go; default: the cached pod's store or :func:`default_store`.
    pipeline, label
        Name the provenance table ``pipelines/<pipeline>/<label>``; label defaults to the
        function's name.

    Constructing a node performs no I/O.
    """

    def __init__(self, pod: FunctionPod | CachedFunctionPod, input_stream: Stream, *, store: Store | None = None,
                 pipeline: str = "default", label: str | None = None) -> None:
        if isinstance(pod, CachedFunctionPod):
            cached = pod if store is None else pod.with_options(store=store)
        elif isinstance(pod, FunctionPod):
            cached = CachedFunctionPod(pod, store=store if store is not None else default_store())
        else:
            raise PodError(f"FunctionNode needs a function pod (f.pod), got {type(pod).__name__}")
        if not isinstance(input_stream, Stream):
            raise PodError(f"FunctionNode {label or cached.pod.name!r} needs a Stream as input (e.g. a source), "
                           f"got {type(input_stream).__name__}")
        cached.pod.check_input(input_stream)
        self.label = label or cached.pod.name
        for name, value in (("pipeline", pipeline), ("label", self.label)):
            if not _LABEL_OK.match(value):
                raise ValueError(f"node {name} {value!r} may hold only letters, digits, '_', '-' and '.'")
        self.cached = cached
        self.pod = cached.pod
        self.input = input_stream
        self.pipeline = pipeline
        self._entries: pl.DataFrame | None = None  # the input as hashed by the latest run
        self._latest: pl.DataFrame | None = None  # its status as of the end of that run
        self._recorded_rows: list[pl.Series] = []  # rows of that run's entries given provenance
        self._computed: list[tuple[_EntriesOf, np.ndarray, pa.Table]] = []  # that run's outputs
        self.identity = hash_bytes(f"node\x00{self.pod.identity.hash}\x00{input_stream.identity}".encode())
        self.output = self.pod.output_stream(input_stream, self._current_output, producer=self)

    @property
    def store(self) -> Store:
        return self.cached.store

    @property
    def provenance_table(self) -> str:
        return f"pipelines/{self.pipeline}/{self.label}"

    def __repr__(self) -> str:
        return f"FunctionNode({self.label!r}, pod={self.pod.name!r}, table={self.provenance_table!r})"

    # -- entries ----------------------------------------------------------------------------
    def entries(self) -> pl.DataFrame:
        """The input rows with system columns, packet hashes and entry ids (hashed in bulk).

        Hashes are kept as ``UInt128`` keys (``__hash_key``, ``__entry_key``) for lookups; their
        hex text is made only for the rows written (:func:`entry_ids`).
        """
        frame = self._input_frame()
        frame = frame.with_columns(self.cached.hash_inputs(frame, self.input.path_columns))
        return frame.with_columns(self._entry_keys(frame))

    def _input_frame(self) -> pl.DataFrame:
        """The input with system columns; when it is another node's output, its ``__source__``
        columns are left out and ``__upstream_key`` (the upstream packet key of each row) is
        added instead: :meth:`_append_provenance` makes the references only for the rows it
        records (building them for every row cost ~0.15 s per million, mostly wasted on reruns).
        """
        lazy = self.input.lazy(include_system=True)
        upstream = self.input.producer
        if isinstance(upstream, FunctionNode) and self.input is upstream.output:
            latest = upstream._latest  # the output is this frame's known rows, in order
            if latest is not None:
                frame = lazy.drop([source_column(k) for k in upstream.pod.output_keys]).collect()
                keys = latest.filter(pl.col(KNOWN))[KEY]
                if upstream._latest is latest and keys.len() == frame.height:
                    return frame.with_columns(keys.alias(UPSTREAM_KEY))
        return lazy.collect()

    def _entry_keys(self, frame: pl.DataFrame) -> pl.Series:
        """The entry id of each row, as a ``UInt128`` key (see ``docs/pipelines.md``).

        The packet hash of the row ``{tags..., system tags..., __packet_hash: the input packet
        hash as 16 bytes}`` XOR the node identity: one hash per row over the columns that vary,
        made distinct per node by a bijection.
        """
        system = sorted(self.input.system_tag_columns)
        digests = key_digests(frame[KEY])
        packet = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), frame.height,
                                                      [None, pa.py_buffer(digests.tobytes())])
        id_table = frame.select(*self.input.tag_columns, *system).to_arrow().append_column(PACKET_HASH, packet)
        node = hash_keys(pl.Series([self.identity]))[0]
        return (hash_packet_keys(id_table) ^ node).alias(ENTRY_KEY)

    def _read_tables(self) -> tuple[pl.Series | None, pl.DataFrame | None, int | None]:
        """What :meth:`_status` reads from the store: recorded entry keys, the results index and
        the results table's version (read first: the index holds at least that version)."""
        version = self.store.version(self.cached.results_table)
        return self._recorded(), self.cached.results_index(list(self.pod.output_keys)), version

    def _recorded(self) -> pl.Series | None:
        """The entry keys of live provenance rows (None: no table). Not deduplicated, as they are
        only joined against: making 1M ids distinct costs more than reading them."""
        prov = self.store.scan(self.provenance_table, include_invalidated=True)
        if prov is None:
            return None
        ids = prov.filter(pl.col(INVALIDATED_AT).is_null()).select(ENTRY_ID).collect().to_series()
        return hash_keys(ids.cast(pl.String)).alias(ENTRY_KEY)

    def _entries_and_status(self) -> tuple[pl.DataFrame, pl.DataFrame, int | None]:
        """Hash the input while another thread reads this node's tables (both take a while);
        also returns the results table's version the status reflects."""
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="orca-read") as pool:
            tables = pool.submit(self._read_tables)
            entries = self.entries()
            tables = tables.result()
            return entries, self._status(entries, tables), tables[2]

    def _status(self, entries: pl.DataFrame,
                tables: tuple[pl.Series | None, pl.DataFrame | None, int | None] | None = None) -> pl.DataFrame:
        """Tags, system tags, ids and outputs of ``entries`` (in order), with ``__hit`` (the
        packet has a live result) and ``__known`` (the entry is done).

        An entry is done when it has a live provenance row *and* a live result (an entry whose
        result was invalidated -- e.g. through another entry with the same packet -- is novel
        again). Both are joins, never ``is_in`` on a large list. ``tables``: what
        :meth:`_read_tables` returns (read now if not given).
        """
        recorded, index, _ = tables if tables is not None else self._read_tables()
        keys = [*self.input.tag_columns, *self.input.system_tag_columns, ENTRY_KEY, KEY]
        found = self.cached.attach_results(entries.select(keys), list(self.pod.output_keys), index)
        if recorded is None or recorded.len() == 0:
            return found.with_columns(pl.lit(False).alias(KNOWN))
        # A semi-join for the positions of recorded entries: about half the cost of a left join.
        rows = found.select(ENTRY_KEY).with_row_index(FIRST).join(recorded.to_frame(), on=ENTRY_KEY, how="semi")[FIRST]
        recorded_mask = np.zeros(found.height, bool)
        recorded_mask[rows.to_numpy()] = True
        return found.with_columns((pl.Series(recorded_mask) & pl.col(HIT).is_not_null()).alias(KNOWN))

    # -- running ----------------------------------------------------------------------------
    def run(self, *, executor: Executor | None = None, on_error: str | None = None, retries: int | None = None,
            shard: tuple[int, int] | None = None, run_id: str | None = None,
            progress: Callable[[Counts], None] | None = None, total: Callable[[int, int], None] | None = None) -> Counts:
        """Bring this node up to date; returns what was served from the store, computed and failed.

        ``progress`` is called with the running counts as work completes; ``total`` once with
        (entries in this run, entries already done).
        """
        entries, status, version = self._entries_and_status()
        return self._update(entries, status, executor=executor, on_error=on_error, retries=retries,
                            shard=shard, run_id=run_id, progress=progress, total=total, results_version=version)

    def _update(self, entries: pl.DataFrame, status: pl.DataFrame, *, executor: Executor | None = None,
                on_error: str | None = None, retries: int | None = None, shard: tuple[int, int] | None = None,
                run_id: str | None = None, progress: Callable[[Counts], None] | None = None,
                total: Callable[[int, int], None] | None = None, results_version: int | None = None) -> Counts:
        """:meth:`run` for entries already hashed and looked up (see :meth:`_status`) when the
        results table was at ``results_version``."""
        cached = self.cached.with_options(**{k: v for k, v in dict(
            executor=executor, on_error=on_error, retries=retries).items() if v is not None})
        ctx = RunContext(run_id or new_run_id(), cached.executor, cached.on_error, cached.retries, node=self.label)
        self._entries = entries
        self._latest = None
        self._recorded_rows = []
        self._computed = []
        novel = entries.with_columns(status[HIT], status[KNOWN]).with_row_index(INPUT_ROW).filter(~pl.col(KNOWN))
        if shard is not None:
            # Shard by tags + system tags, which pods pass through unchanged: a row falls in the
            # same shard in every node of a chain, so each shard finds its upstream rows done.
            key = hash_packets(novel.select(*self.input.tag_columns, *self.input.system_tag_columns).to_arrow())
            novel = novel.with_columns(pl.Series(SHARD_KEY, key)).filter(shard_filter(shard)).drop(SHARD_KEY)
        counts = Counts(cached=int(status[KNOWN].sum()))
        if total is not None:
            total(counts.cached + novel.height, counts.cached)
        run_and_commit(self.store, self._phase2(cached, novel, ctx, counts),
                       on_step=(lambda _: progress(counts)) if progress else None)
        if novel.height == 0:  # nothing changed: the output is what the status already holds
            self._latest = status
        elif shard is None:  # every novel entry was handled: only their results need reading
            trusted = self.store.only_own_commits(self.cached.results_table, results_version)
            latest = self._refreshed_from_run(status) if trusted else None
            self._latest = latest if latest is not None else self._refreshed(status)
        self._computed = []
        return counts

    def _recorded_mask(self, height: int) -> np.ndarray:
        """Which input rows this run gave a provenance row."""
        recorded = np.zeros(height, bool)
        for rows in self._recorded_rows:
            recorded[rows.to_numpy()] = True
        return recorded

    def _refreshed_from_run(self, status: pl.DataFrame) -> pl.DataFrame | None:
        """:meth:`_refreshed` without reading the store: when nobody else committed to the results
        table during the run, the live results of the packets just computed are the values
        computed (each was missing before, so the only row is this run's). None when the
        outputs cannot be placed this way (nested output types, packets shared by entries)."""
        outputs = list(self.pod.output_keys)
        if any(status[c].dtype.is_nested() for c in outputs):
            return None
        hit, columns = status[HIT].clone(), {c: status[c].clone() for c in outputs}
        for entries_of, rows, values in self._computed:
            if entries_of.first is not None:
                return None
            where = entries_of.todo[INPUT_ROW].gather(rows)
            hit.scatter(where, True)
            values = pl.from_arrow(values)
            for c in outputs:
                columns[c].scatter(where, values[c].cast(columns[c].dtype))
        done = status[KNOWN] | (hit.is_not_null() & pl.Series(self._recorded_mask(status.height)))
        return status.with_columns(*columns.values(), hit, done.alias(KNOWN))

    def _refreshed(self, status: pl.DataFrame) -> pl.DataFrame:
        """``status`` after a run: the entries this run recorded take their results as now stored.

        An entry that was novel is done if this run appended its provenance row (its result
        was computed, found in the cache, or committed by another process) and its packet has
        a live result; a failed entry stays not done, even if another process has meanwhile
        stored a result for its packet.
        """
        outputs = list(self.pod.output_keys)
        recorded = self._recorded_mask(status.height)
        novel = ~status[KNOWN]
        keys = [c for c in status.columns if c not in (*outputs, HIT, KNOWN)]
        indexed = status.with_row_index(FIRST)
        fresh = self.cached.attach_results(indexed.filter(novel).select(FIRST, *keys), outputs)
        done = fresh[HIT].is_not_null() & pl.Series(recorded).gather(fresh[FIRST])
        fresh = fresh.with_columns(done.alias(KNOWN)).select(indexed.columns)
        if novel.all():
            return fresh.drop(FIRST)
        return pl.concat([indexed.filter(~novel), fresh]).sort(FIRST).drop(FIRST)

    def _phase2(self, cached: CachedFunctionPod, novel: pl.DataFrame, ctx: RunContext,
                counts: Counts) -> Iterator[None]:
        if novel.height == 0:
            return
        hits = novel.filter(pl.col(HIT).is_not_null())
        if hits.height:
            self._append_provenance(hits, ctx)
            # Commit now so the provenance buffer is empty when results start to pend: every
            # later flush then commits results before the provenance rows that point at them.
            self.store.flush()
            counts.cached += hits.height
            yield
        todo = with_key(novel.filter(pl.col(HIT).is_null()))
        entries_of = _EntriesOf(todo)
        tags = self.input.tag_columns
        done: list[np.ndarray] = []
        pending, last = 0, time.monotonic()
        try:
            distinct = entries_of.first is None
            for rows, failed, served, values in cached.compute(todo, ctx, self.input.path_columns, distinct):
                if values is not None and values.num_rows:
                    self._computed.append((entries_of, rows, values))
                if served:  # another process committed these results meanwhile: only provenance
                    counts.cached += self._record_computed(entries_of, [rows], ctx)
                    yield
                    continue
                done.append(rows)
                pending += len(rows)
                # Provenance for computed packets is appended (after their results) in batches,
                # so that each append and commit is large.
                if pending >= PROVENANCE_BATCH or time.monotonic() - last >= PROVENANCE_SECONDS:
                    counts.computed += self._record_computed(entries_of, done, ctx)
                    done, pending, last = [], 0, time.monotonic()
                if failed.height:
                    cached.record_failures(failed, todo, tags, ctx)
                    counts.failed += todo.join(failed.select(KEY), on=KEY, how="semi").height
                    if ctx.on_error == "raise":
                        raise cached.fail(failed, todo, tags)
                yield
        finally:  # also on error and Ctrl-C: every appended result gets its provenance row
            counts.computed += self._record_computed(entries_of, done, ctx)

    def _record_computed(self, entries_of: _EntriesOf, done: list[np.ndarray], ctx: RunContext) -> int:
        """Append provenance for the entries whose packets were computed (first entry rows ``done``)."""
        if not done:
            return 0
        finished = entries_of(np.concatenate(done))
        self._append_provenance(finished, ctx)
        return finished.height

    def _append_provenance(self, rows: pl.DataFrame, ctx: RunContext) -> None:
        if rows.height == 0:
            return
        system = sorted(self.input.system_tag_columns)
        system_json = (pl.struct(system).struct.json_encode() if system else pl.lit("{}")).alias(SYSTEM_TAGS)
        sources: list = [source_column(p) for p in self.pod.parameters
                         if source_column(p) in self.input.full_schema.names]
        if UPSTREAM_KEY in rows.columns:  # see _input_frame
            refs = pl.Series(result_references(self.input.producer.pod, rows[UPSTREAM_KEY]))
            sources = [refs.alias(c) for c in sources]
        digests = key_digests(rows[KEY])
        table = rows.select(
            *self.input.tag_columns, system_json, entry_ids(rows), pl.Series(PACKET_HASH, digests_hex(digests)),
            pl.Series(RECORD_ID, result_record_ids(self.pod.identity.hash, digests)),
            *sources,
            pl.lit(ctx.run_id).alias("__run_id"),
            pl.lit(utc_now()).dt.cast_time_unit("us").alias("__recorded_at"),
        )
        self.store.append(self.provenance_table, table.to_arrow(), key=[ENTRY_ID],
                          refers_to=self.cached.results_table)
        self._recorded_rows.append(rows[INPUT_ROW])

    # -- reading ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
        """Two-phase iteration: rows already computed for this input at once, then the novel ones."""
        entries, status, version = self._entries_and_status()  # status: outputs of entries done
        tags, system_tags = self.input.tag_columns, self.input.system_tag_columns
        yield from _rows(self.cached.output_rows(status.filter(pl.col(KNOWN)), tags, system_tags), tags, self.pod)
        self._update(entries, status, results_version=version)
        yield from _rows(self._output_for(entries.filter(~status[KNOWN])), tags, self.pod)

    def _output_for(self, entries: pl.DataFrame) -> pl.DataFrame:
        """Tags + outputs + source info of ``entries`` that have a live provenance row."""
        recorded = self._recorded()
        if recorded is None:
            entries = entries.clear()
        else:
            entries = entries.join(recorded.to_frame(), on=ENTRY_KEY, how="semi")
        return self.cached.output_frame(entries, self.input.tag_columns, self.input.system_tag_columns)

    def _current_output(self) -> pl.DataFrame:
        # Reuse what the latest run hashed and looked up: within a pipeline run, downstream
        # nodes read this output right after this node ran, and redoing it is not free.
        if self._latest is not None:
            known = self._latest.filter(pl.col(KNOWN))
            return self.cached.output_rows(known, self.input.tag_columns, self.input.system_tag_columns)
        entries = self._entries if self._entries is not None else self.entries()
        return self._output_for(entries)

    def results(self) -> pl.LazyFrame:
        """Tags + outputs for this node's current input, as stored (no computation)."""
        return self._current_output().select(*self.input.tag_columns, *self.pod.output_keys).lazy()

    def provenance(self) -> pl.LazyFrame:
        """This input's provenance rows joined to their results' metadata."""
        prov = self.store.scan(self.provenance_table)
        if prov is None:
            return pl.LazyFrame()
        ids = entry_ids(self.entries()).to_frame().lazy()
        prov = prov.join(ids, on=ENTRY_ID, how="semi")
        results = self.store.scan(self.cached.results_table)
        if results is None:
            return prov
        meta = results.select(PACKET_HASH, "__function_hash", "__computed_at", "__duration_s",
                              pl.col("__run_id").alias("__result_run_id"))
        return prov.join(meta, on=PACKET_HASH, how="left")

    def invalidate(self, where: pl.Expr | None = None) -> int:
        """Mark entries matching ``where`` (a Polars expression on tags; all if None) for recomputation.

        Their provenance and result rows stay as history, flagged by ``__invalidated_at``; the
        next run computes them again. Returns the number of entries invalidated.
        """
        if where is not None:
            check_expr(where, self.input.tag_columns, f"invalidate node {self.label!r}", "tag")
        entries = self.entries()
        if where is not None:
            entries = entries.filter(where)
        prov = self.store.lookup(self.provenance_table, entry_ids(entries))
        if prov.height == 0:
            return 0
        self._latest = None  # the output changes
        self.store.invalidate(self.cached.results_table, prov[PACKET_HASH].unique())
        return self.store.invalidate(self.provenance_table, prov[ENTRY_ID])

    def __len__(self) -> int:
        return self._current_output().height


def entry_ids(frame: pl.DataFrame) -> pl.Series:
    """The ``__entry_id`` text of each row of a frame holding ``__entry_key``."""
    return pl.Series(ENTRY_ID, keys_hex(frame[ENTRY_KEY]))


class _EntriesOf:
    """Maps the first entry row of computed packets to every entry with those packets.

    Usually each entry has its own packet and this is a gather; when packets repeat, each row
    carries the row of its packet's first entry and the lookup is one ``is_in`` on integers.
    """

    def __init__(self, todo: pl.DataFrame) -> None:
        self.todo = todo
        self.first: pl.Series | None = None
        if todo.height and todo[KEY].n_unique() != todo.height:
            self.first = todo.with_row_index(FIRST).select(
                pl.col(FIRST).min().over(KEY)).to_series()

    def __call__(self, rows: np.ndarray) -> pl.DataFrame:
        if self.first is None:
            return self.todo[rows]
        return self.todo.filter(self.first.is_in(pl.Series(rows, dtype=self.first.dtype).implode()))


def _rows(frame: pl.DataFrame, tags: tuple[str, ...], pod: FunctionPod) -> Iterator[tuple[Mapping, Mapping]]:
    stream = Stream(frame.lazy(), tag_columns=tags, packet_columns=pod.output_keys,
                    path_columns=pod.path_outputs, identity="rows")
    yield from stream

