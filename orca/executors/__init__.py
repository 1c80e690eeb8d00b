"""Executors: where a function node's chunk function runs.

Executors compute; the driver process alone writes to the store. Every executor is an
immutable value (a frozen dataclass) with two methods: ``map_chunks(fn, table)`` yields
``fn(chunk)`` for adaptively sized chunks of ``table`` in completion order, and
``with_options(**options)`` returns a changed copy. Constructing or configuring one
starts no thread, process or cluster; that happens inside ``map_chunks``.

The engine's chunk function is an :class:`orca.calls.ChunkCall`, which also carries the
call's ``timeout`` and can record packets as failed (``failed``): executors use these to
refuse a timeout they cannot enforce, and (``ProcessExecutor``) to turn a worker that dies or
hangs into failure rows and to yield empty outputs as heartbeats while nothing finishes.
"""

from orca.executors._chunking import Executor
from orca.executors.local import (
    InProcessExecutor,
    ProcessExecutor,
    ThreadExecutor,
    run_async_rows,
)
from orca.executors.ray import RayExecutor

__all__ = [
    # protocol
    "Executor",
    # executors
    "InProcessExecutor",
    "ThreadExecutor",
    "ProcessExecutor",
    "RayExecutor",
    # helpers
    "run_async_rows",
]
