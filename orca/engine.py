"""The run engine: how a function pod's results are computed and recorded, in one place.

Both a :class:`~orca.FunctionNode` and a :class:`~orca.CachedFunctionPod` used alone are
described to the engine as a :class:`NodeSpec` (a pod over an input stream, into a store; a
node also names its provenance table). A run of one (:func:`run`):

1. **hash** the input in bulk -- each row's input packet hash and, for a node, its entry id,
   held as ``UInt128`` keys -- while a second thread reads the node's tables;
2. **status** (:func:`read_status`, which is also what a plan reads): *done* entries have a
   live provenance row and a live result (phase 1: served at once); *novel* entries either
   find their packet's result in the store (a cache hit: only a provenance row is added) or
   must be computed (phase 2). A rerun with nothing new finds all of it in the node's asset,
   when the asset reflects the node's tables as they are (:func:`_found_in_asset`);
3. **compute** the distinct missing packets through the executor, in batches of
   ``batch_rows`` packets; between batches, skip packets other processes committed meanwhile;
4. **record** each computed chunk's results, then the provenance rows pointing at them (so no
   commit ever holds provenance ahead of its results), and failures in ``failures``;
5. **count** cached / computed / failed, reporting progress as work completes;
6. **refresh**: the status after the run, from which the node's output is read.

A run returns a :class:`NodeRun` -- a value the pipeline hands to downstream nodes. The
latest status of each node is also remembered here and reused to read its output while the
store's tables are still at the versions it saw (see :func:`current_status`).
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import functools
import json
import math
import os
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Literal

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from orca import assets, claims
from orca._operator import arrow_schema_of
from orca.calls import chunk_call, failed_for_tag, input_packets
from orca.errors import SchemaError, StoreError
from orca.executors import Executor
from orca.hashing import (
    KeySet,
    digests_binary,
    hash_bytes,
    hash_keys,
    hash_packet_keys,
    hash_packets,
    key_digests,
    keys_binary,
)
from orca.names import (
    ATTEMPTS,
    COMPUTED_AT,
    DONE,
    DURATION,
    ENTRY_ID,
    ENTRY_KEY,
    ERROR_COLUMNS,
    FAILURES,
    FAILURES_SCHEMA,
    FUNCTION_HASH,
    HIT,
    ID_TYPE,
    INPUT_ROW,
    INVALIDATED_AT,
    KEY,
    OK,
    PACKET_HASH,
    RECORD_ID,
    RECORDED_AT,
    ROW,
    RUN_ID,
    SYSTEM_TAGS,
    UPSTREAM_KEY,
    results_schema,
    source_column,
    source_references,
)
from orca.pods import FunctionPod, check_timeout, result_record_ids, result_references
from orca.status import Settled, Status
from orca.stores import Store
from orca.stores.base import member
from orca.streams import Stream
from orca.types import accepts, storable_table, storable_type

__all__ = ["NodeSpec", "RunOptions", "Status", "NodeRun", "Counts", "read_status", "run", "current_status",
           "output_frame", "new_run_id", "shard_filter"]

OnError = Literal["raise", "continue"]
_ENTRY_ROW = "__entry_row"  # a packet's first entry row among the entries to compute
_POSITION = "__position"  # (working columns: row numbers, one name per use so they never meet)
_INDEX = "__index"
_FIRST = "__first_entry"
_SHARD_KEY = "__shard_key"
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


@dataclasses.dataclass(frozen=True, eq=False)
class NodeSpec:
    """What the engine runs: ``pod`` over ``input`` into ``store``.

    A node records provenance in ``provenance_table``, identifies its entries with ``identity``
    and materialises its output in ``asset_table``; a cached pod used alone has none of them
    (its entries are its packets).
    """

    pod: FunctionPod
    input: Stream
    store: Store
    label: str | None = None
    provenance_table: str | None = None
    identity: str | None = None
    asset_table: str | None = None
    claims_table: str | None = None

    @property
    def results_table(self) -> str:
        return self.pod.results_table

    @property
    def upstream(self) -> NodeSpec | None:
        """The node whose output is exactly this node's input, if any."""
        producer = self.input.producer
        return producer if isinstance(producer, NodeSpec) else None


@dataclasses.dataclass(frozen=True)
class RunOptions:
    """How one run goes (see :meth:`orca.Pipeline.run` for the user-facing options)."""

    run_id: str
    executor: Executor
    on_error: OnError = "raise"
    retries: int = 0
    shard: tuple[int, int] | None = None
    batch_rows: int = 100_000  # packets computed per batch; provenance appended at least this often
    recheck_seconds: float = 10.0  # how often a long run looks for results other processes committed
    flush_seconds: float = 1.0  # provenance of computed entries is appended at least this often
    timeout: float | None = None  # seconds per call (None: the pod's own timeout, if any)
    claim: bool = False  # share the novel entries with other processes through leases (orca.claims)
    claim_rows: int = 10_000  # entries per claimed chunk
    lease_seconds: float = 60.0  # a chunk whose holder has not renewed for this long is taken over
    memory_rows: int | None = None  # input rows held at once (None: the whole input; see orca.slices)

    def __post_init__(self) -> None:
        check_on_error(self.on_error, self.retries)
        check_timeout(self.timeout)
        shard_filter(self.shard)
        if not isinstance(self.batch_rows, int) or self.batch_rows < 1:
            raise ValueError(f"batch_rows must be an integer >= 1, got {self.batch_rows!r}")
        if self.recheck_seconds < 0 or self.flush_seconds < 0:
            raise ValueError("recheck_seconds and flush_seconds must be >= 0")
        if self.claim and self.shard is not None:
            raise ValueError("give claim=True or shard=, not both")
        if not isinstance(self.claim_rows, int) or self.claim_rows < 1 or not self.lease_seconds > 0:
            raise ValueError("claim_rows must be an integer >= 1 and lease_seconds > 0")
        if self.memory_rows is not None:
            if not isinstance(self.memory_rows, int) or isinstance(self.memory_rows, bool) or self.memory_rows < 1:
                raise ValueError(f"memory_rows must be an integer >= 1 or None, got {self.memory_rows!r}")
            if self.claim:
                raise ValueError("memory_rows cannot be combined with claim=True yet")


def check_on_error(on_error: str, retries: int) -> None:
    if on_error not in ("raise", "continue"):
        raise ValueError(f"on_error must be 'raise' or 'continue', got {on_error!r}")
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")


def shard_filter(shard: tuple[int, int] | None, column: str = _SHARD_KEY) -> pl.Expr:
    """Rows of shard ``i`` of ``n``: the first 8 hex digits of ``column`` (a hash), modulo ``n``."""
    if shard is None:
        return pl.lit(True)
    i, n = shard
    if not (isinstance(n, int) and isinstance(i, int) and n >= 1 and 0 <= i < n):
        raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard!r}")
    return pl.col(column).str.slice(0, 8).str.to_integer(base=16) % n == i


@dataclasses.dataclass(frozen=True)
class NodeRun:
    """What one run of one node did (``counts``) and its status after the run (``None`` after a
    sharded run, which leaves other shards' entries to other processes)."""

    label: str | None
    counts: Counts
    status: Status | None
    asset_version: int | None = None  # the asset table's version this run made (None: unchanged)
    # With run(defer_asset=True): materialises the asset when called, returning its version.
    materialise: Callable[[], int | None] | None = dataclasses.field(default=None, repr=False)
    # With run(sliced=True): the entry keys this run recorded (their asset rows are written again).
    changed: pl.Series | None = dataclasses.field(default=None, repr=False)


# -- status ---------------------------------------------------------------------------------
def read_status(spec: NodeSpec, upstream: Status | None = None, *, settle: bool = True) -> Status:
    """Hash ``spec``'s input and look it up in the store; writes nothing.

    ``upstream``: the status of the node whose output is this node's input (when it is one),
    so its output is not read again and its packet keys give this node's source references.

    When the node's asset reflects its tables as they are now (a rerun with nothing new, or
    with edits), one join with the asset gives the outputs of the entries it holds, in place of
    reading the results and provenance tables and joining both (:func:`_found_in_asset`); only
    entries it lacks are looked up in the tables.

    When the asset also says its input was then the same as now, every entry done, the status
    is *settled* (:class:`~orca.status.Settled`, unless ``settle`` is False): its rows are read
    when first asked for. A downstream node whose asset says the same of its input -- made
    from its upstream chain's tables as they are, over the same first input -- is settled too
    without hashing or reading anything (:func:`_settled_downstream`): a rerun with nothing new
    reads the last node's rows for its output, not every node's.
    """
    if upstream is None and spec.upstream is not None:
        upstream = current_status(spec.upstream)
    if settle and upstream is not None and upstream.settled is not None:
        status = _settled_downstream(spec, upstream)
        if status is not None:
            return status
    frame = input_frame(spec, upstream)
    settling: concurrent.futures.Future[bool] = concurrent.futures.Future()
    pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="orca-read")
    try:
        # Reading and hashing both take a while: the store is read on the pool meanwhile. Its
        # first task only looks (versions, the asset's latest commit), so that the entry ids are
        # hashed only if the asset cannot tell them (see _found_unchanged), and the tables are
        # not read at all for a settled status.
        looked = pool.submit(_look, spec, frame.height, upstream)

        def read() -> _Stored | None:
            look = looked.result()
            # (waits for the digest only when the status may settle: else the tables are read
            # beside the hashing, as a run with new rows needs them)
            if settle and look.made is not None and look.made.rows == frame.height and settling.result():
                return None
            return _read_tables(spec, frame, look, upstream)

        tables = pool.submit(read)
        keyed = frame.with_columns(hash_inputs(spec.pod, frame, spec.input.path_columns))
        look = looked.result()
        values = _values_digest(spec, keyed) if look.made is not None and look.made.inputs is not None else None
        # The entries are the asset's (the status settles), or at least their values (session
        # 11's digest: the entry ids of a sample are then checked, see _current_asset).
        entries_same = values is not None and look.made.inputs == _with_node(spec, values)
        same = entries_same or (values is not None and look.made.inputs == values)
        settling.set_result(entries_same)
        if entries_same and settle:
            return _settled(spec, frame, keyed, look, upstream)
        stored = tables.result()
    finally:
        if not settling.done():  # (an error: nothing is read for it)
            settling.set_result(True)
        pool.shutdown(wait=True)
    entries, found, versions = _found(spec, keyed, stored, same, upstream)
    return Status(entries, found, versions, upstream=upstream)


