"""orca: reproducible, incremental data pipelines on Arrow tables.

Public API, grouped. Everything here is documented in ``docs/``.
"""

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
