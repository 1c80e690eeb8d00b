"""Function pods: plain Python functions lifted to map packets to packets.

>>> import orca
>>> @orca.function_pod(output_keys="z")
... def add(x: float, y: int) -> float:
...     return x * 2 + y
>>> add(1.5, 1)                      # still a plain function
4.0
>>> src = orca.DictSource([{"id": 1, "x": 1.5, "y": 1}], tags=["id"], source_id="demo")
>>> add.pod(src).to_polars()
shape: (1, 2)
┌─────┬─────┐
│ id  ┆ z   │
│ --- ┆ --- │
│ i64 ┆ f64 │
╞═════╪═════╡
│ 1   ┆ 4.0 │
└─────┴─────┘

The function's parameters name the packet columns it reads; its annotations give the Arrow
schema of inputs and outputs. A pod's identity (``pod.identity``) is its name, version, a
hash of its normalised source (AST without docstrings or comments) and its output schema.
"""

from __future__ import annotations

import binascii
import inspect
import typing
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from orca import _context
from orca.calls import compute_all, input_packets
from orca.errors import IdentityWarning, PodError, SchemaError
from orca.hashing import (
    digests_binary,
    hash_bytes,
    hash_packet_keys,
    hex_digests,
    id_digests,
    is_path_field,
    key_digests,
)
from orca.identity import FunctionIdentity, function_identity
from orca.names import KEY, results_table, source_column
from orca.streams import Stream
from orca.types import accepts, arrow_field

__all__ = ["function_pod", "FunctionPod", "FunctionIdentity", "apply_pod"]


def _output_annotations(fn: Callable, hints: dict, keys: tuple[str, ...], output_types: Mapping | None) -> dict:
    if output_types is not None:
        missing = [k for k in keys if k not in output_types]
        if missing:
            raise PodError(f"function {fn.__name__!r}: output_types lacks output key(s) {missing}")
        return {k: output_types[k] for k in keys}
    if "return" not in hints:
        raise PodError(f"function {fn.__name__!r} has no return annotation; annotate it or pass output_types=")
    ret = hints["return"]
    if len(keys) == 1:
        return {keys[0]: ret}
    if typing.get_origin(ret) is tuple:
        args = typing.get_args(ret)
        if len(args) != len(keys) or Ellipsis in args:
            raise PodError(f"function {fn.__name__!r}: return annotation {ret!r} does not match output keys {list(keys)}")
        return dict(zip(keys, args, strict=True))
    if isinstance(ret, type) and issubclass(ret, dict) and hasattr(ret, "__annotations__"):
        fields = typing.get_type_hints(ret)
        missing = [k for k in keys if k not in fields]
        if missing:
            raise PodError(f"function {fn.__name__!r}: return type {ret.__name__} lacks output key(s) {missing}")
        return {k: fields[k] for k in keys}
    raise PodError(
        f"function {fn.__name__!r} has several output keys {list(keys)}: annotate the return as "
        "tuple[...] or a TypedDict, or pass output_types="
    )