def _found(spec: NodeSpec, keyed: pl.DataFrame, stored: _Stored, same: bool,
           upstream: Status | None) -> tuple[pl.DataFrame, pl.DataFrame, tuple[int | None, ...]]:
    """:func:`read_status`'s entries, found rows and versions for input ``keyed`` (with packet
    keys) from what was read (``stored``); ``same``: the asset says its input was the same."""
    if same and stored.asset is not None:
        found = _found_unchanged(spec, keyed, stored.asset)
        if found is not None:
            return keyed.with_columns(found[ENTRY_KEY]), found, stored.versions
    entries = _with_entry_keys(spec, keyed)
    keys = [*spec.input.tag_columns, *spec.input.system_tag_columns, *_entry_key(spec), KEY]
    found = _found_in_asset(spec, entries.select(keys), stored.asset) if stored.asset is not None else None
    if found is None:
        stored = stored if stored.asset is None else _read_tables(spec, upstream=upstream)
        return entries, _found_in_tables(spec, entries.select(keys), stored), stored.versions
    lacking = found[HIT].is_null()
    if lacking.any():  # entries the asset does not hold: they may be done too, the tables tell
        rest = _found_in_tables(spec, entries.select(keys).filter(lacking), _read_tables(spec, upstream=upstream))
        position = pl.Series(_POSITION, np.arange(found.height))
        found = pl.concat([found.filter(~lacking).with_columns(position.filter(~lacking)),
                           rest.with_columns(position.filter(lacking))]).sort(_POSITION).drop(_POSITION)
    return entries, found, stored.versions


def _settled(spec: NodeSpec, frame: pl.DataFrame, keyed: pl.DataFrame, look: _Look,
             upstream: Status | None) -> Status:
    """The settled status of input ``keyed``, which the asset's latest materialisation
    (``look``) says was then its input, every entry done: its rows are read from that
    materialisation when asked for (or, should it not hold them as expected, the tables)."""
    made = look.made
    root = (upstream.settled.root if upstream is not None and upstream.settled is not None
            else made.inputs if spec.upstream is None and _memoisable(spec) else None)
    tags = keyed.select(*spec.input.tag_columns, *spec.input.system_tag_columns)

    def found() -> pl.DataFrame:
        return _as_settled(spec, _found(spec, keyed, _read_tables(spec, frame, look, upstream), True, upstream)[1],
                           keyed.height)

    status: Status

    def entries() -> pl.DataFrame:
        return keyed.with_columns(status.found[ENTRY_KEY])

    status = Status(None, None, look.versions, upstream=upstream, settled=Settled(keyed.height, tags, made.digest, root),
                    later_entries=entries, later_found=found)
    return status


def _settled_downstream(spec: NodeSpec, upstream: Status) -> Status | None:
    """The status of a node fed by a settled one, settled too if its asset's latest
    materialisation says its input was then what it is now: made from the same first input of
    the chain (``Settled.root``) through the upstream nodes' tables as they are now (or only
    compacted since), every entry done, and from its own tables as they are now. Its input is
    then the upstream's rows, every one done, in input order, and its rows are taken from the
    asset when asked for (:func:`_found_by_tags`). None otherwise (the status is then read),
    and always when the node reads a path column: its packets hash files, which the tables do not
    hold."""
    settled = upstream.settled
    if settled.root is None or spec.provenance_table is None or not _memoisable(spec):
        return None
    if spec.input.path_columns & set(spec.pod.parameters):
        return None  # files the upstream wrote may have been edited since: the packets are hashed
    look = _look(spec, settled.rows, upstream)
    made = look.made
    if made is None or made.inputs is None or made.root != settled.root:
        return None

    def found() -> pl.DataFrame:
        by_tags = _found_by_tags(spec, settled.tags, look)
        if by_tags is not None:
            return by_tags
        return _as_settled(spec, read_status(spec, upstream, settle=False).found, settled.rows)

    status: Status

    def entries() -> pl.DataFrame:
        frame = input_frame(spec, upstream)
        return frame.with_columns(status.found[KEY], status.found[ENTRY_KEY])

    status = Status(None, None, look.versions, upstream=upstream,
                    settled=Settled(settled.rows, settled.tags, made.digest, settled.root),
                    later_entries=entries, later_found=found)
    return status


def _as_settled(spec: NodeSpec, found: pl.DataFrame, rows: int) -> pl.DataFrame:
    """``found``, read for a settled status other than from the asset version it was settled on
    (e.g. its rows share tags), if it agrees with it: ``rows`` entries, every one done. Else the
    tables changed since -- only while the status was held, and that version is gone by now
    (vacuumed): the status cannot be told as it was, and must be read again."""
    if found.height != rows or not found[DONE].all():
        raise StoreError(f"node {spec.label!r}: its tables changed since this status was read, and the "
                         f"asset version it was read from is no longer there: read it again (or run again)")
    return found


def _found_by_tags(spec: NodeSpec, tags: pl.DataFrame, look: _Look) -> pl.DataFrame | None:
    """A settled downstream node's found rows (:func:`_settled_downstream`): its input entries
    are the asset's rows, so each input row (``tags``: its tags and system tags, in input order)
    takes the asset row with its tags -- when no two rows share tags (else None: the status is
    then read). Keys come from the asset: the entry id, and the packet hash from the record id
    (the packet hash XOR the function hash). An asset read back in input order (one written
    whole from a status, as a first run's is) is taken as it is: checking that its tags are the
    input's, row for row, costs ~1 ms per million rows where the join cost ~0.15 s."""
    tag_columns, outputs = list(spec.input.tag_columns), list(spec.pod.output_keys)
    if not tag_columns:
        return None
    try:
        rows = look.rows(spec)
        if rows is None:
            return None
        schema = rows.collect_schema()
        expected = _output_types(spec)
        if any(schema.get(c) != expected.get(c) for c in outputs) or any(
                schema.get(t) != tags.schema[t] for t in tag_columns):
            return None
        asset = spec.store.collect(spec.asset_table, rows.select(*tag_columns, ENTRY_ID, RECORD_ID, *outputs))
    except Exception:  # noqa: BLE001 - a shortcut: an asset that cannot be read leaves it to the tables
        return None
    if asset.height != tags.height:
        return None
    wanted = tags.select(tag_columns)
    if asset.select(tag_columns).equals(wanted) and wanted.n_unique() == wanted.height:
        joined = asset  # (as written from a status in input order, and read back so: no join needed)
    else:
        on = _tag_key(wanted)
        joined = on.to_frame().join(asset.select(_tag_key(asset.select(tag_columns)), ENTRY_ID, RECORD_ID, *outputs),
                                    on=_TAG_KEY, how="left", maintain_order="left")
        if joined.height != tags.height or joined[ENTRY_ID].null_count():
            return None
    packets = hash_keys(joined[RECORD_ID]) ^ int(spec.pod.identity.hash, 16)
    return tags.with_columns(hash_keys(joined[ENTRY_ID]).alias(ENTRY_KEY), packets.alias(KEY),
                             *joined.select(outputs).get_columns(), pl.lit(True).alias(HIT), pl.lit(True).alias(DONE))


_TAG_KEY = "__tag_key"
_REFERENCES = "__references"  # (a source's rows' references, made for the rows provenance records)


def _tag_key(tags: pl.DataFrame) -> pl.Series:
    """A join key for a row's tags: the one tag column itself, or a 64-bit hash of several (a
    collision makes two rows of the asset meet one input row, which the caller detects)."""
    return tags.to_series().alias(_TAG_KEY) if tags.width == 1 else _tags_hash(tags).alias(_TAG_KEY)


def _tags_hash(tags: pl.DataFrame) -> pl.Series:
    """A 64-bit Polars hash of each row's tags, for joins within one process (not stable)."""
    return tags.select(pl.struct(tags.columns).hash(_SEEDS[2])).to_series()


def _output_types(spec: NodeSpec) -> pl.Schema:
    """The Polars types of the pod's outputs."""
    return pl.from_arrow(spec.pod.output_schema.empty_table()).schema


def _found_in_tables(spec: NodeSpec, entries: pl.DataFrame, stored: _Stored) -> pl.DataFrame:
    """``entries`` (tags, system tags, keys) with each one's outputs, ``__hit`` and ``__done``,
    from the recorded entry keys and the results index of ``stored``."""
    found = attach_results(spec, entries, list(spec.pod.output_keys), stored.index)
    if spec.provenance_table is None:  # a cached pod alone: an entry is done when its packet is
        return found.with_columns(pl.col(HIT).is_not_null().alias(DONE))
    recorded, recorded_mask = stored.recorded, np.zeros(found.height, bool)
    if recorded is not None and recorded.len():
        # A semi-join for the positions of recorded entries: about half the cost of a left join.
        rows = found.select(ENTRY_KEY).with_row_index(_POSITION).join(
            _narrowed(recorded.to_frame(), ENTRY_KEY, found[ENTRY_KEY]), on=ENTRY_KEY, how="semi")[_POSITION]
        recorded_mask[rows.to_numpy()] = True
    # Done = recorded *and* a live result: an entry whose result was invalidated (e.g. through
    # another entry with the same packet) is novel again.
    return found.with_columns((pl.Series(recorded_mask) & pl.col(HIT).is_not_null()).alias(DONE))


def _found_in_asset(spec: NodeSpec, entries: pl.DataFrame, asset: pl.DataFrame) -> pl.DataFrame | None:
    """``entries`` as :func:`read_status` finds them -- each one's outputs, ``__hit`` and
    ``__done`` -- taken from the node's asset (entry keys and outputs, see :func:`_read_tables`);
    null ``__hit`` and ``__done`` for an entry it lacks; None if it holds an entry twice (not
    orca's doing: then the tables are read).

    Exact because the asset holds the done entries of a status read from the node's tables at
    versions that :func:`_read_tables` checked are still theirs (or only compacted since): an
    entry in it is recorded and its result live, with those outputs, now as then. An entry not
    in it may be done too (recorded by an earlier run with another input), so it is not judged.
    """
    left = entries.select(ENTRY_KEY).with_row_index(_POSITION)
    joined = left.join(_narrowed(asset, ENTRY_KEY, entries[ENTRY_KEY]), on=ENTRY_KEY, how="left",
                       maintain_order="left")
    if joined.height != entries.height:
        return None
    return entries.with_columns(*joined.select(*spec.pod.output_keys, HIT).get_columns(),
                                joined[HIT].alias(DONE))


def _entry_key(spec: NodeSpec) -> list[str]:
    return [ENTRY_KEY] if spec.provenance_table is not None else []


def _entries(spec: NodeSpec, upstream: Status | None, frame: pl.DataFrame | None = None) -> pl.DataFrame:
    """The input rows with system columns, packet keys and (for a node) entry keys; ``frame``:
    the input rows (as :func:`input_frame` makes them) when already read, e.g. one slice."""
    frame = input_frame(spec, upstream) if frame is None else frame
    return _with_entry_keys(spec, frame.with_columns(hash_inputs(spec.pod, frame, spec.input.path_columns)))


def _with_entry_keys(spec: NodeSpec, keyed: pl.DataFrame) -> pl.DataFrame:
    """``keyed`` (input rows with packet keys) with entry keys, for a node."""
    return keyed if spec.provenance_table is None else keyed.with_columns(_entry_keys(spec, keyed))


