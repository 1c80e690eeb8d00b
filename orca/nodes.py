"""Function nodes: a cached pod bound to its input, recording provenance, iterating in two phases.

A node's provenance table ``pipelines/<pipeline>/<label>`` holds one row per *entry* (a tag
row of the input): its tags, system tags, ``__entry_id``, ``__packet_hash``, the
``__record_id`` of the result it points to, ``__source__<column>`` for each input packet
column the function reads, ``__run_id`` and ``__recorded_at``. No input data is copied.

``__entry_id`` = hash(node identity, tags, system tags, input packet hash), so one packet under
N tags is one result row and N provenance rows. A node is a description; running it is the
engine's work (:mod:`orca.engine`, where the steps of a run are written down).

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

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import polars as pl

from orca import engine, views
from orca._operator import check_expr
from orca.cache import CachedFunctionPod
from orca.engine import Counts, NodeSpec, shard_filter
from orca.errors import PodError
from orca.executors import Executor
from orca.hashing import hash_bytes
from orca.names import (
    COMPUTED_AT,
    DONE,
    DURATION,
    ENTRY_ID,
    FUNCTION_HASH,
    KEY,
    LABEL_OK,
    PACKET_HASH,
    RUN_ID,
    asset_table,
    check_label,
    claims_table,
    hex_ids,
    provenance_table,
)
from orca.pods import FunctionPod
from orca.stores import Store, default_store
from orca.streams import Stream

__all__ = ["FunctionNode", "default_label", "shard_filter"]


def default_label(pod: FunctionPod) -> str:
    """A node's label when none is given: the function's name, which must be a valid label."""
    if not LABEL_OK.match(pod.name):  # e.g. a lambda
        raise PodError(f"function {pod.name!r} cannot name a pipeline node (names hold letters, digits, "
                       "'_', '-' and '.'): pass name= to function_pod, e.g. name='scale'")
    return pod.name


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

    Notes
    -----
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
        self.label = check_label("node", label) if label is not None else default_label(cached.pod)
        self.pipeline = check_label("pipeline", pipeline)
        self.cached = cached
        self.pod = cached.pod
        self.input = input_stream
        identity = hash_bytes(f"node\x00{self.pod.identity.hash}\x00{input_stream.identity}".encode())
        self.spec = NodeSpec(self.pod, input_stream, cached.store, self.label,
                             provenance_table(pipeline, self.label), identity, asset_table(pipeline, self.label),
                             claims_table(pipeline, self.label))
        self.output = self.pod.output_stream(input_stream, self._output, producer=self.spec)

    @property
    def store(self) -> Store:
        return self.spec.store

    @property
    def identity(self) -> str:
        return self.spec.identity

    @property
    def provenance_table(self) -> str:
        return self.spec.provenance_table

    def __repr__(self) -> str:
        return f"FunctionNode({self.label!r}, pod={self.pod.name!r}, table={self.provenance_table!r})"

    def _repr_html_(self) -> str:
        return views.node_html(self)

    # -- running ----------------------------------------------------------------------------
    def run(self, *, executor: Executor | None = None, on_error: str | None = None, retries: int | None = None,
            shard: tuple[int, int] | None = None, run_id: str | None = None,
            progress: Callable[[Counts], None] | None = None, total: Callable[[int, int], None] | None = None,
            batch_rows: int | None = None, timeout: float | None = None) -> Counts:
        """Bring this node up to date; returns what was served from the store, computed and failed.

        Options not given are the pod's (see :class:`CachedFunctionPod`). ``progress`` is called
        with the running counts as work completes; ``total`` once with (entries in this run,
        entries already done). ``timeout``: seconds each call may take (overrides the pod's).
        """
        options = self.cached.options(run_id, executor=executor, on_error=on_error, retries=retries,
                                      shard=shard, batch_rows=batch_rows, timeout=timeout)
        return engine.run(self.spec, options, progress=progress, total=total).counts

    def status(self) -> engine.Status:
        """What is done, what the store can serve and what a run would compute (writes nothing)."""
        return engine.read_status(self.spec)

    # -- reading ----------------------------------------------------------------------------
    def __iter__(self) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
        """Two-phase iteration: rows already computed for this input at once, then the novel ones
        (computed now, except entries whose packet failed before: :meth:`run` retries those)."""
        status = engine.read_status(self.spec)
        yield from self._rows(status.found.filter(pl.col(DONE)))
        # Reading does not retry what failed before (``run()`` does): such entries are left out.
        failed = status.found[KEY].is_in(engine.failed_packets(self.spec).implode())
        after = engine.run(self.spec, self.cached.options(), status=status, skip=failed).status
        novel = ~status.found[DONE]
        yield from self._rows(after.found.filter(novel & after.found[DONE]))

    def _rows(self, found: pl.DataFrame) -> Iterator[tuple[Mapping[str, Any], Mapping[str, Any]]]:
        frame = found.select(*self.input.tag_columns, *self.pod.output_keys)
        yield from Stream(frame.lazy(), tag_columns=self.input.tag_columns, packet_columns=self.pod.output_keys,
                          path_columns=self.pod.path_outputs, identity="rows")

    def _output(self) -> pl.DataFrame:
        return engine.output_frame(self.spec, engine.current_status(self.spec))

    def results(self) -> pl.LazyFrame:
        """Tags + outputs for this node's current input, as stored (no computation)."""
        return self._output().select(*self.input.tag_columns, *self.pod.output_keys).lazy()

    def provenance(self) -> pl.LazyFrame:
        """This input's provenance rows joined to their results' metadata."""
        prov = self.store.scan(self.provenance_table)
        if prov is None:
            return pl.LazyFrame()
        ids = engine.entry_ids(engine.current_status(self.spec).entries).to_frame().lazy()
        prov = prov.join(ids, on=ENTRY_ID, how="semi")
        results = self.store.scan(self.pod.results_table)
        if results is None:
            return hex_ids(prov)
        meta = results.select(PACKET_HASH, FUNCTION_HASH, COMPUTED_AT, DURATION,
                              pl.col(RUN_ID).alias("__result_run_id"))
        return hex_ids(prov.join(meta, on=PACKET_HASH, how="left"))

    def invalidate(self, where: pl.Expr | None = None) -> int:
        """Mark entries matching ``where`` (a Polars expression on tags; all if None) for recomputation.

        Their provenance and result rows stay as history, flagged by ``__invalidated_at``; the
        next run computes them again. Returns the number of entries invalidated.
        """
        if where is not None:
            check_expr(where, self.input.tag_columns, f"invalidate node {self.label!r}", "tag")
        entries = engine.current_status(self.spec).entries
        if where is not None:
            entries = entries.filter(where)
        prov = self.store.lookup(self.provenance_table, engine.entry_ids(entries))
        if prov.height == 0:
            return 0
        self.store.invalidate(self.pod.results_table, prov[PACKET_HASH].unique())
        invalidated = self.store.invalidate(self.provenance_table, prov[ENTRY_ID])
        # Their rows leave the asset now: it then never shows a value its entry no longer has,
        # and the run that recomputes them inserts them afresh (even if an earlier one failed
        # before writing the asset).
        self.store.delete_rows(self.spec.asset_table, ENTRY_ID, prov[ENTRY_ID])
        return invalidated

    def __len__(self) -> int:
        return self._output().height