class FunctionPod:
    """A function lifted to map each packet of a stream to an output packet.

    Build one with :func:`function_pod`. ``pod(stream)`` returns a lazy stream with the input's
    tags and the outputs as packet; ``pod.cached(store)`` adds a result cache.
    """

    def __init__(
        self,
        function: Callable,
        *,
        output_keys: str | Sequence[str],
        version: str = "1",
        name: str | None = None,
        code_hash: bool = True,
        input_types: Mapping[str, Any] | None = None,
        output_types: Mapping[str, Any] | None = None,
        deps: Sequence[Any] = (),
        timeout: float | None = None,
    ) -> None:
        self.function = function
        self.timeout = check_timeout(timeout)  # how long a call may take; not part of the identity
        self.name = name or function.__name__
        self.version = str(version)
        self.output_keys: tuple[str, ...] = (output_keys,) if isinstance(output_keys, str) else tuple(output_keys)
        if not self.output_keys or len(set(self.output_keys)) != len(self.output_keys):
            raise PodError(f"function {self.name!r}: output_keys must be distinct and non-empty, got {output_keys!r}")
        bad = [k for k in self.output_keys if k.startswith("__")]
        if bad:
            raise PodError(f"function {self.name!r}: output keys may not start with '__': {bad}")
        self.is_async = inspect.iscoroutinefunction(function)

        signature = inspect.signature(function)
        varargs = [p.name for p in signature.parameters.values() if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
        if varargs:
            raise PodError(f"function {self.name!r}: *args/**kwargs ({varargs}) cannot name packet columns")
        try:
            hints = typing.get_type_hints(function)
        except Exception as exc:  # unresolvable forward references
            raise PodError(f"function {self.name!r}: cannot resolve annotations: {exc}") from exc
        hints.update(input_types or {})
        self.parameters: dict[str, Any] = {}
        self.defaults: dict[str, Any] = {}
        self.positional = all(p.kind == p.POSITIONAL_OR_KEYWORD for p in signature.parameters.values())
        for p in signature.parameters.values():
            if p.name not in hints:
                raise PodError(f"function {self.name!r}: parameter {p.name!r} has no annotation; annotate it or pass input_types=")
            self.parameters[p.name] = hints[p.name]
            if p.default is not p.empty:
                self.defaults[p.name] = p.default
        try:
            self.input_fields = {n: arrow_field(n, t) for n, t in self.parameters.items()}
            self.output_fields = [arrow_field(k, t) for k, t in
                                  _output_annotations(function, hints, self.output_keys, output_types).items()]
        except SchemaError as exc:
            raise PodError(f"function {self.name!r}: {exc}") from exc

        self.deps = tuple(deps)
        self.identity = function_identity(function, name=self.name, version=self.version, code_hash=code_hash,
                                          output_fields=self.output_fields, deps=self.deps)

    @property
    def output_schema(self) -> pa.Schema:
        return pa.schema(self.output_fields)

    @property
    def results_table(self) -> str:
        """Store table holding this function's results (see docs/stores.md)."""
        return results_table(self.name, self.identity.hash)

    def __repr__(self) -> str:
        return (f"FunctionPod({self.name!r}, version={self.version!r}, inputs={list(self.parameters)}, "
                f"outputs={list(self.output_keys)}, hash={self.identity.hash[:12]})")

    # -- applying to streams --------------------------------------------------------------
    def check_input(self, stream: Stream) -> None:
        """Every parameter without a default must name a packet column of ``stream`` whose type
        the parameter's annotation can take."""
        clash = [k for k in self.output_keys if k in stream.tag_columns]
        if clash:
            raise PodError(f"function {self.name!r}: output key(s) {clash} are tag columns of the input stream")
        missing = [p for p in self.parameters if p not in stream.packet_columns and p not in self.defaults]
        if missing:
            raise PodError(f"function {self.name!r} reads packet column(s) {missing} that the input stream lacks; "
                           f"its packet columns are {list(stream.packet_columns)}")
        schema = stream.full_schema
        for name, field in self.input_fields.items():
            if name in stream.packet_columns and not accepts(field.type, schema.field(name).type):
                raise PodError(f"function {self.name!r}: parameter {name!r} is annotated "
                               f"{_annotation_name(self.parameters[name])} ({field.type}) but packet column "
                               f"{name!r} holds {schema.field(name).type}")
            if name in stream.packet_columns and is_path_field(field) and name not in stream.path_columns:
                self._warn_unmarked(name)

    def _warn_unmarked(self, parameter: str) -> None:
        """Warn, once per process and parameter, that a ``Path`` parameter reads a column not
        marked as paths (it is not marked for it: a function may only write to the path given)."""
        key = (self.identity.hash, parameter)
        if key in _WARNED:
            return
        _WARNED.add(key)
        code = getattr(self.function, "__code__", None)
        warnings.warn_explicit(
            f"function {self.name!r}: parameter {parameter!r} is annotated "
            f"{_annotation_name(self.parameters[parameter])} but the packet column it reads is not a path "
            "column, so its packets hash the names, not the files: an edited file is not computed again. Mark "
            "it as paths (a Path value, or path_columns=[...] on the source), or annotate the parameter str if "
            "the function does not read the files.", IdentityWarning,
            code.co_filename if code else "<unknown>", code.co_firstlineno if code else 1)

    @property
    def path_outputs(self) -> list[str]:
        """Output keys declared as ``pathlib.Path``."""
        return [f.name for f in self.output_fields if is_path_field(f)]

    def stream_identity(self, stream: Stream) -> str:
        """Identity of this pod's output over ``stream`` (structural, like every stream identity)."""
        return hash_bytes(f"pod\x00{self.identity.hash}\x00{stream.identity}".encode())

    def output_stream(self, stream: Stream, frame: Callable[[], pl.DataFrame], producer: Any) -> Stream:
        """The (lazy) stream of this pod's outputs over ``stream``.

        ``frame`` computes the tags, system tags and outputs, plus ``__hash_key`` (each row's
        input packet hash, see :func:`orca.hashing.hash_keys`). The ``__source__<output>``
        references are derived from it lazily: only when a collect asks for system columns.
        """
        schema = self.output_stream_schema(stream)
        sources = [source_column(k) for k in self.output_keys]
        base = {n: t for n, t in pl.from_arrow(schema.empty_table()).schema.items() if n not in sources}
        refs = pl.col(KEY).map_batches(
            lambda keys: pl.Series(result_references(self, keys)), return_dtype=pl.String)
        lazy = pl.defer(frame, schema={**base, KEY: pl.UInt128})
        lazy = lazy.with_columns(refs.alias(s) for s in sources).drop(KEY)
        return Stream(lazy, tag_columns=stream.tag_columns, packet_columns=self.output_keys,
                      path_columns=self.path_outputs, schema=schema,
                      identity=self.stream_identity(stream), producer=producer)

    def output_stream_schema(self, stream: Stream) -> pa.Schema:
        full = stream.full_schema
        fields = [full.field(n) for n in (*stream.tag_columns, *stream.system_tag_columns)]
        fields += self.output_fields
        fields += [pa.field(source_column(k), pa.large_string()) for k in self.output_keys]
        return pa.schema(fields)

    def __call__(self, *streams: Stream) -> Stream:
        """Apply the pod to a stream (several streams are joined on their shared tags first).

        Every row is computed in process when the output is collected; a failure raises,
        naming the tag. ``pod.cached(store)`` stores results instead.
        """
        return apply_pod(self, self, streams, self._compute)

    def _compute(self, stream: Stream) -> pl.DataFrame:
        frame = stream.to_polars(include_system=True)
        outputs = compute_all(self, frame, stream.tag_columns, stream.path_columns)
        keys = hash_packet_keys(input_packets(self, frame, stream.path_columns)).alias(KEY)
        return frame.select(*stream.tag_columns, *stream.system_tag_columns).with_columns(
            *(pl.Series(k, outputs.column(k)) for k in self.output_keys), keys)

    def cached(self, store: Any = None, **options: Any):
        """Shorthand for :class:`orca.CachedFunctionPod` ``(self, store=store, **options)``."""
        from orca.cache import CachedFunctionPod  # cache sits above pods; avoid an import cycle

        return CachedFunctionPod(self, store=store, **options)


def function_pod(
    output_keys: str | Sequence[str],
    *,
    version: str = "1",
    name: str | None = None,
    code_hash: bool = True,
    input_types: Mapping[str, Any] | None = None,
    output_types: Mapping[str, Any] | None = None,
    deps: Sequence[Any] = (),
    timeout: float | None = None,
) -> Callable[[Callable], Callable]:
    """Decorate a function to make it a function pod, available as ``f.pod``.

    Parameters
    ----------
    output_keys
        Name(s) of the output packet columns. With several, the function returns a tuple (in
        this order) or a dict with these keys.
    version
        Bump it to recompute results although the code did not change.
    name
        Defaults to the function's name; names the result table.
    code_hash
        ``False`` pins the identity to name + version (edits then reuse old results).
    input_types, output_types
        Annotations for parameters / outputs the function does not annotate itself.
    deps
        What the function depends on that its code does not show (see
        ``docs/pods-and-caching.md``); part of its identity.
    timeout
        Seconds each call may take; a call that runs longer is a failure (``TimeoutError``)
        and the run goes on as ``on_error`` says. A run's ``timeout=`` overrides it. Not part
        of the identity. See ``docs/executors.md`` for what each executor can interrupt.
    """

    def decorate(function: Callable) -> Callable:
        if inspect.ismethod(function):  # a bound method takes no new attributes
            raise PodError(f"cannot decorate the bound method {function.__qualname__!r} (a method object "
                           f"takes no .pod attribute); build the pod with orca.FunctionPod(obj.method, "
                           f"output_keys=...) instead")
        function.pod = FunctionPod(function, output_keys=output_keys, version=version, name=name,
                                   code_hash=code_hash, input_types=input_types, output_types=output_types,
                                   deps=deps, timeout=timeout)
        return function

    return decorate


def check_timeout(timeout: float | None) -> float | None:
    """``timeout`` if it is None or a number of seconds > 0, else a ``ValueError``."""
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, int | float)
                                or not timeout > 0):
        raise ValueError(f"timeout must be None or a number of seconds > 0, got {timeout!r}")
    return timeout