def input_frame(spec: NodeSpec, upstream: Status | None) -> pl.DataFrame:
    """The input with system columns. When it is another node's output and that node's status
    is known, the frame is that status's output, with ``__upstream_key`` (the upstream packet
    key of each row) instead of the ``__source__`` columns: provenance makes the references
    only for the rows it records (building them for every row cost ~0.15 s per million)."""
    up = spec.upstream
    if up is not None:
        status = upstream if upstream is not None else current_status(up)
        return output_frame(up, status).rename({KEY: UPSTREAM_KEY})
    return input_plan(spec).collect()


def input_plan(spec: NodeSpec) -> pl.LazyFrame:
    """The query :func:`input_frame` collects for a node not fed by another node: tags, system
    tags and the packet columns the function reads, with their ``__source__`` references --
    unless the input is a source itself, whose references provenance makes from the record ids
    for the rows it records (:func:`_source_of`; for every row they cost ~0.05 s per million
    each time the input was read). A run in slices collects a source's rows a slice at a time
    through it (:mod:`orca.slices`)."""
    reads = [p for p in spec.pod.parameters if p in spec.input.packet_columns]
    sources = [c for c in (source_column(p) for p in spec.pod.parameters) if c in spec.input.full_schema.names]
    sources = [] if _source_of(spec) is not None else sources
    return spec.input.lazy(include_system=True).select(
        *spec.input.tag_columns, *spec.input.system_tag_columns, *dict.fromkeys([*reads, *sources]))


def _source_of(spec: NodeSpec) -> str | None:
    """The source id of ``spec``'s input when it is a source itself (not a stream made from one)."""
    source_id = getattr(spec.input, "source_id", None)
    return source_id if source_id is not None and spec.input.producer is spec.input else None


def hash_inputs(pod: FunctionPod, frame: pl.DataFrame, path_columns: frozenset[str]) -> pl.Series:
    """Input packet hash per row (only the columns the function reads) as a ``UInt128`` key;
    its 16 stored bytes are made only for the rows written (:func:`orca.hashing.keys_binary`)."""
    return hash_packet_keys(input_packets(pod, frame, path_columns)).alias(KEY)


def _entry_keys(spec: NodeSpec, frame: pl.DataFrame) -> pl.Series:
    """The entry id of each row, as a ``UInt128`` key (see ``docs/pipelines.md``).

    The packet hash of the row ``{tags..., system tags..., __packet_hash: the input packet
    hash as 16 bytes}`` XOR the node identity: one hash per row over the columns that vary,
    made distinct per node by a bijection.
    """
    system = sorted(spec.input.system_tag_columns)
    digests = key_digests(frame[KEY])
    packet = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), frame.height, [None, pa.py_buffer(digests.tobytes())])
    id_table = frame.select(*spec.input.tag_columns, *system).to_arrow()
    # (no tags and no system tags -- a stream built by hand: Polars selects zero columns as zero rows)
    id_table = id_table.append_column(PACKET_HASH, packet) if id_table.num_columns else pa.table({PACKET_HASH: packet})
    node = hash_keys(pl.Series([spec.identity]))[0]
    return (hash_packet_keys(id_table) ^ node).alias(ENTRY_KEY)


@dataclasses.dataclass(frozen=True)
class _Stored:
    """What :func:`read_status` reads from the store: the versions of the node's tables (read
    first: what is read holds at least those versions), and either the node's asset (entry keys
    and outputs, when it reflects those versions) or the recorded entry keys and results index."""

    versions: tuple[int | None, ...]
    recorded: pl.Series | None = None
    index: pl.DataFrame | None = None
    asset: pl.DataFrame | None = None


@dataclasses.dataclass(frozen=True)
class _Look:
    """The first, quick part of reading the store for :func:`read_status`: the versions of the
    node's tables, and the asset's latest materialisation (what it was made from, and its
    version) if it may stand in for the tables at those versions (see :func:`_current_asset`).
    Its rows are read by that version (:meth:`rows`), however late: a settled status reads them
    when asked for, and by then another writer may have committed to the asset."""

    versions: tuple[int | None, ...]
    made: Reflects | None = None
    asset_version: int | None = None

    def rows(self, spec: NodeSpec) -> pl.LazyFrame | None:
        """The rows of the asset's materialisation looked at (None: none, or no longer readable)."""
        return None if self.asset_version is None else spec.store.scan_version(spec.asset_table,
                                                                               version=self.asset_version)


def _look(spec: NodeSpec, rows: int | None = None, upstream: Status | None = None) -> _Look:
    """``rows``: the input's height, when the node's asset may stand in for its tables (see
    :func:`_current_asset`); ``upstream``: as for :func:`read_status` (see :func:`_versions`)."""
    versions = _versions(spec, upstream)
    if rows is None or spec.asset_table is None or spec.provenance_table is None or rows < _ASSET_MIN_ROWS:
        return _Look(versions)
    try:
        latest = assets.reflected(spec.store, spec.asset_table)
    except Exception:  # noqa: BLE001 - a shortcut: an asset that cannot be read leaves it to the tables
        return _Look(versions)
    if latest is None:
        return _Look(versions)
    made = Reflects.parse(latest[1])
    if made is None or not made.exact or made.ids != table_ids(spec) or not _only_compacted(spec, made.versions,
                                                                                              versions):
        return _Look(versions)
    return _Look(versions, made, latest[0])


def _versions(spec: NodeSpec, upstream: Status | None) -> tuple[int | None, ...]:
    """The versions a status of ``spec`` reflects: its own tables' now and, when its input is
    another node's output, those ``upstream`` (the status that output was taken from) reflects
    -- what its input was made from, even if another process has committed since."""
    own = (spec.store.version(spec.results_table),
           None if spec.provenance_table is None else spec.store.version(spec.provenance_table))
    if spec.upstream is None:
        return own
    return own + (upstream.versions if upstream is not None else table_versions(spec.upstream))


def _read_tables(spec: NodeSpec, frame: pl.DataFrame | None = None, look: _Look | None = None,
                 upstream: Status | None = None) -> _Stored:
    """The store's side of :func:`read_status`; ``frame``: the input rows, when the node's
    asset may be read instead of its tables (see :func:`_current_asset`); ``look``: what
    :func:`_look` found, if called already; ``upstream``: as for :func:`read_status`."""
    look = look if look is not None else _look(spec, None if frame is None else frame.height, upstream)
    asset = _current_asset(spec, look, frame) if frame is not None and look.asset_version is not None else None
    if asset is not None:
        return _Stored(look.versions, asset=asset)
    recorded = recorded_entries(spec) if spec.provenance_table is not None else None
    return _Stored(look.versions, recorded, results_index(spec, list(spec.pod.output_keys)))


_SAMPLE = 16  # input rows whose entries must be in the asset before it is used
# Smaller inputs read the tables: looking at the asset costs ~15-35 ms (its latest commit read
# twice, its rows, a sample hashed), which only a large input's joins repay.
_ASSET_MIN_ROWS = 50_000


def _current_asset(spec: NodeSpec, look: _Look, frame: pl.DataFrame) -> pl.DataFrame | None:
    """The node's asset as entry keys, outputs and ``__hit`` (and, when its latest commit
    digested its input, ``__packet_tag_key``: see :func:`_found_unchanged`), if it may stand in
    for the node's tables for input ``frame``: its latest materialisation is exact and was made
    from the tables at the versions ``look`` read (or only compactions followed; see
    :func:`_look`), its outputs have the pod's types, and it likely holds the input's entries --
    as many rows, and the entries of a few input rows spread over it (hashed here: a run with new
    rows then reads the tables beside its hashing, as before, instead of after it) -- and the
    input is large enough to repay the look (``_ASSET_MIN_ROWS``). Else None."""
    try:
        return _asset_standing_in(spec, look, frame)
    except Exception:  # noqa: BLE001 - a shortcut: an asset that cannot be read leaves it to the tables
        return None


def _asset_standing_in(spec: NodeSpec, look: _Look, frame: pl.DataFrame) -> pl.DataFrame | None:
    """:func:`_current_asset`; may raise (the store's errors)."""
    rows, outputs, tags = look.rows(spec), list(spec.pod.output_keys), list(spec.input.tag_columns)
    if rows is None:
        return None
    expected, schema = _output_types(spec), rows.collect_schema()
    if any(schema.get(c) is None or schema.get(c) != expected.get(c) for c in outputs):
        return None
    # (tags of other types than the input's, e.g. as Delta stores them, would not match: no key)
    keyed = look.made.inputs is not None and all(schema.get(t) == frame.schema[t] for t in tags)
    asset = spec.store.collect(spec.asset_table, rows.select(
        ENTRY_ID, *outputs, pl.lit(True).alias(HIT), *([*tags, RECORD_ID] if keyed else [])))
    if asset.height < frame.height or frame.height == 0:
        return None
    asset = asset.with_columns(hash_keys(asset[ENTRY_ID]).alias(ENTRY_KEY)).drop(ENTRY_ID)
    if keyed:  # (the record id is the packet hash XOR the function hash)
        packets = hash_keys(asset[RECORD_ID]) ^ int(spec.pod.identity.hash, 16)
        asset = asset.with_columns(_packet_tag_keys(asset.select(tags), packets)).drop(*tags, RECORD_ID)
    spread = np.unique(np.linspace(0, frame.height - 1, min(frame.height, _SAMPLE)).astype(np.int64))
    sample = _entries(spec, None, frame.select(pl.all().gather(spread)))[ENTRY_KEY].unique()
    # (the asset's keys probed against the sample's: a set of 1M keys to probe cost ~0.1 s)
    held = asset[ENTRY_KEY].filter(asset[ENTRY_KEY].is_in(sample.implode())).unique()
    return asset if held.len() == sample.len() else None


_PACKET_TAG_KEY = "__packet_tag_key"
# Seeds of Polars' row hashes for the input digest (see inputs_digest) and the packet-tag keys.
_SEEDS = (0x6F726361, 0x696E7075, 0x7461676B)


def inputs_digest(spec: NodeSpec, entries: pl.DataFrame) -> str:
    """A digest of the node's input entries -- the multiset of tags, system tags and input packet
    hash (its ``UInt128`` key) of each row of ``entries``, the names of those columns, and the
    node's identity (what its entry ids are made of beside the values: a source given another
    id delivers the same values as other entries) -- kept in the asset's commit when every entry
    is done (:class:`Reflects`), so that a later run can tell its entries are the same without
    hashing entry ids (:func:`_found_unchanged`), or settle its status (:func:`_settled`).

    Made of Polars' row hashes (two 64-bit hashes a row, ~0.03 s per million rows, against
    ~0.2 s for the entry ids), which Polars keeps stable only within one version: the version is
    part of the digest, and a digest made by another one never matches (the run then hashes
    entry ids, as without it)."""
    return _with_node(spec, _values_digest(spec, entries))


def _values_digest(spec: NodeSpec, entries: pl.DataFrame) -> str:
    """The multiset part of :func:`inputs_digest` -- what session 11's assets recorded alone,
    which tells the values the same but not the entries (their ids are the node's too): such a
    digest is trusted only where the entry ids of a sample are checked (:func:`_current_asset`)."""
    rows = entries.select(*spec.input.tag_columns, *sorted(spec.input.system_tag_columns), KEY)
    words = [rows.hash_rows(seed=seed).to_numpy() for seed in _SEEDS[:2]]
    return f"polars {pl.__version__}: {KeySet().add_words(*words).digest}"


