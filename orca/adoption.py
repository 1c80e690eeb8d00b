"""Adopting a compatible code change: the new function identity reuses the old one's results.

A refactor that keeps a function's outputs identical still changes its identity, so every
result would be computed again. ``pipeline.adopt(node)`` says the change is compatible: the
live results of the old function hash are copied into the new hash's results table (with the
new record ids and function hash; ``__computed_at`` and ``__duration_s`` kept), and one row in
the ``adoptions`` table records who adopted what, when, and which parts of the identity
changed. The next run then serves those packets from the store. Never silent: nothing is
adopted unless asked, and every adoption is in the audit table.
"""

from __future__ import annotations

import json

import polars as pl
import pyarrow as pa

from orca.engine import new_run_id, utc_now
from orca.errors import OrcaError
from orca.hashing import hash_keys
from orca.identity import Explanation, IdentityPart
from orca.names import (
    ADOPTIONS,
    ADOPTIONS_SCHEMA,
    COMPUTED_AT,
    DURATION,
    FUNCTION_HASH,
    PACKET_HASH,
    RECORD_ID,
    RUN_ID,
    RUNS,
    results_table,
)
from orca.pods import FunctionPod, result_record_ids
from orca.stores import Store
from orca.types import accepts

__all__ = ["adopt_results", "identity_change"]


def identity_change(store: Store, pipeline: str, node: str, pod: FunctionPod,
                    old_hash: str) -> list[tuple[str, str]] | None:
    """The parts of ``pod``'s identity (``(kind, name)``) that changed since runs of the node
    recorded ``old_hash`` (each ``node_finished`` event records the identity's parts); None
    when no run recorded them."""
    runs = store.scan(RUNS)
    if runs is None or "identity" not in runs.collect_schema().names():
        return None
    found = store.collect(RUNS, runs.filter(
        (pl.col("pipeline") == pipeline) & (pl.col("node") == node) & (pl.col("function_hash") == old_hash)
        & pl.col("identity").is_not_null()).select("identity"))
    if found.height == 0:
        return None
    parts = tuple(IdentityPart(**p) for p in json.loads(found["identity"][-1]))
    return pod.identity.explain().changed(Explanation(parts))


def adopt_results(store: Store, pipeline: str, node: str, pod: FunctionPod, old_hash: str,
                  changed: list[tuple[str, str]] | None = None) -> int:
    """Copy the live results of ``pod``'s function at ``old_hash`` to its current identity;
    returns the rows adopted (packets the new identity already has are left alone)."""
    new_hash = pod.identity.hash
    if old_hash == new_hash:
        raise OrcaError(f"node {node!r}: function {pod.name!r} is already at {new_hash[:12]}; nothing to adopt")
    source = results_table(pod.name, old_hash)
    old = store.scan(source)
    if old is None:
        raise OrcaError(f"node {node!r}: no results of function {pod.name!r} at {old_hash!r} ({store.uri(source)})")
    schema = store.collect(source, old.head(0)).to_arrow().schema
    missing = [f.name for f in pod.output_fields if f.name not in schema.names]
    retyped = [f.name for f in pod.output_fields if f.name in schema.names
               and not accepts(f.type, schema.field(f.name).type)]
    if missing or retyped:
        raise OrcaError(f"node {node!r}: the old results of {pod.name!r} cannot be adopted: outputs "
                        f"{missing} missing, {retyped} of another type (an output change is not compatible)")
    outputs = [f.name for f in pod.output_fields]
    rows = store.collect(source, old.select(*outputs, PACKET_HASH, COMPUTED_AT, DURATION))
    have = store.keys(pod.results_table)
    if have is not None and have.len():
        rows = rows.filter(~hash_keys(rows[PACKET_HASH]).is_in(hash_keys(have).implode()))
    run_id = f"adopt-{new_run_id()}"
    if rows.height:
        packets = rows[PACKET_HASH].to_arrow()
        table = pa.table({
            **{c: rows[c].to_arrow() for c in outputs},
            PACKET_HASH: packets,
            RECORD_ID: result_record_ids(new_hash, packets),
            FUNCTION_HASH: pa.repeat(pa.scalar(new_hash, pa.large_string()), rows.height),
            COMPUTED_AT: rows[COMPUTED_AT].to_arrow(),
            DURATION: rows[DURATION].to_arrow(),
            RUN_ID: pa.repeat(pa.scalar(run_id, pa.large_string()), rows.height),
        })
        store.append(pod.results_table, table, key=[PACKET_HASH])
    audit = {"pipeline": pipeline, "node": node, "function": pod.name, "old_function_hash": old_hash,
             "new_function_hash": new_hash, "rows": rows.height,
             "changed": json.dumps([list(k) for k in changed]) if changed is not None else None,
             "adopted_at": utc_now()}
    store.append(ADOPTIONS, pa.Table.from_pylist([audit], schema=ADOPTIONS_SCHEMA))
    store.flush()
    return rows.height
