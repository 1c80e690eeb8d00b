"""Plans: what the next run of a pipeline would serve, compute, and why -- without running.

A plan reads each function node's status (:func:`orca.engine.read_status`: hash the input, look
it up; nothing is computed or written) and, for every entry the run would compute, the reason:

============================ =============================================================
reason                       meaning
============================ =============================================================
``new input``                no provenance row has these tags: a new row of the input
``changed input``            the row's tags were recorded with another input packet
``code changed``             recorded with the same input packet by another function hash
                             (``old_function_hashes`` lists them)
``pipeline changed``         same packet and function, but the node's upstream structure
                             changed (its entry ids differ)
``invalidated``              its provenance row or result was invalidated
``previously failed``        this function failed on this packet before
============================ =============================================================

Rows a node's upstream node has yet to compute are counted apart, as ``pending``: their values
are unknown until it runs, so the run may compute them, find them in the store, or never see
them (if they fail upstream). For every other entry the plan and the run agree exactly.

>>> import orca
>>> @orca.function_pod(output_keys="y")
... def inc(x: int) -> int:
...     return x + 1
>>> pipe = orca.Pipeline("demo", store=orca.MemoryStore())
>>> with pipe:
...     _ = inc.pod(orca.DictSource([{"k": i, "x": i} for i in range(3)], tags=["k"], source_id="s"))
>>> plan = pipe.plan()
>>> plan["inc"].to_compute, plan["inc"].reasons
(3, {'new input': 3})
>>> _ = pipe.run(progress=False)
>>> pipe.plan()["inc"].cached
3
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping

import polars as pl

from orca import engine, views
from orca.adoption import identity_change
from orca.engine import NodeSpec, Status
from orca.hashing import hash_keys, keys_hex
from orca.names import (
    DONE,
    ENTRY_ID,
    ENTRY_KEY,
    FAILURES,
    HIT,
    INVALIDATED_AT,
    KEY,
    PACKET_HASH,
    RECORD_ID,
    RECORDED_AT,
    SYSTEM_TAGS,
)

__all__ = ["NodePlan", "Plan", "plan_nodes"]

_REASON = "reason"


@dataclasses.dataclass(frozen=True)
class NodePlan:
    """What the next run of one node would do.

    ``cached``: entries served from the store (done, or a cache hit that only needs a
    provenance row); ``to_compute``: entries whose function would be called; ``reasons``:
    ``to_compute`` broken down by reason (see the module docs); ``pending``: rows the upstream
    node has yet to compute; ``entries``: one row per entry to compute, its tags and reason.
    """

    label: str
    total: int
    done: int
    hits: int
    to_compute: int
    pending: int
    reasons: dict[str, int]
    function_hash: str
    old_function_hashes: tuple[str, ...]
    entries: pl.DataFrame = dataclasses.field(repr=False)
    identity_changes: tuple[tuple[str, str], ...] = ()  # (kind, name) of identity parts that changed

    @property
    def cached(self) -> int:
        return self.done + self.hits


@dataclasses.dataclass(frozen=True)
class Plan(Mapping[str, NodePlan]):
    """Per function node (by label, in run order), what the next run would do."""

    pipeline: str
    nodes: dict[str, NodePlan]

    def __getitem__(self, label: str) -> NodePlan:
        return self.nodes[label]

    def __iter__(self) -> Iterator[str]:
        return iter(self.nodes)

    def __len__(self) -> int:
        return len(self.nodes)

    def _repr_html_(self) -> str:
        return views.plan_html(self)

    def summary(self) -> pl.DataFrame:
        """One row per node: totals, cached, to compute, and the reasons."""
        return pl.DataFrame([{"node": p.label, "total": p.total, "cached": p.cached, "to_compute": p.to_compute,
                              "pending": p.pending,
                              "reasons": ", ".join(f"{k}: {v}" for k, v in sorted(p.reasons.items()))}
                             for p in self.nodes.values()],
                            schema={"node": pl.String, "total": pl.Int64, "cached": pl.Int64,
                                    "to_compute": pl.Int64, "pending": pl.Int64, "reasons": pl.String})


def plan_nodes(pipeline: str, specs: Mapping[str, NodeSpec]) -> Plan:
    """The plan of the nodes ``specs`` (label -> spec, in dependency order)."""
    planned: dict[NodeSpec, tuple[Status, int]] = {}
    nodes = {}
    for label, spec in specs.items():
        up = planned.get(spec.upstream) if spec.upstream is not None else None
        status = engine.read_status(spec, _after_run(up[0]) if up else None)
        pending = (up[0].to_compute + up[1]) if up else 0  # what upstream computes flows on
        nodes[label] = _node_plan(pipeline, label, spec, status, pending)
        planned[spec] = (status, pending)
    return Plan(pipeline, nodes)


def _after_run(status: Status) -> Status:
    """An upstream status as the run would leave it, as far as known without computing: cache
    hits become done (their values are in the store); entries to compute are pending."""
    found = status.found.with_columns((pl.col(DONE) | pl.col(HIT).is_not_null()).alias(DONE))
    return status.replace(found=found)


def _node_plan(pipeline: str, label: str, spec: NodeSpec, status: Status, pending: int) -> NodePlan:
    found = status.found
    todo = found.filter(pl.col(HIT).is_null())
    reasons, old = _reasons(spec, todo)
    counts = reasons[_REASON].value_counts()
    by_reason = dict(zip(counts[_REASON].to_list(), counts["count"].to_list(), strict=True))
    changes: set[tuple[str, str]] = set()
    for old_hash in old:  # which parts of the code changed, as recorded by the runs that used it
        changes.update(identity_change(spec.store, pipeline, label, spec.pod, old_hash) or ())
    return NodePlan(label=label, total=found.height + pending, done=status.done, hits=status.hits,
                    to_compute=todo.height, pending=pending, reasons=by_reason,
                    function_hash=spec.pod.identity.hash, old_function_hashes=old, entries=reasons,
                    identity_changes=tuple(sorted(changes)))


def _reasons(spec: NodeSpec, todo: pl.DataFrame) -> tuple[pl.DataFrame, tuple[str, ...]]:
    """Tags and reason of each entry to compute, and the function hashes that recorded them."""
    tags = list(spec.input.tag_columns)
    system = sorted(spec.input.system_tag_columns)
    rows = todo.select(
        *tags, (pl.struct(system).struct.json_encode() if system else pl.lit("{}")).alias(SYSTEM_TAGS),
        pl.Series(ENTRY_ID, keys_hex(todo[ENTRY_KEY])), pl.Series(PACKET_HASH, keys_hex(todo[KEY])))
    store = spec.store
    invalidated = _invalidated(spec, rows)
    failed = store.scan(FAILURES)
    failed = (pl.Series([], dtype=pl.String) if failed is None else failed.filter(
        pl.col("function_hash") == spec.pod.identity.hash).select(pl.col("packet_hash").bin.encode("hex"))
        .collect().to_series())
    prov = store.scan(spec.provenance_table, include_invalidated=True)
    if prov is None:
        previous = rows.select(*tags, SYSTEM_TAGS).with_columns(
            pl.lit(None, pl.String).alias("__old_packet"), pl.lit(None, pl.String).alias("__old_function"))
    else:
        live = prov.filter(pl.col(INVALIDATED_AT).is_null()).select(
            *tags, SYSTEM_TAGS, pl.col(PACKET_HASH).bin.encode("hex").alias("__old_packet"),
            pl.col(RECORD_ID).bin.encode("hex"), RECORDED_AT).collect()
        live = live.sort(RECORDED_AT).unique([*tags, SYSTEM_TAGS], keep="last", maintain_order=True)
        old_function = hash_keys(live[RECORD_ID]) ^ hash_keys(live["__old_packet"])
        previous = live.select(*tags, SYSTEM_TAGS, "__old_packet").with_columns(
            pl.Series("__old_function", keys_hex(old_function)))
    joined = rows.join(previous, on=[*tags, SYSTEM_TAGS], how="left", nulls_equal=True, maintain_order="left")
    reason = (pl.when(pl.col(ENTRY_ID).is_in(invalidated[0].implode())
                      | pl.col(PACKET_HASH).is_in(invalidated[1].implode())).then(pl.lit("invalidated"))
              .when(pl.col(PACKET_HASH).is_in(failed.implode())).then(pl.lit("previously failed"))
              .when(pl.col("__old_packet").is_null()).then(pl.lit("new input"))
              .when(pl.col("__old_packet") != pl.col(PACKET_HASH)).then(pl.lit("changed input"))
              .when(pl.col("__old_function") != spec.pod.identity.hash).then(pl.lit("code changed"))
              .otherwise(pl.lit("pipeline changed")))
    out = joined.with_columns(reason.alias(_REASON))
    old = out.filter(pl.col(_REASON) == "code changed")["__old_function"].unique().sort().to_list()
    return out.select(*tags, _REASON), tuple(old)


def _invalidated(spec: NodeSpec, rows: pl.DataFrame) -> tuple[pl.Series, pl.Series]:
    """Entry ids and packet hashes among ``rows`` whose provenance row or result was invalidated."""
    found = []
    for table, column in ((spec.provenance_table, ENTRY_ID), (spec.results_table, PACKET_HASH)):
        raw = spec.store.scan(table, include_invalidated=True)
        if raw is None:
            found.append(pl.Series(column, [], dtype=pl.String))
            continue
        hit = raw.filter(pl.col(INVALIDATED_AT).is_not_null()).select(pl.col(column).bin.encode("hex"))
        found.append(hit.join(rows.select(column).lazy(), on=column, how="semi").collect().to_series())
    return found[0], found[1]