def _with_node(spec: NodeSpec, values: str) -> str:
    """:func:`inputs_digest` from its multiset part (:func:`_values_digest`)."""
    names = json.dumps([spec.identity, list(spec.input.tag_columns), sorted(spec.input.system_tag_columns)])
    version, _, digest = values.partition(": ")
    return f"{version}, node: {hash_bytes(f'{names}{digest}'.encode())}"


def _packet_tag_keys(tags: pl.DataFrame, packets: pl.Series) -> pl.Series:
    """Per row, the packet hash key XOR a 64-bit Polars hash of the tags: a join key for
    (tags, packet) in one ``UInt128`` column (joining on the columns themselves cost ~2x).
    Made within one process for both sides of a join, so Polars' hash need not be stable."""
    if not tags.width:
        return packets.alias(_PACKET_TAG_KEY)
    return (packets ^ _tags_hash(tags).cast(pl.UInt128)).alias(_PACKET_TAG_KEY)


def _found_unchanged(spec: NodeSpec, keyed: pl.DataFrame, asset: pl.DataFrame) -> pl.DataFrame | None:
    """:func:`read_status`'s ``found`` for input ``keyed`` (the input with its packet hashes)
    taken from the node's asset without hashing entry ids, when the asset's latest commit says
    its input was then the same multiset of entries as now (:func:`inputs_digest`), every one of
    them done. None if the asset has no packet-tag keys or any row does not find exactly one
    asset row (then entry ids are hashed, as without the digest).

    The asset then holds exactly the input's entries, and an entry is known by its tags and
    packet unless two share them (other system tags: their rows would meet two asset rows), so
    each row takes the entry id and outputs of the asset row with its tags and packet hash. The
    outputs are right whatever the match: they are its packet's live result (the asset stands in
    for the node's tables, see :func:`_current_asset`)."""
    if _PACKET_TAG_KEY not in asset.columns:
        return None
    tags = list(spec.input.tag_columns)
    left = _packet_tag_keys(keyed.select(tags), keyed[KEY]).to_frame()
    joined = left.join(asset, on=_PACKET_TAG_KEY, how="left", maintain_order="left")
    if joined.height != keyed.height or joined[HIT].null_count():
        return None
    # (selected with the packet hash: tags and system tags alone may be no column, which Polars
    # selects as no rows either)
    found = keyed.select(*tags, *spec.input.system_tag_columns, KEY)
    return found.insert_column(found.width - 1, joined[ENTRY_KEY]).with_columns(
        *joined.select(*spec.pod.output_keys, HIT).get_columns(), joined[HIT].alias(DONE))


def _memoisable(spec: NodeSpec) -> bool:
    """Whether ``spec``'s input is a source or a chain of nodes back to one (no operator between)."""
    while spec.upstream is not None:
        spec = spec.upstream
    return not isinstance(spec.input.producer, NodeSpec) and getattr(spec.input.producer, "source_id", None) is not None


def table_versions(spec: NodeSpec) -> tuple[int | None, ...]:
    """Versions of the tables a node's status depends on (its own and its upstream nodes')."""
    own = (spec.store.version(spec.results_table),
           None if spec.provenance_table is None else spec.store.version(spec.provenance_table))
    return own if spec.upstream is None else own + table_versions(spec.upstream)


def _tables_of(spec: NodeSpec) -> tuple[tuple[Store, str | None], ...]:
    """The tables (each in its node's store) whose versions :func:`table_versions` gives, in its
    order."""
    own = ((spec.store, spec.results_table), (spec.store, spec.provenance_table))
    return own if spec.upstream is None else own + _tables_of(spec.upstream)


def _only_compacted(spec: NodeSpec, then: tuple[int | None, ...], now: tuple[int | None, ...]) -> bool:
    """Whether every table of ``spec`` holds the same rows at versions ``then`` and ``now``: only
    compactions were committed between them, whichever is later (a status's upstream versions
    are its upstream status's, which may be older than those an asset was made from)."""
    return len(then) == len(now) and all(
        a == b or (name is not None and isinstance(a, int) and isinstance(b, int)
                   and store.unchanged_since(name, min(a, b), until=max(a, b)))
        for (store, name), a, b in zip(_tables_of(spec), then, now, strict=True))


def _unchanged_after(spec: NodeSpec, then: tuple[int | None, ...], now: tuple[int | None, ...]) -> bool:
    """Whether every table of ``spec`` is at version ``then`` still, or had only compactions
    committed after it (e.g. an asset another process made from later versions than ``now``)."""
    return len(then) == len(now) and all(
        a == b or (name is not None and isinstance(a, int) and store.unchanged_since(name, a))
        for (store, name), a, b in zip(_tables_of(spec), then, now, strict=True))


def recorded_entries(spec: NodeSpec) -> pl.Series | None:
    """The entry keys of live provenance rows (None: no table). Not deduplicated, as they are
    only joined against: making 1M ids distinct costs more than reading them."""
    prov = spec.store.scan(spec.provenance_table, include_invalidated=True)
    if prov is None:
        return None
    ids = spec.store.collect(spec.provenance_table, prov.filter(pl.col(INVALIDATED_AT).is_null()).select(ENTRY_ID))
    ids = ids.to_series()
    return hash_keys(ids).alias(ENTRY_KEY)


def results_index(spec: NodeSpec, columns: list[str]) -> pl.DataFrame | None:
    """The live result rows' ``columns``, ``__hit`` and ``__hash_key`` (None: no table yet)."""
    raw = spec.store.scan(spec.results_table, include_invalidated=True)
    if raw is None:
        return None
    results = spec.store.collect(spec.results_table, raw.filter(pl.col(INVALIDATED_AT).is_null()).select(
        PACKET_HASH, *columns, pl.lit(True).alias(HIT)))
    return results.with_columns(hash_keys(results[PACKET_HASH])).drop(PACKET_HASH)


def attach_results(spec: NodeSpec, entries: pl.DataFrame, columns: list[str],
                   index: pl.DataFrame | None | Literal["read"] = "read") -> pl.DataFrame:
    """``entries`` plus ``columns`` of each one's live result and ``__hit`` (null: none), in order.

    One join on the packet hash as a ``UInt128`` (exact, and about twice as fast as joining
    32-character strings) with ``index`` (:func:`results_index`, read now by default). An entry
    whose packet has several live rows (concurrent writers) takes the row the store's dedup
    rule keeps.
    """
    results = results_index(spec, columns) if isinstance(index, str) else index
    if results is None:
        types = _output_types(spec)
        return entries.with_columns(*(pl.lit(None, types[c]).alias(c) for c in columns),
                                    pl.lit(None, pl.Boolean).alias(HIT))
    # Only the keys go through the join; its outputs are then laid beside the entries' own
    # columns, which are shared, not copied by the join.
    left = entries.select(KEY).with_row_index(_POSITION)
    joined = left.join(_narrowed(results, KEY, entries[KEY]), on=KEY, how="left", maintain_order="left")
    if joined.height != entries.height:  # some packet has several live rows: apply the dedup rule
        several = joined[_POSITION].is_duplicated()
        which = left.join(joined.filter(several).select(_POSITION).unique(), on=_POSITION)
        live = spec.store.lookup(spec.results_table, keys_binary(which[KEY]))
        live = live.select(hash_keys(live[PACKET_HASH]), *columns, pl.lit(True).alias(HIT))
        fixed = which.join(live, on=KEY, how="left")
        joined = pl.concat([joined.filter(~several), fixed.select(joined.columns)], how="vertical_relaxed")
        joined = joined.sort(_POSITION)
    return entries.with_columns(joined.select(*columns, HIT).get_columns())


def _narrowed(stored: pl.DataFrame, column: str, wanted: pl.Series) -> pl.DataFrame:
    """The ``stored`` rows whose ``column`` is in ``wanted``, when the store holds many more rows
    than the input: probing a set of the input's keys costs ~5 ns per stored row, a join that
    hashes every stored row ~130 ns (a 10k-row input against 3M stored rows: 15 ms vs 0.4 s)."""
    if stored.height <= 4 * wanted.len():
        return stored
    return stored.filter(pl.col(column).is_in(wanted.implode()))


def failed_packets(spec: NodeSpec) -> pl.Series:
    """Keys of the packets this function has failed on (any run); reads ``failures``."""
    failures = spec.store.scan(FAILURES)
    if failures is None:
        return pl.Series(KEY, [], dtype=pl.UInt128)
    hashes = spec.store.collect(FAILURES, failures.filter(pl.col("function_hash") == spec.pod.identity.hash).select(
        "packet_hash").unique()).to_series()
    return hash_keys(hashes).alias(KEY)


def output_frame(spec: NodeSpec, status: Status) -> pl.DataFrame:
    """The node's output: tags, system tags, outputs and ``__hash_key`` of the done entries, in
    input order (the output stream derives ``__source__`` references from the key)."""
    input_ = spec.input
    return status.found.filter(pl.col(DONE)).select(
        *input_.tag_columns, *input_.system_tag_columns, *spec.pod.output_keys, KEY)


# The latest status of each node seen in this process, and the table versions it reflects.
_latest: weakref.WeakKeyDictionary[NodeSpec, Status] = weakref.WeakKeyDictionary()


def current_status(spec: NodeSpec) -> Status:
    """The node's status now: the latest one this process saw while the node's tables (and its
    upstream nodes') are still at the versions it reflects, else read afresh.

    Within a pipeline run, downstream nodes and the user read a node's output right after it
    ran: hashing the input again for that would be wasted. A commit by anyone (another process,
    an invalidation) moves a version, and the status is read again -- unless every commit since
    was a compaction, which rewrites files but not rows (e.g. the run's own upkeep).
    """
    known = _latest.get(spec)
    # Reused only when every table the status depends on is known: a node fed through an
    # operator (a join or filter of other nodes' outputs) is read afresh.
    if known is not None and _memoisable(spec):
        now = table_versions(spec)
        if now == known.versions:
            return known
        if _only_compacted(spec, known.versions, now):  # e.g. the run's upkeep compacted the tables
            _latest[spec] = known = known.replace(versions=now)
            return known
    status = read_status(spec)
    _latest[spec] = status
    return status


