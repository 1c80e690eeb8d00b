"""Helpers shared by several test modules."""

from __future__ import annotations

import datetime

import pyarrow as pa

from orca.pods import result_record_ids


def result_row(fn, packet_hash: str, outputs: dict, run_id: str = "other") -> pa.Table:
    """One results-table row for ``fn`` (a decorated function), as another writer would append it."""
    return pa.table({
        **{k: [v] for k, v in outputs.items()},
        "__packet_hash": [packet_hash],
        "__record_id": result_record_ids(fn.pod.identity.hash, pa.array([packet_hash])),
        "__function_hash": [fn.pod.identity.hash],
        "__computed_at": pa.array([datetime.datetime.now(datetime.UTC)], pa.timestamp("us", tz="UTC")),
        "__duration_s": [0.0],
        "__run_id": [run_id],
    })
