"""Runs in slices: a pipeline's input held ``memory_rows`` rows at a time, end to end.

With ``Pipeline.run(memory_rows=m)``, a node whose input comes from sources (directly, or
through operators over sources only) reads its input once and takes it ``m`` rows at a time; a
node fed exactly by such a node's output takes that node's output for the same slice. For each
slice, node after node: hash, look up (probing a :class:`~orca.engine.KeyIndex` read once per
run, and reading only the slice's stored packets), compute, record -- the engine's own run, on
the slice's status. Each slice's asset rows are staged in a file (:class:`orca.assets.Staging`)
and every asset is committed once at the end, so a run is still one materialisation.

What is held at once: each sliced node's input columns (a source holds them already), its key
index (16 bytes per stored result and per recorded entry), and one slice's working set. Nodes
fed through an operator over other nodes' outputs (a join of two nodes' outputs, say) cannot
take their input in slices; they run whole, after the sliced ones (:func:`split` says which).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence

import polars as pl

from orca import assets, engine
from orca.engine import Counts, KeyIndex, NodeRun, NodeSpec, RunOptions, Status
from orca.names import DONE, ENTRY_KEY, HIT, KEY
from orca.stores.base import member

__all__ = ["split", "run"]


def split(specs: Sequence[NodeSpec], operators: Mapping[int, Sequence[object]]) -> tuple[list[NodeSpec], list[NodeSpec]]:
    """The nodes that can run in slices, and the others, each in the order given (a dependency
    order). ``operators`` maps ``id(stream)`` of each operator node's output to its input
    streams, to tell whether an input passes through another node's output."""
    sliced: list[NodeSpec] = []

    def from_nodes(stream: object) -> bool:
        producer = getattr(stream, "producer", None)
        if isinstance(producer, NodeSpec):
            return True
        if getattr(producer, "source_id", None) is not None:
            return False
        if id(stream) in operators:
            return any(from_nodes(s) for s in operators[id(stream)])
        return True  # made outside the pipeline (e.g. an operator applied outside `with`): unknown inputs

    for spec in specs:
        if spec.upstream is not None:
            if spec.upstream in sliced:
                sliced.append(spec)
        elif not from_nodes(spec.input):
            sliced.append(spec)
    return sliced, [s for s in specs if s not in sliced]


@dataclasses.dataclass(frozen=True)
class _Input:
    """The input of a node not fed by another node, a slice at a time (:func:`_input`)."""

    rows: int
    plan: pl.LazyFrame | None = None  # a source's query, collected per slice
    frame: pl.DataFrame | None = None  # any other input, collected once

    def slice(self, offset: int, length: int) -> pl.DataFrame:
        if self.frame is not None:
            return self.frame.slice(offset, length)
        return self.plan.slice(offset, length).collect()


def _input(spec: NodeSpec) -> _Input:
    """A source's rows are read from its query per slice (their ``__source__`` references made
    for that slice only); any other input -- operators over sources, whose row order a query
    need not repeat (a join's) -- is collected once and sliced."""
    plan = engine.input_plan(spec)
    if getattr(spec.input.producer, "source_id", None) is not None:
        return _Input(plan.select(pl.len()).collect().item(), plan=plan)
    frame = plan.collect()
    return _Input(frame.height, frame=frame)


@dataclasses.dataclass
class _Node:
    """One node's state for the length of one run in slices."""

    spec: NodeSpec
    index: KeyIndex
    since: tuple[int | None, ...]
    counts: Counts
    staging: assets.Staging | None