# -- slices (bounded memory, see orca.slices) ------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ResultIndex:
    """What a run in slices reads of a results table once, instead of once per slice, shared by
    every node of the run whose function writes that table: the packet keys with a live result
    (``stored``, as ``UInt128``, 16 bytes per stored row) at ``version``, and the packets the
    run stored since (``fresh``, :meth:`with_run`), so a packet met again in a later slice, or
    by another node of the same function, is found, not computed twice.

    ``values``: when the outputs are narrow (fixed-width, :data:`NARROW_OUTPUTS` bytes a row or
    fewer), the stored and fresh results' outputs too (:func:`results_index`'s columns, one row
    per packet), so a slice reads nothing; else None, and each slice reads its stored packets'
    outputs (a scan of the results table per slice).
    """

    stored: pl.Series
    version: int | None
    fresh: pl.Series = dataclasses.field(default_factory=lambda: pl.Series(KEY, [], pl.UInt128))
    values: pl.DataFrame | None = None

    def has_result(self, keys: pl.Series) -> pl.Series:
        """Per key, whether the index holds a live result for it."""
        return member(keys, self.stored) | member(keys, self.fresh)

    def with_run(self, added: pl.DataFrame) -> ResultIndex:
        """This index plus the packets a slice's run stored (``added``: rows of its status after
        the run, with ``__hash_key`` and the outputs)."""
        added = added.unique(KEY, keep="first")  # (a packet repeated in a slice is one result)
        values = self.values
        if values is not None:
            values = pl.concat([values, added.select(values.columns)], rechunk=False)
        return ResultIndex(self.stored, self.version, pl.concat([self.fresh, added[KEY]], rechunk=False), values)


def read_results(spec: NodeSpec) -> ResultIndex:
    """The :class:`ResultIndex` of ``spec``'s results table as stored now."""
    version = spec.store.version(spec.results_table)
    outputs = list(spec.pod.output_keys)
    narrow = sum(_width(spec.pod.output_schema.field(c).type) for c in outputs) <= NARROW_OUTPUTS
    values = results_index(spec, outputs if narrow else [])
    if values is None:
        types = _output_types(spec)
        values = pl.DataFrame(schema={**{c: types[c] for c in outputs}, HIT: pl.Boolean, KEY: pl.UInt128})
    return ResultIndex(values[KEY], version, values=values.select(*outputs, HIT, KEY) if narrow else None)


NARROW_OUTPUTS = 16  # bytes of outputs per row a ResultIndex holds beside each key


