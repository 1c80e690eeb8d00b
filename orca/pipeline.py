"""Pipelines: a named graph of nodes over one store; ``run()`` brings every node up to date.

Inside ``with pipeline:`` every pod application and operator is recorded as a node, labelled
by the function (or operator) name, made unique. The graph is data -- ``pipeline.nodes`` in
the order they were recorded, which is a dependency order -- and :meth:`Pipeline.run` walks it.

>>> import orca
>>> @orca.function_pod(output_keys="y")
... def square(x: int) -> int:
...     return x * x
>>> pipe = orca.Pipeline("demo", store=orca.MemoryStore())
>>> with pipe:
...     out = square.pod(orca.DictSource([{"i": 1, "x": 3}], tags=["i"], source_id="s"))
>>> result = pipe.run(progress=False)
>>> result.status, result.counts["square"]
('succeeded', Counts(cached=0, computed=1, failed=0))
>>> pipe["square"].results().collect()["y"].to_list()
[9]
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import datetime
import importlib.util
import json
import sys
import warnings
from typing import Any, Literal

import polars as pl

# tqdm.auto picks the notebook bar in Jupyter, which needs ipywidgets and warns ("IProgress not
# found") without it: use it only when ipywidgets is installed; the text bar works everywhere.
if importlib.util.find_spec("ipywidgets") is not None:
    from tqdm.auto import tqdm
else:
    from tqdm.std import tqdm

from orca import _context, adoption, assets, engine, lineage, slices, views
from orca._operator import check_expr
from orca.cache import CachedFunctionPod
from orca.engine import Counts, NodeRun, NodeSpec, RunOptions, new_run_id
from orca.errors import ExecutorError, IdentityWarning, OrcaError
from orca.executors import Executor
from orca.graph import Graph, pipeline_graph
from orca.hashing import forget_files, hash_packets, keys_hex
from orca.names import (
    DONE,
    ENTRY_KEY,
    FAILURES,
    FAILURES_SCHEMA,
    RECORD_ID,
    RUNS,
    SOURCES_INDEX,
    asset_table,
    check_label,
    hex_ids,
    sources_table,
)
from orca.nodes import FunctionNode, default_label
from orca.plan import Plan, plan_nodes
from orca.pods import FunctionPod
from orca.runs import RunHandle, RunLog
from orca.sources import Source
from orca.stores import Store, default_store
from orca.streams import Stream
from orca.types import storable_table

__all__ = ["Pipeline", "OperatorNode", "RunResult"]

_VALUE_PARTS = {"constant", "closure", "default", "unhashed"}  # identity parts that are values, not code
Status = Literal["running", "succeeded", "failed", "interrupted"]


@dataclasses.dataclass(frozen=True)
class OperatorNode:
    """An operator applied inside a pipeline: recomputed (cheaply, in Polars) whenever read."""

    label: str
    operator: Any
    inputs: tuple[Stream, ...]
    output: Stream

    @property
    def identity(self) -> str:
        return self.output.identity


@dataclasses.dataclass
class RunResult:
    """What :meth:`Pipeline.run` returns."""

    run_id: str
    status: Status
    counts: dict[str, Counts]
    failures: pl.DataFrame
    handle: RunHandle

    def _repr_html_(self) -> str:
        return views.run_html(self)


def _bar(label: str, progress: bool) -> tqdm:
    """A node's progress bar (hidden unless ``progress``)."""
    # disable=None hides the bar when stderr is not a terminal -- a Jupyter kernel's is not,
    # yet its front end draws the text bar well: there, show it.
    hide = (False if "ipykernel" in sys.modules else None) if progress else True
    return tqdm(desc=label, unit="entry", disable=hide, leave=True)


def _show(bar: tqdm, c: Counts) -> None:
    bar.n = c.cached + c.computed + c.failed
    bar.set_postfix(cached=c.cached, computed=c.computed, failed=c.failed, refresh=True)