def run(specs: Sequence[NodeSpec], options: Mapping[NodeSpec, RunOptions], memory_rows: int, *,
        started: Callable[[NodeSpec, int], None] | None = None,
        progress: Callable[[NodeSpec, Counts], None] | None = None) -> dict[NodeSpec, NodeRun]:
    """Run ``specs`` (as :func:`split` gives them, in dependency order) slice by slice; returns
    each node's run: counts over all slices, ``status`` None (no node's whole status is held),
    ``asset_version`` the one commit of its asset (None: unchanged).

    ``started(spec, rows)`` is called once per node with its input's rows (for a node fed by
    another, its upstream's), ``progress(spec, counts)`` as slices complete. A failure raises
    after committing what succeeded (results and provenance); no asset is written then -- the
    next run writes them.
    """
    inputs = {spec: _input(spec) for spec in specs if spec.upstream is None}
    nodes: dict[NodeSpec, _Node] = {}
    # One index per results table, shared by the nodes whose function writes it: what one node
    # computes, another finds (as in a run taken whole, where the second reads after the first).
    shared: dict[tuple[int, str], engine.ResultIndex] = {}
    try:
        for spec in specs:
            table = (id(spec.store), spec.results_table)
            index = engine.read_index(spec, shared.get(table))
            shared[table] = index.results
            staging = None
            if spec.asset_table is not None:
                staging = assets.Staging(spec.store, spec.asset_table, options[spec].run_id, spec.pod.identity.hash)
            nodes[spec] = _Node(spec, index, index.versions, Counts(), staging)
            if started is not None:
                root = spec
                while root.upstream is not None:
                    root = root.upstream
                started(spec, inputs[root].rows)
        slices = max([math.ceil(i.rows / memory_rows) for i in inputs.values()] + [1])
        for i in range(slices):
            outputs: dict[NodeSpec, Status] = {}
            for spec, node in nodes.items():
                if spec.upstream is None:
                    frame = inputs[spec].slice(i * memory_rows, memory_rows)
                else:
                    frame = engine.input_frame(spec, outputs[spec.upstream])
                table = (id(spec.store), spec.results_table)
                outputs[spec] = _run_slice(node, frame, options[spec], progress, shared, table)
        ran = {}
        for spec, node in nodes.items():
            version = None
            if node.staging is not None:
                reflects = engine.staged_reflects(spec, node.since, node.staging)
                version = node.staging.commit(reflects).version
            ran[spec] = NodeRun(spec.label, node.counts, None, version)
        return ran
    finally:
        for node in nodes.values():
            if node.staging is not None:
                node.staging.discard()


def _run_slice(node: _Node, frame: pl.DataFrame, options: RunOptions,
               progress: Callable[[NodeSpec, Counts], None] | None,
               shared: dict[tuple[int, str], engine.ResultIndex], table: tuple[int, str]) -> Status:
    """One slice of one node: its status, the engine's run of it, the asset rows staged; returns
    the status after the run (its done entries are the next node's input)."""
    spec, before = node.spec, dataclasses.replace(node.counts)
    node.index = dataclasses.replace(node.index, results=shared[table])  # (other nodes may have added to it)
    status = engine.slice_status(spec, frame, node.index)

    def step(c: Counts) -> None:
        node.counts = Counts(before.cached + c.cached, before.computed + c.computed, before.failed + c.failed)
        if progress is not None:
            progress(spec, node.counts)

    done = engine.run(spec, options, status=status, progress=step, sliced=True)
    after = done.status
    # An entry whose packet an earlier slice computed counts as computed, as in a run taken whole.
    found = status.found
    again = int((~found[DONE] & found[HIT].is_not_null() & member(found[KEY], node.index.own)).sum())
    step(Counts(done.counts.cached - again, done.counts.computed + again, done.counts.failed))
    added = after.found.filter(found[HIT].is_null() & after.found[HIT].is_not_null())
    shared[table] = shared[table].with_run(added)
    node.index = dataclasses.replace(node.index, results=shared[table],
                                     own=pl.concat([node.index.own, added[KEY]], rechunk=False))
    if node.staging is not None:
        node.staging.add(engine.asset_rows(spec, after), after.found.filter(pl.col(DONE))[ENTRY_KEY], done.changed)
    return after
