"""Helpers shared by several test modules."""

from __future__ import annotations

import datetime
import importlib.util
import multiprocessing
import pathlib
import sys
import textwrap
import types

import pyarrow as pa

from orca.pods import result_record_ids


def result_row(fn, packet_hash: str, outputs: dict, run_id: str = "other") -> pa.Table:
    """One results-table row for ``fn`` (a decorated function), as another writer would append it
    (``packet_hash`` in hex; ids are stored as 16 bytes)."""
    return pa.table({
        **{k: [v] for k, v in outputs.items()},
        "__packet_hash": pa.array([bytes.fromhex(packet_hash)], pa.binary()),
        "__record_id": result_record_ids(fn.pod.identity.hash, pa.array([packet_hash])),
        "__function_hash": [fn.pod.identity.hash],
        "__computed_at": pa.array([datetime.datetime.now(datetime.UTC)], pa.timestamp("us", tz="UTC")),
        "__duration_s": [0.0],
        "__run_id": [run_id],
    })


# deltalake cannot be used after fork: processes that use a store are spawned.
SPAWN = multiprocessing.get_context("spawn")


def load_module(folder: pathlib.Path, name: str, source: str) -> types.ModuleType:
    """Write ``source`` to ``folder/<name>.py`` and import it as module ``name`` (registered in
    ``sys.modules``, so ``inspect.getsource`` finds its functions)."""
    path = folder / f"{name}.py"
    path.write_text(textwrap.dedent(source))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