class Pipeline:
    """A named graph of nodes over one store.

    Parameters
    ----------
    name
        Names the provenance tables ``pipelines/<name>/<label>``.
    store
        Default :func:`orca.default_store` (``$ORCA_STORE`` or ``./.orca``).

    Notes
    -----
    Constructing a pipeline performs no I/O.
    """

    def __init__(self, name: str, store: Store | None = None) -> None:
        self.name = check_label("pipeline", name)
        self.store = store if store is not None else default_store()
        self.nodes: dict[str, FunctionNode | OperatorNode] = {}
        self._tokens: list = []

    def __repr__(self) -> str:
        return f"Pipeline({self.name!r}, nodes={list(self.nodes)}, store={self.store.location!r})"

    def _repr_html_(self) -> str:
        return views.pipeline_html(self.graph())

    def graph(self, annotate: RunResult | Plan | None = None) -> Graph:
        """The pipeline as a picture: sources, operators and function nodes, and the edges
        between them (:class:`orca.graph.Graph`: ``to_mermaid()``, ``to_dot()``, ``to_svg()``).

        Function nodes carry the counts of ``annotate`` (a run result or a plan), else of this
        pipeline's latest run in its store (none if it has not run).
        """
        return pipeline_graph(self.name, self.nodes, self.store, annotate)

    def __enter__(self) -> Pipeline:
        self._tokens.append(_context.enter(self))
        return self

    def __exit__(self, *exc: object) -> None:
        _context.leave(self._tokens.pop())

    def __getitem__(self, label: str) -> FunctionNode | OperatorNode:
        try:
            return self.nodes[label]
        except KeyError:
            raise KeyError(f"pipeline {self.name!r} has no node {label!r}; nodes: {list(self.nodes)}") from None

    def _label(self, base: str) -> str:
        label, n = base, 1
        while label in self.nodes:
            n += 1
            label = f"{base}_{n}"
        return label

    def record(self, application: _context.Application) -> Stream:
        """Record a pod or operator applied inside ``with pipeline:`` as a node (see
        :class:`orca._context.Recorder`); returns the stream downstream code should use."""
        producer, inputs, output = application.producer, application.inputs, application.output
        mine = {node.spec for node in self.function_nodes.values()}
        foreign = [s.producer.label for s in inputs if isinstance(s.producer, NodeSpec) and s.producer not in mine]
        if foreign:
            raise OrcaError(f"pipeline {self.name!r}: an input comes from node(s) {foreign} of another pipeline; "
                            "build connected nodes inside one `with pipeline:` block")
        if isinstance(producer, FunctionPod | CachedFunctionPod):
            # Everything a pipeline records lives in its store; a cached pod keeps its other options.
            pod = (producer.with_options(store=self.store) if isinstance(producer, CachedFunctionPod)
                   else producer.cached(self.store))
            node = FunctionNode(pod, inputs[0], pipeline=self.name, label=self._label(default_label(pod.pod)))
            self.nodes[node.label] = node
            return node.output
        label = self._label(type(producer).__name__.lower())
        self.nodes[label] = OperatorNode(label, producer, inputs, output)
        return output

    @property
    def function_nodes(self) -> dict[str, FunctionNode]:
        return {k: v for k, v in self.nodes.items() if isinstance(v, FunctionNode)}

    def handle(self, run_id: str) -> RunHandle:
        """The handle of run ``run_id`` of this pipeline (serialisable; poll it from anywhere)."""
        # (a store's location is already absolute: a path made absolute when built, or a URL)
        handle = RunHandle(run_id=run_id, pipeline=self.name, store=self.store.location,
                           nodes={k: v.provenance_table for k, v in self.function_nodes.items()})
        handle._store = self.store
        return handle

    # -- running -------------------------------------------------------------------------------
    def run(self, executor: Executor | None = None, *, on_error: Literal["raise", "continue"] | None = None,
            retries: int | None = None, progress: bool = True, shard: tuple[int, int] | None = None,
            run_id: str | None = None, batch_rows: int | None = None, timeout: float | None = None,
            rehash_files: bool = False, claim: bool = False, claim_rows: int | None = None,
            lease_seconds: float | None = None, memory_rows: int | None = None) -> RunResult:
        """Run every function node in dependency order, each in two phases.

        ``on_error`` (``"raise"`` or ``"continue"``) and ``retries`` override, for this run, what
        each node's pod was given (default ``"raise"`` and 0). ``batch_rows`` is how many packets
        a node computes between commits (default 100,000). ``timeout``: seconds each call may take
        (overrides each pod's ``timeout``); a call that runs longer is a failure (``TimeoutError``).

        ``shard=(i, n)`` computes only the novel entries in shard ``i`` of ``n`` (by a hash of
        tags and system tags), so ``n`` independent processes split one run. A run that fails
        with ``on_error="raise"`` commits what succeeded and raises; Ctrl-C commits what
        finished and re-raises.

        ``claim=True`` shares the work dynamically instead: any number of processes running the
        same pipeline on one store each take chunks of ``claim_rows`` entries (default 10,000)
        with a lease in ``claims/<pipeline>/<node>``, renew it while they work, and go on until
        every chunk is done; a chunk whose holder stopped renewing for ``lease_seconds``
        (default 60) is taken over (see :mod:`orca.claims` and ``docs/scaling.md``).

        ``memory_rows`` bounds memory: each node takes its input that many rows at a time, end to
        end -- hashing, lookups, computing, recording and the asset -- and each asset is still
        committed once (see :mod:`orca.slices` and ``docs/performance.md``). A node fed by an
        operator over other nodes' outputs (e.g. a join of two nodes) runs whole, with a warning.
        Default None: each node takes its whole input at once (fastest, memory grows with it).

        To poll a run from elsewhere before it ends, make its id first and hand out the handle::

            run_id = orca.new_run_id()
            pathlib.Path("run.json").write_text(pipeline.handle(run_id).to_json())
            pipeline.run(run_id=run_id)
        """
        if executor is not None and not callable(getattr(executor, "map_chunks", None)):
            raise ExecutorError(f"executor must be an orca executor (e.g. orca.ThreadExecutor()), got {executor!r}")
        if not self.function_nodes:
            raise OrcaError(f"pipeline {self.name!r} has no function nodes to run: apply pods to streams "
                            f"inside `with pipeline:` (pods applied outside it are not recorded)")
        self._check_identities()
        if run_id is not None:
            self._check_new_run_id(run_id)
        run_id = run_id or new_run_id()
        # Every node's options, validated before any I/O.
        options = {label: node.cached.options(run_id, executor=executor, on_error=on_error, retries=retries,
                                              shard=shard, batch_rows=batch_rows, timeout=timeout, claim=claim,
                                              claim_rows=claim_rows, lease_seconds=lease_seconds,
                                              memory_rows=memory_rows)
                   for label, node in self.function_nodes.items()}
        sources = self._sources()
        if rehash_files:
            forget_files()
        else:
            lineage.remember_source_files(self.store, sources)
        self.store.ensure(FAILURES, FAILURES_SCHEMA)  # readers find the table from the first run on
        log = RunLog(self.store, run_id, self.name)
        log.start()
        runs: dict[str, NodeRun] = {}
        status: Status = "failed"
        # A node's asset is written (native code, mostly without the GIL) on this thread while the
        # next node computes.
        assets_pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="orca-assets")
        written: dict[str, concurrent.futures.Future] = {}
        try:
            whole = dict(self.function_nodes)
            if memory_rows is not None:
                runs.update(self._run_sliced(options, memory_rows, log, progress))
                whole = {label: node for label, node in whole.items() if label not in runs}
                for label, run in runs.items():
                    log.event("node_materialised", "succeeded", node=label, asset_version=run.asset_version,
                              commit=False)
            for label, node in whole.items():
                runs[label] = self._run_node(node, options[label], runs, log, progress)
                if runs[label].materialise is not None:
                    written[label] = assets_pool.submit(runs[label].materialise)
            # After the nodes: they hashed the files, so recording their facts reads none again.
            lineage.record_sources(self.store, sources, run_id)
            for label, future in written.items():
                log.event("node_materialised", "succeeded", node=label, asset_version=future.result(), commit=False)
            status = "failed" if any(r.counts.failed for r in runs.values()) else "succeeded"
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        finally:
            assets_pool.shutdown(wait=True)  # (an asset write in flight completes: it is one commit)
            for label, future in written.items():  # a write the failure above left unread
                if status != "succeeded" and future.done() and future.exception() is not None:
                    warnings.warn(f"node {label!r}: its asset was not written: {future.exception()}; "
                                  "the next run writes it", stacklevel=2)
            log.finish(status)
        self.store.upkeep(self._tables())
        counts = {label: r.counts for label, r in runs.items()}
        return RunResult(run_id, status, counts, self._failures(run_id), self.handle(run_id))

    def _run_node(self, node: FunctionNode, options: RunOptions, runs: dict[str, NodeRun], log: RunLog,
                  progress: bool) -> NodeRun:
        """Run one node, handing it its upstream node's status from this run (if any)."""
        bar = _bar(node.label, progress)

        def total(n: int, done: int) -> None:
            bar.reset(total=n)
            bar.update(done)
            bar.set_postfix(cached=done, computed=0, failed=0)
            log.event("node_started", "running", node=node.label, counts=Counts(cached=done), total=n)

        def update(c: Counts) -> None:
            _show(bar, c)

        upstream = node.spec.upstream
        before = next((runs[k] for k, n in self.function_nodes.items() if n.spec is upstream and k in runs), None)
        try:
            done = engine.run(node.spec, options, upstream=before.status if before else None,
                              progress=update, total=total, defer_asset=True)
            # The engine's last progress call may precede its last counts (cache hits found
            # after the compute, a run with nothing to compute): end the bar on the final counts.
            c = done.counts
            bar.total = max(bar.total or 0, c.cached + c.computed + c.failed)
            update(c)
        finally:
            bar.close()
        # Committed with the next event (the next node's start or the run's end): one commit fewer.
        identity = node.pod.identity
        log.event("node_finished", "failed" if done.counts.failed else "succeeded", node=node.label,
                  counts=done.counts, function_hash=identity.hash,
                  identity=json.dumps(identity.explain().as_dicts(), sort_keys=True), commit=False)
        return done

    def _run_sliced(self, options: dict[str, RunOptions], memory_rows: int, log: RunLog,
                    progress: bool) -> dict[str, NodeRun]:
        """Run the nodes that can take their input in slices (:mod:`orca.slices`); the others are
        left to run whole, with a warning naming them."""
        specs = {node.spec: label for label, node in self.function_nodes.items()}
        operators = {id(n.output): n.inputs for n in self.nodes.values() if isinstance(n, OperatorNode)}
        sliced, whole = slices.split(list(specs), operators)
        if whole:
            warnings.warn(f"nodes {[specs[s] for s in whole]} read other nodes' outputs through operators (or "
                          f"streams made outside the pipeline) and run whole: memory_rows does not bound them",
                          stacklevel=3)
        bars = {spec: _bar(specs[spec], progress) for spec in sliced}

        def started(spec: NodeSpec, rows: int) -> None:
            bars[spec].reset(total=rows)
            log.event("node_started", "running", node=specs[spec], counts=Counts(), total=rows)

        def update(spec: NodeSpec, c: Counts) -> None:
            _show(bars[spec], c)

        try:
            ran = slices.run(sliced, {spec: options[specs[spec]] for spec in sliced}, memory_rows,
                             started=started, progress=update)
        finally:
            for bar in bars.values():
                bar.close()
        for spec, done in ran.items():
            identity = spec.pod.identity
            log.event("node_finished", "failed" if done.counts.failed else "succeeded", node=specs[spec],
                      counts=done.counts, function_hash=identity.hash,
                      identity=json.dumps(identity.explain().as_dicts(), sort_keys=True), commit=False)
        return {specs[spec]: done for spec, done in ran.items()}

    # -- assets ----------------------------------------------------------------------------------
    def asset(self, label: str, *, version: int | None = None, run_id: str | None = None,
              as_of: datetime.datetime | None = None) -> pl.LazyFrame:
        """Node ``label``'s materialised output (``assets/<pipeline>/<label>``): its latest
        version, or as of a Delta ``version``, the end of run ``run_id``, or a time ``as_of``.

        Columns: the tags, the outputs, ``__entry_id``, ``__record_id``, ``__function_hash`` and
        ``__run_id`` (the run that wrote the row). See ``docs/assets.md``.
        """
        table = self._asset_table(label)
        if run_id is not None:
            if version is not None or as_of is not None:
                raise OrcaError("give one of version=, run_id= and as_of=")
            version, as_of = self._asset_version_of_run(label, run_id)
        return assets.read_asset(self.store, table, version=version, as_of=as_of)

    def history(self, label: str) -> pl.DataFrame:
        """One row per materialisation of node ``label``'s asset: Delta version, time, the run
        that made it, rows inserted, updated and deleted."""
        return assets.asset_history(self.store, self._asset_table(label))

    def materialise(self, label: str) -> int | None:
        """Write operator node ``label``'s current output to ``assets/<pipeline>/<label>`` (function
        nodes are materialised by every run). Rows are keyed by ``__row_id``, a hash of their tags
        and system tags. Returns the new Delta version (None: nothing changed)."""
        node = self[label]
        if not isinstance(node, OperatorNode):
            raise OrcaError(f"node {label!r} is a function node: its asset is written by every run")
        frame = node.output.to_polars(include_system=True)
        keys = [*node.output.tag_columns, *node.output.system_tag_columns]
        row_id = pl.Series("__row_id", hash_packets(frame.select(keys).to_arrow()) if keys else [])
        rows = frame.select(*node.output.tag_columns, *node.output.packet_columns).with_columns(row_id)
        return self.store.sync_rows(asset_table(self.name, label), "__row_id", storable_table(rows.to_arrow()),
                                    pl.Series([], dtype=pl.String), metadata={"orca.run": new_run_id()})

    def lineage(self, label: str, where: pl.Expr | None = None) -> pl.DataFrame:
        """For each row of node ``label``'s asset matching ``where`` (a Polars expression over its
        columns), every step back to the sources: the node entries (node, entry id, record id,
        function hash, run) and the source records (source id, tags, file path and content
        hash). ``row`` numbers the selected rows; ``depth`` counts the steps from them."""
        rows = self.asset(label)
        if where is not None:  # a column the asset lacks is the caller's mistake: say so, naming it
            check_expr(where, rows.collect_schema().names(), f"lineage of node {label!r}", "asset")
            rows = rows.filter(where)
        rows = self.store.collect(self._asset_table(label), rows)
        return lineage.lineage(self.store, self._specs(), label, rows)

    def downstream(self, source_id: str, where: pl.Expr | None = None) -> pl.DataFrame:
        """The asset rows of every node that depend on the rows of source ``source_id`` matching
        ``where`` (a Polars expression over the recorded source rows: tags, file path...)."""
        recorded = lineage.source_rows(self.store, source_id)
        records = self.store.collect(sources_table(source_id),
                                     (recorded if where is None else recorded.filter(where)).select(RECORD_ID))
        return lineage.downstream(self.store, self._specs(), source_id, records[RECORD_ID])

    def _tables(self) -> list[str]:
        """Every table a run of this pipeline writes (for the store's upkeep)."""
        tables = [RUNS, FAILURES, SOURCES_INDEX, *(sources_table(s) for s in self._sources())]
        for spec in self._specs().values():
            tables += [spec.results_table, spec.provenance_table, spec.asset_table]
        return [t for t in tables if t is not None]

    def _specs(self) -> dict[str, NodeSpec]:
        return {label: node.spec for label, node in self.function_nodes.items()}

    def _sources(self) -> dict[str, Source]:
        streams = [s for node in self.nodes.values()
                   for s in ((node.input,) if isinstance(node, FunctionNode) else node.inputs)]
        return lineage.sources_in(s.producer if isinstance(s.producer, Source) else s for s in streams)

    def _asset_table(self, label: str) -> str:
        self[label]  # a KeyError naming the nodes when there is no such node
        return asset_table(self.name, label)

    def _asset_version_of_run(self, label: str, run_id: str) -> tuple[int | None, datetime.datetime | None]:
        """The asset version run ``run_id`` made, or (when it changed nothing) the time it ended."""
        runs = self.store.scan(RUNS)
        events = pl.DataFrame() if runs is None else runs.filter(pl.col("run_id") == run_id).collect()
        if events.height == 0:
            raise OrcaError(f"no run {run_id!r} in store {self.store.location!r}")
        made = events.filter((pl.col("node") == label) & pl.col("asset_version").is_not_null())
        if made.height:
            return int(made["asset_version"][-1]), None
        return None, events["at"].max()

    def adopt(self, label: str, from_hash: str | None = None) -> int:
        """Declare the code change of node ``label`` compatible: its function's current identity
        reuses the results of the old one (``from_hash``; default: the one the node's recorded
        entries were made by, when there is exactly one). Recorded in the ``adoptions`` table.
        Returns the number of results adopted; the next run serves them from the store.
        """
        node = self[label]
        if not isinstance(node, FunctionNode):
            raise OrcaError(f"node {label!r} is an operator node; only function nodes hold results")
        if from_hash is None:
            old = self.plan()[label].old_function_hashes
            if len(old) != 1:
                raise OrcaError(f"node {label!r}: {'no' if not old else 'several'} earlier function hashes "
                                f"recorded {list(old)}; pass from_hash=")
            from_hash = old[0]
        changed = adoption.identity_change(self.store, self.name, label, node.pod, from_hash)
        return adoption.adopt_results(self.store, self.name, label, node.pod, from_hash, changed)

    def plan(self) -> Plan:
        """What the next run would serve from the store, compute, and why (see :mod:`orca.plan`).

        Computes nothing and writes nothing: it hashes each node's input and reads its tables.
        """
        return plan_nodes(self.name, {label: node.spec for label, node in self.function_nodes.items()})

    def _check_identities(self) -> None:
        """Refuse to run a pod whose code or declared deps changed since it was declared (a
        helper re-defined in a notebook, an edited deps file): its results would be keyed by the
        old identity. A module value it reads that changed since (a config dict edited, or
        state the function mutates itself) gives an IdentityWarning: results stay keyed by the
        values at declaration."""
        for label, node in self.function_nodes.items():
            declared = node.pod.identity
            now = declared.refreshed()
            if now.hash == declared.hash:
                continue
            changed = declared.explain().changed(now.explain())
            code = [f"{kind} {name}" for kind, name in changed if kind not in _VALUE_PARTS]
            if code:
                raise OrcaError(f"node {label!r}: what function {node.pod.name!r} depends on changed since the "
                                f"pod was declared ({', '.join(code)}); declare the pipeline again so its results "
                                "are keyed by the new code")
            values = ", ".join(f"{kind} {name}" for kind, name in changed)
            warnings.warn(f"node {label!r}: values function {node.pod.name!r} reads changed since the pod was "
                          f"declared ({values}); its results stay keyed by the values it was declared with. "
                          "Declare the pipeline again if they are configuration.", IdentityWarning, stacklevel=3)

    def _check_new_run_id(self, run_id: str) -> None:
        runs = self.store.scan(RUNS)
        if runs is not None and runs.filter(pl.col("run_id") == run_id).select(pl.len()).collect().item():
            raise OrcaError(f"run id {run_id!r} was already used in store {self.store.location!r}; "
                            "give each run a new id (orca.new_run_id())")

    def failures(self, *, open_only: bool = False) -> pl.DataFrame:
        """The failures recorded by this pipeline's nodes, oldest first. ``open_only``: the latest
        failure of each entry of the current input that is still not done -- what the next run
        tries again (a failure of an entry that has since succeeded, or that no longer exists
        because the input or the code changed, is closed)."""
        table = self.store.scan(FAILURES)
        if table is None:
            return hex_ids(pl.DataFrame(schema=pl.from_arrow(FAILURES_SCHEMA.empty_table()).schema))
        found = hex_ids(self.store.collect(FAILURES, table.filter(pl.col("node").is_in(list(self.function_nodes)))
                                           .sort("failed_at")))
        if not open_only or found.height == 0:
            return found
        pending = []
        for label, node in self.function_nodes.items():
            found_status = engine.current_status(node.spec).found
            pending.append(pl.DataFrame({"node": label, "entry_id": keys_hex(
                found_status.filter(~pl.col(DONE))[ENTRY_KEY])}))
        still = found.join(pl.concat(pending), on=["node", "entry_id"], how="semi", maintain_order="left")
        return still.unique(["node", "entry_id"], keep="last", maintain_order=True)  # its latest failure

    def _failures(self, run_id: str) -> pl.DataFrame:
        failures = self.store.scan(FAILURES)
        if failures is None:
            return pl.DataFrame()
        return hex_ids(failures.filter(pl.col("run_id") == run_id).collect())

    def invalidate(self, label: str, where: pl.Expr | None = None) -> int:
        """Mark entries of node ``label`` matching ``where`` for recomputation on the next run."""
        node = self[label]
        if not isinstance(node, FunctionNode):
            raise OrcaError(f"node {label!r} is an operator node; only function nodes hold results")
        return node.invalidate(where)
