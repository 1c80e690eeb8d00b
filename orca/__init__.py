"""orca: reproducible, incremental data pipelines on Arrow tables.

Public API, grouped. Everything here is documented in ``docs/``. Names are imported when first
used (PEP 562), so that ``import orca`` -- and the ``orca`` command -- stays quick; ``import
orca.<module>`` works as usual.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # (for type checkers and editors: the same names, imported eagerly)
    from orca import deps
    from orca.cache import CachedFunctionPod, Counts, new_run_id
    from orca.errors import (
        ExecutorError,
        HashingError,
        IdentityWarning,
        OrcaError,
        PodError,
        SchemaError,
        SourceError,
        StoreError,
    )
    from orca.executors import InProcessExecutor, ProcessExecutor, RayExecutor, ThreadExecutor
    from orca.hashing import hash_file, hash_packet, hash_packets
    from orca.identity import FunctionIdentity
    from orca.nodes import FunctionNode
    from orca.pipeline import OperatorNode, Pipeline, RunResult
    from orca.plan import NodePlan, Plan
    from orca.pods import FunctionPod, function_pod
    from orca.runs import RunHandle
    from orca.sources import (
        ArrowSource,
        CSVSource,
        DeltaSource,
        DictSource,
        GlobSource,
        ParquetSource,
        PolarsSource,
        Source,
    )
    from orca.stores import DeltaStore, MemoryStore, Store, default_store
    from orca.streams import Stream

_EXPORTS = {
    **dict.fromkeys(['deps'], 'orca.deps'),
    **dict.fromkeys(['CachedFunctionPod', 'Counts', 'new_run_id'], 'orca.cache'),
    **dict.fromkeys(['ExecutorError', 'HashingError', 'IdentityWarning', 'OrcaError', 'PodError', 'SchemaError', 'SourceError', 'StoreError'], 'orca.errors'),
    **dict.fromkeys(['InProcessExecutor', 'ProcessExecutor', 'RayExecutor', 'ThreadExecutor'], 'orca.executors'),
    **dict.fromkeys(['hash_file', 'hash_packet', 'hash_packets'], 'orca.hashing'),
    **dict.fromkeys(['FunctionIdentity'], 'orca.identity'),
    **dict.fromkeys(['FunctionNode'], 'orca.nodes'),
    **dict.fromkeys(['OperatorNode', 'Pipeline', 'RunResult'], 'orca.pipeline'),
    **dict.fromkeys(['NodePlan', 'Plan'], 'orca.plan'),
    **dict.fromkeys(['FunctionPod', 'function_pod'], 'orca.pods'),
    **dict.fromkeys(['RunHandle'], 'orca.runs'),
    **dict.fromkeys(['ArrowSource', 'CSVSource', 'DeltaSource', 'DictSource', 'GlobSource', 'ParquetSource', 'PolarsSource', 'Source'], 'orca.sources'),
    **dict.fromkeys(['DeltaStore', 'MemoryStore', 'Store', 'default_store'], 'orca.stores'),
    **dict.fromkeys(['Stream'], 'orca.streams'),
}

__version__ = "0.1.0"

__all__ = [
    # errors
    "OrcaError", "HashingError", "SchemaError", "SourceError", "PodError", "StoreError", "ExecutorError",
    "IdentityWarning",
    # hashing
    "hash_packet", "hash_packets", "hash_file",
    # streams and sources
    "Stream", "Source", "DictSource", "ArrowSource", "PolarsSource", "CSVSource", "ParquetSource",
    "DeltaSource", "GlobSource",
    # pods, caching, nodes
    "function_pod", "FunctionPod", "FunctionIdentity", "deps", "CachedFunctionPod", "FunctionNode", "Counts",
    # pipelines
    "Pipeline", "OperatorNode", "RunResult", "RunHandle", "new_run_id", "Plan", "NodePlan",
    # stores
    "Store", "DeltaStore", "MemoryStore", "default_store",
    # executors
    "InProcessExecutor", "ThreadExecutor", "ProcessExecutor", "RayExecutor",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        try:  # a submodule not imported yet: orca.engine, orca.hashing, ...
            return importlib.import_module(f"orca.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'orca' has no attribute {name!r}") from None
    value = importlib.import_module(module)
    if module != f"orca.{name}":
        value = getattr(value, name)
    globals()[name] = value  # the next access is a plain attribute lookup
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
