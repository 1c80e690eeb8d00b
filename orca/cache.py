"""The cached function pod: a result computed once is never computed again.

Results live in the store table ``results/<function name>/<function hash>``, one row per
input packet hash (the hash of the packet columns the function reads). Collecting a cached
pod's output runs it through the engine (:mod:`orca.engine`) as a node without provenance:
hash the input, look every packet up in one join, compute only the misses, then serve what the
store holds. A function that raises writes no result, only a row in the ``failures`` table,
so the next run tries that packet again. See ``docs/pods-and-caching.md``.

>>> import orca
>>> @orca.function_pod(output_keys="z")
... def double(x: int) -> int:
...     return 2 * x
>>> store = orca.MemoryStore()
>>> src = orca.DictSource([{"id": i, "x": i % 2} for i in range(4)], tags=["id"], source_id="d")
>>> double.pod.cached(store)(src).to_polars()["z"].to_list()
[0, 2, 0, 2]
>>> len(store.scan(double.pod.results_table).collect())   # 4 rows, 2 distinct packets
2
"""

from __future__ import annotations

import dataclasses
from typing import Any

import polars as pl

from orca import engine
from orca.engine import Counts, OnError, RunOptions, new_run_id
from orca.errors import PodError
from orca.executors import Executor, InProcessExecutor
from orca.identity import FunctionIdentity
from orca.pods import FunctionPod, apply_pod
from orca.stores import Store, default_store
from orca.streams import Stream

__all__ = ["CachedFunctionPod", "Counts", "new_run_id"]


class CachedFunctionPod:
    """A function pod whose results are stored and never computed twice.

    Parameters
    ----------
    pod
        The function pod (``f.pod``).
    store
        Where results and failures go; default :func:`orca.default_store`.
    on_error
        ``"raise"``: commit what succeeded, then raise :class:`orca.PodError` naming the tag.
        ``"continue"``: skip failed rows (they are recorded in ``failures``).
    retries
        Retry a failing call this many times, in process, with exponential backoff.
    executor
        Where calls run (default in process).
    batch_rows
        Packets computed per batch: results are committed, and the store is checked for
        results other processes committed, between batches.
    recheck_seconds
        How often (at most) a long run looks for results other processes committed meanwhile.
    timeout
        Seconds each call may take (overrides the pod's ``timeout``); a call that runs longer
        is a failure row (``TimeoutError``). See ``docs/executors.md``.

    Notes
    -----
    Constructing one performs no I/O.
    """

    def __init__(self, pod: FunctionPod, *, store: Store | None = None, on_error: OnError = "raise",
                 retries: int = 0, executor: Executor | None = None, batch_rows: int = 100_000,
                 recheck_seconds: float = 10.0, timeout: float | None = None) -> None:
        if not isinstance(pod, FunctionPod):
            raise PodError(f"CachedFunctionPod needs a FunctionPod (f.pod), got {type(pod).__name__}")
        self.pod = pod
        self.store = store if store is not None else default_store()
        self.executor = executor or InProcessExecutor()
        # Validated now (RunOptions checks them), kept as the defaults of every run.
        self._defaults = RunOptions("", self.executor, on_error, retries, batch_rows=batch_rows,
                                    recheck_seconds=recheck_seconds, timeout=timeout)

    @property
    def on_error(self) -> OnError:
        return self._defaults.on_error

    @property
    def retries(self) -> int:
        return self._defaults.retries

    @property
    def identity(self) -> FunctionIdentity:
        return self.pod.identity

    @property
    def results_table(self) -> str:
        return self.pod.results_table

    def options(self, run_id: str | None = None, **overrides: Any) -> RunOptions:
        """The options of one run: this pod's settings with ``overrides`` (None: keep)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self._defaults, run_id=run_id or new_run_id(), **changes)

    def with_options(self, **options: Any) -> CachedFunctionPod:
        """A copy with some of ``store``, ``on_error``, ``retries``, ``executor``, ``batch_rows``,
        ``recheck_seconds``, ``timeout`` changed."""
        d = self._defaults
        current = dict(store=self.store, on_error=d.on_error, retries=d.retries, executor=self.executor,
                       batch_rows=d.batch_rows, recheck_seconds=d.recheck_seconds, timeout=d.timeout)
        unknown = sorted(set(options) - set(current))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; valid: {sorted(current)}")
        return CachedFunctionPod(self.pod, **{**current, **options})

    def __repr__(self) -> str:
        return f"CachedFunctionPod({self.pod.name!r}, store={self.store.location!r}, on_error={self.on_error!r})"

    def __call__(self, *streams: Stream) -> Stream:
        """Apply to a stream: a lazy stream of tags + outputs, computing only what is new."""
        return apply_pod(self, self.pod, streams, self._output)

    def _output(self, stream: Stream) -> pl.DataFrame:
        spec = engine.NodeSpec(self.pod, stream, self.store)
        run = engine.run(spec, self.options())
        return engine.output_frame(spec, run.status)