def _annotation_name(annotation: Any) -> str:
    return getattr(annotation, "__name__", None) or str(annotation)


_WARNED: set[tuple[str, str]] = set()  # (pod identity, parameter) warned of a column not marked as paths


def apply_pod(producer: Any, pod: FunctionPod, streams: Sequence[Stream],
              compute: Callable[[Stream], pl.DataFrame]) -> Stream:
    """Apply ``producer`` (``pod`` itself or a cached pod) to ``streams``: the one way a pod is
    applied. Checks the input at once; ``compute(stream)`` runs only when the output is collected.
    """
    if not streams:
        raise PodError(f"function {pod.name!r}: apply it to a stream, e.g. {pod.name}.pod(source)")
    bad = [type(s).__name__ for s in streams if not isinstance(s, Stream)]
    if bad:
        raise PodError(f"function {pod.name!r} takes streams, got {bad}")
    stream = streams[0].join(*streams[1:]) if len(streams) > 1 else streams[0]
    pod.check_input(stream)
    output = pod.output_stream(stream, lambda: compute(stream), producer=producer)
    return _context.recorded(_context.Application(producer, (stream,), output))


def result_references(pod: FunctionPod, keys: pl.Series) -> pa.Array:
    """``"<results table>#<record id>"`` for each input packet hash key (see :func:`hash_keys`),
    the record id in hex."""
    # Every reference has one length: the text is laid out in one numpy buffer (a per-row join
    # cost ~0.1 s per million).
    prefix = np.frombuffer((pod.results_table + "#").encode(), np.uint8)
    digests = _record_digests(pod.identity.hash, key_digests(keys))
    n, width = len(digests), len(prefix) + 32
    text = np.empty((n, width), np.uint8)
    text[:, :len(prefix)] = prefix
    text[:, len(prefix):] = np.frombuffer(binascii.hexlify(np.ascontiguousarray(digests).tobytes()), np.uint8
                                          ).reshape(n, 32)
    offsets = np.arange(0, width * (n + 1), width, dtype=np.int64)
    return pa.Array.from_buffers(pa.large_string(), n, [None, pa.py_buffer(offsets), pa.py_buffer(text)])


def result_record_ids(function_hash: str, packet_hashes: pa.Array | pl.Series | np.ndarray) -> pa.Array:
    """Record id of each result row, 16 bytes as stored: the 128-bit XOR of function hash and
    input packet hash.

    Unique within a result table (a fixed XOR is a bijection) and, like a hash, across tables;
    computed in one vectorised pass. ``packet_hashes``: ids as stored or as hex (see
    :func:`orca.hashing.id_digests`), or an ``(n, 16)`` uint8 array of digests.

    >>> result_record_ids("0" * 31 + "1", pa.array(["f" * 32])).to_pylist()[0].hex()
    'fffffffffffffffffffffffffffffffe'
    """
    return digests_binary(_record_digests(function_hash, packet_hashes))


def _record_digests(function_hash: str, packet_hashes: pa.Array | pl.Series | np.ndarray) -> np.ndarray:
    packets = packet_hashes if isinstance(packet_hashes, np.ndarray) else id_digests(packet_hashes)
    return packets ^ hex_digests(pa.array([function_hash]))