def _width(dtype: pa.DataType) -> float:
    """Bytes a value of ``dtype`` takes in memory; infinite when it varies (text, lists...)."""
    try:
        return max(dtype.bit_width // 8, 1)
    except ValueError:
        return math.inf


@dataclasses.dataclass(frozen=True)
class KeyIndex:
    """What a run in slices knows of one node's tables from the run's start: its results table's
    :class:`ResultIndex` (shared with other nodes of the same function), the entry keys with a
    live provenance row (``recorded``), and ``versions``, the tables' versions before they were
    read. Each slice's status reflects them, so a commit by anyone else since is seen (:func:`run`
    then reads the slice's results afresh). ``own``: the packets this node computed in earlier
    slices (their entries count as computed, as in a run taken whole)."""

    results: ResultIndex
    recorded: pl.Series | None
    versions: tuple[int | None, ...]
    own: pl.Series = dataclasses.field(default_factory=lambda: pl.Series(KEY, [], pl.UInt128))


def read_index(spec: NodeSpec, results: ResultIndex | None = None) -> KeyIndex:
    """The :class:`KeyIndex` of ``spec``'s tables as stored now; ``results``: its results
    table's index, when another node of the run read it already."""
    versions = table_versions(spec)
    results = results if results is not None else read_results(spec)
    versions = (results.version, *versions[1:])  # (what the results index reflects)
    recorded = None
    if spec.provenance_table is not None:
        recorded = recorded_entries(spec)
        recorded = pl.Series(ENTRY_KEY, [], pl.UInt128) if recorded is None else recorded
    return KeyIndex(results, recorded, versions)


def slice_status(spec: NodeSpec, frame: pl.DataFrame, index: KeyIndex) -> Status:
    """:func:`read_status` of one slice of the input (``frame``, as :func:`input_frame` makes
    it), probing ``index`` instead of reading the node's tables whole: only the slice's packets
    that the index holds are read (their output values, unless the index holds them), so memory
    follows the slice.

    An entry is done, as in a run taken whole, when it was recorded and its packet had a live
    result when the run started: an entry whose packet only this run stored (e.g. recomputed
    after an invalidation) is recorded again, so its asset row is written again."""
    entries = _entries(spec, None, frame)
    outputs = list(spec.pod.output_keys)
    keys = [*spec.input.tag_columns, *spec.input.system_tag_columns, *_entry_key(spec), KEY]
    results = index.results
    if results.values is not None:
        stored = _narrowed(results.values, KEY, entries[KEY])
    else:
        stored = _results_of(spec, entries[KEY].filter(results.has_result(entries[KEY])), outputs)
    found = attach_results(spec, entries.select(keys), outputs, stored)
    if spec.provenance_table is None:
        return Status(entries, found.with_columns(pl.col(HIT).is_not_null().alias(DONE)), index.versions)
    # (its packet found, and not among those this run stored: then it was stored at the start --
    # a probe of this run's few new packets, not of every stored one)
    done = member(found[ENTRY_KEY], index.recorded) & found[HIT].is_not_null() & ~member(found[KEY], results.fresh)
    return Status(entries, found.with_columns(done.alias(DONE)), index.versions)


def _results_of(spec: NodeSpec, keys: pl.Series, columns: list[str]) -> pl.DataFrame | None:
    """:func:`results_index` narrowed to the packets ``keys`` (one semi-join scan; the live row
    of each by the dedup rule). None when no key is given: the slice has no stored packet."""
    if keys.len() == 0:
        return None
    live = spec.store.lookup(spec.results_table, keys_binary(keys.unique()), columns)
    if live.height == 0:
        return None
    return live.select(hash_keys(live[PACKET_HASH]), *columns, pl.lit(True).alias(HIT))


# -- running --------------------------------------------------------------------------------
def run(spec: NodeSpec, options: RunOptions, *, status: Status | None = None, upstream: Status | None = None,
        skip: pl.Series | None = None, progress: Callable[[Counts], None] | None = None,
        total: Callable[[int, int], None] | None = None, defer_asset: bool = False, sliced: bool = False) -> NodeRun:
    """Bring ``spec`` up to date (see the module docs); returns what the run did.

    ``status``: read already (two-phase iteration serves its done entries first); else read now,
    with ``upstream`` as for :func:`read_status`. ``skip``: a mask over the entries, those left
    alone. ``progress`` is called with the running counts as work completes; ``total`` once with
    (entries in this run, entries already done). ``defer_asset``: leave step 7 to the caller
    (``NodeRun.materialise``), e.g. to write it beside the next node's computing. ``sliced``:
    ``status`` is one slice's (:func:`slice_status`); the status after the run is read for the
    slice alone and not remembered as the node's, and the asset is left to the caller, who
    stages each slice's rows (``NodeRun.changed`` names the entries to write again).
    """
    status = status if status is not None else read_status(spec, upstream)
    if status.settled is not None:  # every entry done: its rows are not read for nothing
        novel = pl.DataFrame()
    else:
        novel = status.entries.with_columns(status.found[HIT], status.found[DONE]).with_row_index(INPUT_ROW)
        novel = novel.filter(~pl.col(DONE) if skip is None else ~pl.col(DONE) & ~skip)
    if options.shard is not None and novel.height:
        # Shard by tags + system tags, which pods pass through unchanged: a row falls in the
        # same shard in every node of a chain, so each shard finds its upstream rows done.
        key = hash_packets(novel.select(*spec.input.tag_columns, *spec.input.system_tag_columns).to_arrow())
        novel = novel.with_columns(pl.Series(_SHARD_KEY, key)).filter(shard_filter(options.shard)).drop(_SHARD_KEY)
    if novel.height:
        check_tables(spec)  # before any work: a conflict would otherwise surface at the first commit
    work = _Work(spec, options, Counts(cached=status.done))
    if total is not None:
        total(work.counts.cached + novel.height, work.counts.cached)
    on_step = (lambda: progress(work.counts)) if progress else None
    settled: Status | None = None
    if options.claim and novel.height and spec.claims_table is not None:
        _claimed(spec, options, status, novel, work, on_step)
        # A chunk a past wave of workers marked done is skipped by the claims; whatever is still
        # novel now (and did not fail) is computed here, so no run ever leaves work undone.
        left = read_status(spec, upstream)
        rest = left.entries.with_columns(left.found[HIT], left.found[DONE]).with_row_index(INPUT_ROW)
        rest = rest.filter(~pl.col(DONE) & ~left.found[KEY].is_in(failed_packets(spec).implode()))
        drive(spec.store, work.steps(rest), on_step=on_step)
        settled = left if rest.height == 0 else None  # (then it is already the status after the run)
    else:
        drive(spec.store, work.steps(novel), on_step=on_step, wait=False)
    # The status after the run if nobody else wrote the node's tables (checked below), made while
    # the last commits are under way: its outputs are this run's, from memory.
    try:
        mine = _refreshed_from_run(spec, status, work) if novel.height and not (options.shard or options.claim) else None
    finally:
        spec.store.flush()
    own = True  # whether the status after the run is the one before plus what this run did
    # (read before the check below: a commit by another writer after it is then not counted in)
    now = _versions(spec, status.upstream) if novel.height else status.versions
    if novel.height == 0:  # nothing changed: the status already holds the output (and its versions)
        after: Status | None = status
    elif options.shard is None and not options.claim and _only_own_commits(spec, status.versions):
        # Nobody else wrote the node's tables: the status after the run is the one before plus
        # what this run did, and reflects the tables as they were at ``now``.
        after = mine or _refreshed(spec, status, work, narrow=sliced)
        after = after.replace(versions=now)
    elif sliced:  # other writers: the slice's novel entries take their results as now stored
        after, own = _refreshed(spec, status, work, narrow=True), False
    elif options.shard is None:  # other writers (claims, another process): read what is stored
        after, own = settled if options.claim and settled is not None else read_status(spec, upstream), False
    else:
        after, own = None, False
    if sliced:  # a slice's status is not the node's: never served as its output
        return NodeRun(spec.label, work.counts, after, changed=_changed(after, work.recorded))
    if after is not None:
        _latest[spec] = after
    materialising = None
    if spec.asset_table is not None:  # 7. materialise: a sharded run writes what all shards did so far
        asset_status = after if after is not None else read_status(spec, upstream)
        materialising = functools.partial(_materialise, spec, asset_status, tuple(work.recorded), options.run_id,
                                          status.versions if own else None)
    if materialising is not None and not defer_asset:
        return NodeRun(spec.label, work.counts, after, materialising())
    return NodeRun(spec.label, work.counts, after, None, materialising)


def _only_own_commits(spec: NodeSpec, versions: tuple[int | None, ...]) -> bool:
    """Whether every commit to the node's results and provenance tables since ``versions``
    (a status's) was this store object's (so the status plus this run's work is exact)."""
    own = spec.store.only_own_commits(spec.results_table, versions[0])
    if spec.provenance_table is not None:
        own = own and spec.store.only_own_commits(spec.provenance_table, versions[1])
    return own


def staged_reflects(spec: NodeSpec, since: tuple[int | None, ...], staging: assets.Staging) -> str:
    """What an asset written in slices is made from (as :func:`_materialise` records it): the
    versions the node's tables (and its upstream nodes') are at now, and the digest of its done
    entries -- if every commit to those tables since ``since`` (the versions its
    :class:`KeyIndex` was read at) was this run's. Else versions that never hold, so the next
    run compares the asset whole rather than trust it. ``exact`` as a whole run's
    (:func:`_carried_over`): the rows the slices did not write were kept from an asset that was
    empty, or exact and made from the node's tables at ``since`` (the commit is planned against
    the asset's version ``staging`` read, and made only if the asset is still there)."""
    now, own, node, at = table_versions(spec), True, spec, 0
    while node is not None and own:  # (table_versions: each node's two, then its upstream's)
        own = _only_own_commits(node, since[at:at + 2])
        node, at = node.upstream, at + 2
    ids = table_ids(spec)
    exact = own and (staging.empty or _carried_over(spec, Reflects.parse(staging.previous), since, ids))
    return Reflects(now if own else (), staging.entries.digest, exact, ids).text()


def asset_rows(spec: NodeSpec, status: Status) -> pa.Table:
    """The asset rows of ``status``: tags, outputs, entry and record ids of the done entries.

    In Arrow, ids as ``binary`` as the asset table holds them: through Polars they became
    ``large_binary`` and were cast back on the way in, a copy of every id (a 3M-row first run
    peaked ~0.1 GB higher, and took ~5 % longer)."""
    done = status.found if status.found[DONE].all() else status.found.filter(pl.col(DONE))  # (a copy spared)
    digests = key_digests(done[KEY])
    rows = done.select(*spec.input.tag_columns, *spec.pod.output_keys).to_arrow()
    return rows.append_column(ENTRY_ID, keys_binary(done[ENTRY_KEY])).append_column(
        RECORD_ID, result_record_ids(spec.pod.identity.hash, digests))


@dataclasses.dataclass(frozen=True)
class Reflects:
    """What an asset's materialisation was made from, kept as JSON in its commit's metadata:
    the versions of the node's tables (and its upstream nodes') its status was read at, the
    digest of its done entries and the tables' ids (:meth:`Store.table_id`: a table removed and
    made again counts its versions from 0 again). ``exact``: every row holds the values of that
    status -- written from it, checked against it in the merge, or carried over from an exact
    materialisation while nothing but this run wrote to the node's tables (see
    :func:`_materialise`). Only an exact asset may stand in for the tables
    (:func:`_current_asset`); older forms and sliced runs' commits (:func:`staged_reflects`) are
    not exact. ``inputs``: :func:`inputs_digest` of the status's entries, when every one was
    done (None: not known; older forms, sliced runs). ``root``: for a node fed by a chain of
    nodes from a source, :func:`inputs_digest` of the first node's input, which with the
    chain's table versions in ``versions`` fixes this node's input (see
    :func:`_settled_downstream`; None: not known). ``rows``: the input's entries, with
    ``inputs``."""

    versions: tuple[int | None, ...]
    digest: str
    exact: bool = False
    ids: tuple[str | None, ...] | None = None
    inputs: str | None = None
    root: str | None = None
    rows: int | None = None

    def text(self) -> str:
        facts = {"exact": self.exact, **({"ids": list(self.ids)} if self.ids is not None else {}),
                 **({"inputs": self.inputs} if self.inputs is not None else {}),
                 **({"root": self.root} if self.root is not None else {}),
                 **({"rows": self.rows} if self.rows is not None else {})}
        return json.dumps([list(self.versions), self.digest, facts])

    @staticmethod
    def parse(text: str | None) -> Reflects | None:
        """None for no text, or text orca did not write (another tool's commit)."""
        if text is None:
            return None
        try:
            versions, digest, *rest = json.loads(text)
            facts = rest[0] if rest and isinstance(rest[0], dict) else {}
            ids, inputs, root, rows = facts.get("ids"), facts.get("inputs"), facts.get("root"), facts.get("rows")
            return Reflects(tuple(versions), str(digest), facts.get("exact") is True,
                            tuple(ids) if isinstance(ids, list) else None, inputs if isinstance(inputs, str) else None,
                            root if isinstance(root, str) else None,
                            rows if isinstance(rows, int) and not isinstance(rows, bool) else None)
        except (ValueError, TypeError):
            return None


def table_ids(spec: NodeSpec) -> tuple[str | None, ...]:
    """The ids of the tables whose versions :func:`table_versions` gives, in its order."""
    return tuple(None if name is None else store.table_id(name) for store, name in _tables_of(spec))


def _materialise(spec: NodeSpec, status: Status, recorded: tuple[pl.Series, ...], run_id: str,
                 before: tuple[int | None, ...] | None = None) -> int | None:
    """Step 7: make the node's asset table hold its done entries; the new version, or None when
    nothing changed (or the asset already reflects the node's tables as they are). ``recorded``:
    the input rows this run recorded -- their asset rows are written again. ``before``: the
    versions of the node's tables when the run started, if ``status`` is the status then plus
    only what this run did (None: other writers committed, or not known).

    Rows are otherwise written by key (new entries in, gone ones out), so a row whose value
    changed without this run recording it -- a run whose asset write failed, another process,
    an invalidation through another node sharing the packet -- would keep its old value. Unless
    the asset was exact, made from the tables the run started from, and is still at the version
    looked at here when the merge is planned, the merge compares its output values with the
    status's and writes again the rows that differ: the asset is then exact."""
    # What the asset is made from: the versions the status reflects and which entries are done
    # (entries can leave the input while the node's tables stay as they were).
    # (a settled status's done entries are those its asset was made from: their digest is known)
    done = None if status.settled is not None else status.found.filter(pl.col(DONE))[ENTRY_KEY]
    digest, ids = status.settled.done if done is None else KeySet().add(done).digest, table_ids(spec)
    look = assets.reflected(spec.store, spec.asset_table)
    previous = Reflects.parse(look[1]) if look is not None else None
    if not recorded and previous is not None and previous.exact and _reflects(spec, previous, status.versions,
                                                                               digest, ids):
        return None
    changed = _changed(status, recorded)
    if previous is None or not previous.exact:
        # Not known exact (an older orca's commit, another tool's, a run in slices'): the merge
        # compares every row, and rewrites one at least, so that a commit marks the asset exact
        # (once: from then on a run with nothing new writes nothing, and may read the asset).
        changed = pl.concat([changed, status.found.filter(pl.col(DONE))[ENTRY_KEY].head(1)])
    trusted = look[0] if look is not None and _carried_over(spec, previous, before, ids) else None
    inputs = _inputs_digest_of(spec, status) if status.found[DONE].all() else None
    reflects = Reflects(status.versions, digest, True, ids, inputs, _root_digest(spec, status),
                        status.found.height if inputs is not None else None)
    return assets.materialise(spec.store, spec.asset_table, asset_rows(spec, status), changed, run_id,
                              spec.pod.identity.hash, reflects.text(), compare=tuple(spec.pod.output_keys),
                              trust_since=trusted).version


def _inputs_digest_of(spec: NodeSpec, status: Status) -> str:
    """:func:`inputs_digest` of ``status``'s entries, made once per status (a node's and its
    downstream nodes' materialisations ask for it)."""
    return status.remember("inputs", lambda: inputs_digest(spec, status.entries))


def _root_digest(spec: NodeSpec, status: Status) -> str | None:
    """For a status of a node fed by a chain of nodes from a source, :func:`inputs_digest` of
    the first node's input -- the status that node's output was taken from, up the chain; None
    for a first node, or when not known (a chain through an operator, statuses read without
    their upstream)."""
    if spec.upstream is None or not _memoisable(spec):
        return None
    while spec.upstream is not None:
        if status.upstream is None:
            return None
        spec, status = spec.upstream, status.upstream
        if status.settled is not None:
            return status.settled.root
    return _inputs_digest_of(spec, status)


def _carried_over(spec: NodeSpec, previous: Reflects | None, before: tuple[int | None, ...] | None,
                  ids: tuple[str | None, ...]) -> bool:
    """Whether every asset row this run does not write still holds its value: the asset was
    exact, made from the node's own tables (the same tables, by id) at the versions the run
    started from, or only compactions came between -- no other writer, failed asset write or
    invalidation -- and only this run wrote to them since (``before`` given). (Upstream tables
    do not matter: they change which entries there are, not values.)"""
    if previous is None or not previous.exact or previous.ids is None or before is None:
        return False
    if previous.ids[:2] != ids[:2] or len(previous.versions) < 2:
        return False
    own = ((spec.store, spec.results_table), (spec.store, spec.provenance_table))
    return all(a == b or (name is not None and isinstance(a, int) and isinstance(b, int) and a < b
                          and store.unchanged_since(name, a, until=b))
               for (store, name), a, b in zip(own, previous.versions[:2], before[:2], strict=True))


def _changed(status: Status, recorded: list[pl.Series] | tuple[pl.Series, ...]) -> pl.Series:
    """The entry keys (``UInt128``) of the done entries at input rows ``recorded``: recorded by
    this run, so their asset rows are written again."""
    mask = np.zeros(status.found.height, bool)
    for positions in recorded:
        mask[positions.to_numpy()] = True
    return status.found.filter(pl.Series(mask) & status.found[DONE])[ENTRY_KEY]


def _reflects(spec: NodeSpec, previous: Reflects, versions: tuple[int | None, ...], digest: str,
              ids: tuple[str | None, ...]) -> bool:
    """Whether an asset made from ``previous`` holds what a status at ``versions`` with done
    entries ``digest`` would make: the same entries, from the same tables (``ids``) at those
    versions or with only compactions committed after them (else every no-change run after a
    compaction would compare the whole asset again: 10 s at 10M rows). An asset another process
    made from later versions also holds, if only compactions followed them."""
    return previous.digest == digest and previous.ids == ids and _unchanged_after(spec, previous.versions, versions)


def provenance_schema(spec: NodeSpec) -> pa.Schema:
    """The columns of the node's provenance table (see ``docs/stores.md``)."""
    full = spec.input.full_schema
    tags = [full.field(t).with_type(storable_type(full.field(t).type, t)).remove_metadata()
            for t in spec.input.tag_columns]
    sources = [source_column(p) for p in spec.pod.parameters if source_column(p) in full.names]
    return pa.schema([*tags, (SYSTEM_TAGS, pa.large_string()), (ENTRY_ID, ID_TYPE),
                      (PACKET_HASH, ID_TYPE), (RECORD_ID, ID_TYPE),
                      # (text; a list of references after Batch or MergeJoin)
                      *((c, storable_type(full.field(c).type, c)) for c in sources),
                      (RUN_ID, pa.large_string()), (RECORDED_AT, pa.timestamp("us", tz="UTC"))])


def check_tables(spec: NodeSpec) -> None:
    """Refuse, before computing, to write rows a node's existing tables cannot take: e.g. the same
    pipeline name and label over another graph (a tag renamed, retyped or added)."""
    tables = [(spec.results_table, results_schema(spec.pod.output_fields), "results")]
    if spec.provenance_table is not None:
        tables.append((spec.provenance_table, provenance_schema(spec), "provenance"))
    for name, expected, what in tables:
        raw = spec.store.scan(name, include_invalidated=True)
        if raw is None:
            continue
        have = arrow_schema_of(raw.collect_schema())
        names = [n for n in have.names if n != INVALIDATED_AT]
        missing = [n for n in expected.names if n not in names]
        extra = [n for n in names if n not in expected.names]
        retyped = [f"{f.name} ({have.field(f.name).type} vs {f.type})" for f in expected
                   if f.name in names and not accepts(have.field(f.name).type, f.type)]
        if missing or extra or retyped:
            fix = ("use another pipeline name or label=, or remove the old table (orca rm PIPELINE)"
                   if what == "provenance" else "the table may be damaged or foreign: restore or remove it")
            raise SchemaError(
                f"node {spec.label or spec.pod.name!r}: its {what} table {spec.store.uri(name)} holds other "
                f"columns than this run writes (missing {missing}, unexpected {extra}, other types {retyped}); {fix}")


def _claimed(spec: NodeSpec, options: RunOptions, status: Status, novel: pl.DataFrame, work: _Work,
             on_step: Callable[[], None] | None) -> None:
    """Phase 2 shared with other processes: the entries split into chunks by the hash of their
    tags and system tags (the same split everywhere); each chunk is computed by the process that
    holds its lease (:mod:`orca.claims`), after looking again at what is already stored."""
    of = max(1, math.ceil(status.found.height / options.claim_rows))
    # Every entry's bucket, and each bucket's id: a digest of all its entry ids, so a later wave of
    # workers over other input (or other code) claims afresh instead of meeting old claims.
    key = hash_packets(status.entries.select(*spec.input.tag_columns, *spec.input.system_tag_columns).to_arrow())
    bucket = pl.Series(_SHARD_KEY, key).str.slice(0, 8).str.to_integer(base=16) % of
    groups = pl.DataFrame({"b": bucket, "e": status.found[ENTRY_KEY]}).group_by("b").agg(pl.col("e").sort())
    ids = {b: int(hash_bytes(key_digests(pl.Series(e, dtype=pl.UInt128)).tobytes())[:15], 16)
           for b, e in groups.iter_rows()}
    chunk = bucket.replace_strict(ids, return_dtype=pl.Int64)
    novel = novel.with_columns(chunk.gather(novel[INPUT_ROW]).alias(_SHARD_KEY))
    chunks = novel[_SHARD_KEY].unique().sort().to_list()
    for lease in claims.take_chunks(spec.store, spec.claims_table, chunks, of, options.run_id,
                                    lease_seconds=options.lease_seconds):
        rows = _still_novel(spec, novel.filter(pl.col(_SHARD_KEY) == lease.chunk).drop(_SHARD_KEY))
        drive(spec.store, work.steps(rows), on_step=on_step)
        lease.done()


def _still_novel(spec: NodeSpec, rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` without the entries recorded since the status was read (by a worker whose lease
    expired mid-chunk), and with cache hits for packets computed meanwhile."""
    if rows.height == 0:
        return rows
    recorded = spec.store.lookup(spec.provenance_table, entry_ids(rows))
    if recorded.height:
        rows = rows.filter(~rows[ENTRY_KEY].is_in(hash_keys(recorded[ENTRY_ID]).implode()))
    found = attach_results(spec, rows.select(KEY), [])
    return rows.with_columns(found[HIT])


def drive(store: Store, steps: Iterator[None], on_step: Callable[[], None] | None = None, *,
          wait: bool = True) -> None:
    """Drive ``steps``; commit whatever was appended when they end, fail or are interrupted.
    ``wait=False``: when they end, only start that commit (the caller flushes, e.g. after work
    of its own that needs no store)."""
    try:
        for _ in steps:
            if on_step is not None:
                on_step()
    except BaseException:
        steps.close()
        store.flush()  # commit what succeeded (results before the rows pointing at them)
        raise
    store.flush(wait=wait)


@dataclasses.dataclass(frozen=True)
class _Chunk:
    """One completed piece of phase 2: the first entry rows of its packets (``rows``, positions
    in the entries to compute), failed packets, and the computed outputs of ``rows``.
    ``served``: another process committed these packets' results meanwhile (nothing computed)."""

    rows: np.ndarray
    failed: pl.DataFrame
    outputs: pa.Table | None = None
    served: bool = False

    @property
    def heartbeat(self) -> bool:
        """An empty output: the executor's sign that nothing finished for a while."""
        return not self.served and self.rows.size == 0 and self.failed.height == 0


class _Work:
    """The mutable state of one run of one node: created and dropped inside :func:`run`."""

    def __init__(self, spec: NodeSpec, options: RunOptions, counts: Counts) -> None:
        self.spec, self.options, self.counts = spec, options, counts
        self.recorded: list[pl.Series] = []  # input rows of the entries this run recorded
        self.computed: list[tuple[_EntriesOf, np.ndarray, pa.Table]] = []  # this run's outputs

    def steps(self, novel: pl.DataFrame) -> Iterator[None]:
        """Phase 2: record cache hits, compute and record misses; yields as work completes."""
        if novel.height == 0:
            return
        hits = novel.filter(pl.col(HIT).is_not_null())
        if hits.height:
            self._record(hits)
            # Commit now so the provenance buffer is empty when results start to pend: every
            # later flush then commits results before the provenance rows that point at them.
            self.spec.store.flush()
            self.counts.cached += hits.height
            yield
        todo = novel.filter(pl.col(HIT).is_null())
        entries_of = _EntriesOf(todo)
        done: list[np.ndarray] = []
        pending, last = 0, time.monotonic()
        try:
            for chunk in self._compute(todo, entries_of.first is None):
                if chunk.outputs is not None and chunk.outputs.num_rows:
                    self.computed.append((entries_of, chunk.rows, chunk.outputs))
                if chunk.served:  # another process committed these results: only provenance
                    self.counts.cached += self._record_computed(entries_of, [chunk.rows])
                    yield
                    continue
                done.append(chunk.rows)
                pending += len(chunk.rows)
                # Provenance for computed packets is appended (after their results) in batches,
                # so that each append and commit is large.
                if pending >= self.options.batch_rows or time.monotonic() - last >= self.options.flush_seconds:
                    self.counts.computed += self._record_computed(entries_of, done)
                    done, pending, last = [], 0, time.monotonic()
                    if chunk.heartbeat:  # the run is stalled (a call hangs): commit what it holds now,
                        self.spec.store.flush()  # so that a scheduler's SIGKILL loses none of it
                if chunk.failed.height:
                    self._record_failures(chunk.failed, todo)
                    self.counts.failed += todo.join(chunk.failed.select(KEY), on=KEY, how="semi").height
                    if self.options.on_error == "raise":
                        raise self._failure(chunk.failed, todo)
                yield
        finally:  # also on error and Ctrl-C: every appended result gets its provenance row
            self.counts.computed += self._record_computed(entries_of, done)

    def _compute(self, todo: pl.DataFrame, distinct: bool) -> Iterator[_Chunk]:
        """Compute every distinct packet of ``todo`` in batches; append each chunk's results
        before yielding it. Before a batch, once ``recheck_seconds`` have passed since the last
        look, packets whose results other processes committed meanwhile are yielded as served."""
        spec, options = self.spec, self.options
        packets = first_rows(todo.with_row_index(_ENTRY_ROW), distinct)
        timeout = options.timeout if options.timeout is not None else spec.pod.timeout  # the run's overrides the pod's
        fn = chunk_call(spec.pod, options.retries, timeout)
        checked = time.monotonic()
        for start in range(0, packets.height, options.batch_rows):
            batch = packets.slice(start, options.batch_rows)
            if start and time.monotonic() - checked >= options.recheck_seconds:
                found = attach_results(spec, batch.select(KEY), [])
                still = batch.filter(found[HIT].is_null())
                served = batch.filter(found[HIT].is_not_null())[_ENTRY_ROW]
                if served.len():
                    yield _Chunk(served.to_numpy(), _NO_FAILURES, served=True)
                batch, checked = still, time.monotonic()
            table = input_packets(spec.pod, batch, spec.input.path_columns)
            table = table.append_column(ROW, pa.array(np.arange(batch.height, dtype=np.int64)))
            digests = key_digests(batch[KEY])
            keys = pa.table({PACKET_HASH: digests_binary(digests),
                             RECORD_ID: result_record_ids(spec.pod.identity.hash, digests),
                             _ENTRY_ROW: batch[_ENTRY_ROW].to_arrow()})
            chunks = options.executor.map_chunks(fn, table)
            try:
                for out in chunks:
                    yield self._store_results(out, keys, todo)
            finally:
                chunks.close()

    def _store_results(self, out: pa.Table, keys: pa.Table, todo: pl.DataFrame) -> _Chunk:
        """Append the successful rows of one computed chunk (``__row`` indexes ``keys``: the
        packet hash, record id and entry row of each packet of the batch)."""
        spec = self.spec
        keys = _rows_of(keys, out.column(ROW).to_numpy())
        ok_mask = out.column(OK)
        failed_mask = pc.invert(ok_mask)
        has_failures = pc.any(failed_mask).as_py()
        ok, ok_keys = (out.filter(ok_mask), keys.filter(ok_mask)) if has_failures else (out, keys)
        n = ok.num_rows
        if n:
            results = pa.table({
                **{k: ok.column(k) for k in spec.pod.output_keys},
                PACKET_HASH: ok_keys.column(PACKET_HASH),
                RECORD_ID: ok_keys.column(RECORD_ID),
                FUNCTION_HASH: pa.repeat(pa.scalar(spec.pod.identity.hash, pa.large_string()), n),
                COMPUTED_AT: pa.repeat(pa.scalar(utc_now(), pa.timestamp("us", tz="UTC")), n),
                DURATION: ok.column(DURATION),
                RUN_ID: pa.repeat(pa.scalar(self.options.run_id, pa.large_string()), n),
            })
            spec.store.append(spec.results_table, results, key=[PACKET_HASH])
        outputs = ok.select(list(spec.pod.output_keys))
        if not has_failures:
            return _Chunk(ok_keys.column(_ENTRY_ROW).to_numpy(), _NO_FAILURES, outputs)
        failed = pl.from_arrow(out.filter(failed_mask).select([ATTEMPTS, *ERROR_COLUMNS]).add_column(
            0, _ENTRY_ROW, keys.filter(failed_mask).column(_ENTRY_ROW)))
        failed = failed.with_columns(todo[KEY].gather(failed[_ENTRY_ROW]))
        return _Chunk(ok_keys.column(_ENTRY_ROW).to_numpy(), failed, outputs)

    def _record_computed(self, entries_of: _EntriesOf, done: list[np.ndarray]) -> int:
        """Record the entries whose packets were computed (first entry rows ``done``)."""
        if not done:
            return 0
        # Only the columns provenance reads are gathered: packet columns can be large (files, arrays).
        keep = {INPUT_ROW, KEY, ENTRY_KEY, UPSTREAM_KEY, *self.spec.input.tag_columns,
                *self.spec.input.system_tag_columns, *(source_column(p) for p in self.spec.pod.parameters)}
        finished = entries_of(np.concatenate(done), [c for c in entries_of.todo.columns if c in keep])
        self._record(finished)
        return finished.height

    def _record(self, rows: pl.DataFrame) -> None:
        """Append provenance for ``rows`` (a node) and remember them as recorded by this run."""
        if rows.height == 0:
            return
        self.recorded.append(rows[INPUT_ROW])
        spec = self.spec
        if spec.provenance_table is None:
            return
        n = rows.height
        system = sorted(spec.input.system_tag_columns)
        system_json = [pl.struct(system).struct.json_encode().alias(SYSTEM_TAGS)] if system else []
        # Only the columns Polars holds go through it; the ids and references are made as Arrow
        # and stay so (through Polars each was copied twice more, ~0.2 s per million rows).
        upstream = UPSTREAM_KEY in rows.columns  # (see input_frame)
        source = _source_of(spec)  # (see input_plan)
        if upstream or source is not None:
            names = [source_column(p) for p in spec.pod.parameters if p in spec.input.packet_columns]
        else:
            names = [source_column(p) for p in spec.pod.parameters if source_column(p) in rows.columns]
        clash = set(spec.input.tag_columns) & {SYSTEM_TAGS, ENTRY_ID, PACKET_HASH, RECORD_ID, RUN_ID, RECORDED_AT,
                                               *names}
        if clash:  # (the table below would hold two columns of one name, or keep one of them)
            raise SchemaError(f"node {spec.label!r}: tag column(s) {sorted(clash)} have the names of provenance "
                              "columns; rename them")
        try:  # operators can make tag types Delta cannot hold (UInt32 from pl.len(), ns datetimes)
            derived = [source_references(source).alias(_REFERENCES)] if source is not None and names else []
            held = storable_table(rows.select(*spec.input.tag_columns, *system_json, *derived,
                                              *([] if upstream or source is not None else names)).to_arrow())
        except SchemaError as exc:
            raise SchemaError(f"node {spec.label!r}: {exc}") from exc
        if upstream:
            refs = result_references(spec.upstream.pod, rows[UPSTREAM_KEY])
            sources = dict.fromkeys(names, refs)
        elif source is not None:
            sources = dict.fromkeys(names, held.column(_REFERENCES)) if names else {}
        else:
            sources = {c: held.column(c) for c in names}
        digests = key_digests(rows[KEY])
        table = pa.table({
            **{c: held.column(c) for c in spec.input.tag_columns},
            SYSTEM_TAGS: held.column(SYSTEM_TAGS) if system else pa.repeat(pa.scalar("{}", pa.large_string()), n),
            ENTRY_ID: keys_binary(rows[ENTRY_KEY]),
            PACKET_HASH: digests_binary(digests),
            RECORD_ID: result_record_ids(spec.pod.identity.hash, digests),
            **sources,
            RUN_ID: pa.repeat(pa.scalar(self.options.run_id, pa.large_string()), n),
            RECORDED_AT: pa.repeat(pa.scalar(utc_now(), pa.timestamp("us", tz="UTC")), n),
        })
        spec.store.append(spec.provenance_table, table, key=[ENTRY_ID], refers_to=spec.results_table)

    def _record_failures(self, failed: pl.DataFrame, todo: pl.DataFrame) -> None:
        """Append one ``failures`` row per entry whose packet failed."""
        spec, n = self.spec, None
        rows = todo.join(failed.drop(_ENTRY_ROW), on=KEY, how="inner", maintain_order="left")
        n = rows.height
        entry_id = keys_binary(rows[ENTRY_KEY]) if ENTRY_KEY in rows.columns else pa.nulls(n, ID_TYPE)
        table = pa.table({
            "node": pa.repeat(pa.scalar(spec.label, pa.large_string()), n),
            "entry_id": entry_id,
            "packet_hash": keys_binary(rows[KEY]),
            "function": pa.repeat(pa.scalar(spec.pod.name, pa.large_string()), n),
            "function_hash": pa.repeat(pa.scalar(spec.pod.identity.hash, pa.large_string()), n),
            "tag": tag_json(rows, spec.input.tag_columns).to_arrow(),
            "error_type": rows[ERROR_COLUMNS[0]].to_arrow(),
            "message": rows[ERROR_COLUMNS[1]].to_arrow(),
            "traceback": rows[ERROR_COLUMNS[2]].to_arrow(),
            "attempts": rows[ATTEMPTS].to_arrow(),
            "run_id": pa.repeat(pa.scalar(self.options.run_id, pa.large_string()), n),
            "failed_at": pa.repeat(pa.scalar(utc_now(), pa.timestamp("us", tz="UTC")), n),
        })
        spec.store.append(FAILURES, table.cast(FAILURES_SCHEMA))

    def _failure(self, failed: pl.DataFrame, todo: pl.DataFrame) -> Exception:
        """The error ``on_error="raise"`` raises: it names the first failing tag."""
        row = todo.join(failed.head(1).drop(_ENTRY_ROW), on=KEY, how="inner").row(0, named=True)
        tag = {t: row[t] for t in self.spec.input.tag_columns}
        return failed_for_tag(self.spec.pod.name, tag, row[ERROR_COLUMNS[0]], row[ERROR_COLUMNS[1]])


def _rows_of(table: pa.Table, rows: np.ndarray) -> pa.Table:
    """``table.take(rows)``; a zero-copy slice when ``rows`` is a run of consecutive rows (what
    an executor that keeps the batch's order returns: copying 1M keys cost ~0.5 s per run).

    >>> t = pa.table({"a": [10, 11, 12, 13]})
    >>> _rows_of(t, np.array([1, 2])).column("a").to_pylist(), _rows_of(t, np.array([2, 0])).column("a").to_pylist()
    ([11, 12], [12, 10])
    """
    if len(rows) and rows[-1] - rows[0] == len(rows) - 1 and np.array_equal(rows, np.arange(rows[0], rows[-1] + 1)):
        return table.slice(int(rows[0]), len(rows))
    return table.take(rows)


def tag_json(frame: pl.DataFrame, tags: tuple[str, ...]) -> pl.Series:
    """Each row's tags as a JSON object (for failure rows and messages)."""
    if not tags:
        return pl.Series("tag", ["{}"] * frame.height, pl.String)
    return frame.select(pl.struct(list(tags)).struct.json_encode().alias("tag")).to_series()


def entry_ids(frame: pl.DataFrame) -> pl.Series:
    """The ``__entry_id`` (16 bytes, as stored) of each row of a frame holding ``__entry_key``."""
    return pl.Series(ENTRY_ID, keys_binary(frame[ENTRY_KEY]))


def first_rows(frame: pl.DataFrame, distinct: bool | None = None) -> pl.DataFrame:
    """The first row of ``frame`` for each distinct packet (``__hash_key``), in order.

    ``distinct``: whether the caller already knows that every row has its own packet.
    """
    if distinct is None:
        distinct = frame[KEY].n_unique() == frame.height
    return frame if distinct else frame.filter(frame[KEY].is_first_distinct())


class _EntriesOf:
    """Maps the first entry row of computed packets to every entry with those packets.

    Usually each entry has its own packet and this is a gather; when packets repeat, each row
    carries the row of its packet's first entry and the lookup is one ``is_in`` on integers.
    """

    def __init__(self, todo: pl.DataFrame) -> None:
        self.todo = todo
        self.first: pl.Series | None = None
        if todo.height and todo[KEY].n_unique() != todo.height:
            self.first = todo.with_row_index(_FIRST).select(pl.col(_FIRST).min().over(KEY)).to_series()

    def __call__(self, rows: np.ndarray, columns: list[str] | None = None) -> pl.DataFrame:
        """The entries whose packets' first entry rows are ``rows`` (only ``columns``, if given)."""
        todo = self.todo if columns is None else self.todo.select(columns)
        if self.first is None:
            return todo[rows]
        return todo.filter(self.first.is_in(pl.Series(rows, dtype=self.first.dtype).implode()))


# -- refreshing -----------------------------------------------------------------------------
def _recorded_mask(work: _Work, height: int) -> np.ndarray:
    """Which input rows this run recorded."""
    recorded = np.zeros(height, bool)
    for rows in work.recorded:
        recorded[rows.to_numpy()] = True
    return recorded


def _refreshed_from_run(spec: NodeSpec, status: Status, work: _Work) -> Status | None:
    """:func:`_refreshed` without reading the store: when nobody else committed to the results
    table during the run, the live results of the packets just computed are the values
    computed (each was missing before, so the only row is this run's). None when the outputs
    cannot be placed this way (nested output types, packets shared by entries)."""
    found = status.found
    outputs = list(spec.pod.output_keys)
    if any(found[c].dtype.is_nested() for c in outputs):
        return None
    if any(entries_of.first is not None for entries_of, _, _ in work.computed):
        return None
    hit, columns = found[HIT].clone(), {c: found[c].clone() for c in outputs}
    if work.computed:  # (one scatter for all chunks: per chunk it cost ~0.07 s per million rows)
        where = pl.concat([entries_of.todo[INPUT_ROW].gather(rows) for entries_of, rows, _ in work.computed])
        values = pl.from_arrow(pa.concat_tables([v for _, _, v in work.computed]))
        hit.scatter(where, True)
        for c in outputs:
            columns[c].scatter(where, values[c].cast(columns[c].dtype))
    done = found[DONE] | (hit.is_not_null() & pl.Series(_recorded_mask(work, found.height)))
    return status.replace(found=found.with_columns(*columns.values(), hit, done.alias(DONE)))


def _refreshed(spec: NodeSpec, status: Status, work: _Work, *, narrow: bool = False) -> Status:
    """``status`` after a run: the entries this run recorded take their results as now stored
    (``narrow``: reading only their packets' results, as for a slice, not the whole index).

    An entry that was novel is done if this run recorded it (its result was computed, found in
    the cache, or committed by another process) and its packet has a live result; a failed
    entry stays not done, even if another process has meanwhile stored a result for its packet.
    """
    found = status.found
    outputs = list(spec.pod.output_keys)
    recorded = _recorded_mask(work, found.height)
    novel = ~found[DONE]
    keys = [c for c in found.columns if c not in (*outputs, HIT, DONE)]
    indexed = found.with_row_index(_INDEX)
    todo = indexed.filter(novel).select(_INDEX, *keys)
    fresh = attach_results(spec, todo, outputs, _results_of(spec, todo[KEY], outputs) if narrow else "read")
    done = fresh[HIT].is_not_null() & pl.Series(recorded).gather(fresh[_INDEX])
    fresh = fresh.with_columns(done.alias(DONE)).select(indexed.columns)
    if novel.all():
        return status.replace(found=fresh.drop(_INDEX))
    return status.replace(found=pl.concat([indexed.filter(~novel), fresh]).sort(_INDEX).drop(_INDEX))
