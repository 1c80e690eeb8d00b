"""The operator base class and the helpers operators share (see :mod:`orca.operators`)."""

from __future__ import annotations

import abc
import dataclasses
import inspect
import json
import re
import textwrap
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from orca._context import Application, recorded
from orca.errors import OrcaError, SchemaError
from orca.hashing import hash_bytes
from orca.names import SYSTEM_PREFIX

if TYPE_CHECKING:  # streams import operators (for Stream.join & co.), never the reverse
    from orca.streams import Stream

_IDENTITY_VERSION = "orca-op-1"
TMP = "__orca_"  # prefix of temporary columns; never left in an output


def arrow_schema_of(frame_schema: Mapping[str, pl.DataType]) -> pa.Schema:
    """The Arrow schema Polars produces for a frame with this Polars schema."""
    return pl.DataFrame(schema=dict(frame_schema)).to_arrow().schema


def is_stream(value: object) -> bool:
    """Whether ``value`` is an orca stream (checked by shape: see ``Stream.derive``)."""
    return callable(getattr(value, "derive", None)) and hasattr(value, "tag_columns")


def canonical(value: Any) -> bytes:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def normalise_names(value: str | Sequence[str], what: str) -> tuple[str, ...]:
    """Normalise a name or a sequence of names to a tuple; repeats are an error."""
    names = (value,) if isinstance(value, str) else tuple(value)
    bad = [n for n in names if not isinstance(n, str)]
    if bad:
        raise SchemaError(f"{what}: column names must be strings, got {bad!r}")
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise SchemaError(f"{what}: column names repeat: {repeated}")
    return names


def check_known(names: Sequence[str], valid: Sequence[str], what: str, kind: str) -> None:
    missing = [n for n in names if n not in valid]
    if missing:
        raise SchemaError(f"{what}: unknown {kind} column(s) {missing}; {kind} columns are {list(valid)}")


def expr_json(expr: pl.Expr, what: str) -> str:
    """A stable text form of a Polars expression (stable within one Polars version)."""
    if not isinstance(expr, pl.Expr):
        raise SchemaError(f"{what}: expected a Polars expression, got {type(expr).__name__}")
    text = expr.meta.serialize(format="json")
    if '"AnonymousFunction"' in text or '"PythonUDF"' in text:
        raise OrcaError(
            f"{what}: the expression calls a Python function (map_elements/map_batches), so it has "
            "no stable identity; use native Polars expressions, or MapTags(fn) to derive a tag first"
        )
    return text


def check_expr(expr: pl.Expr, valid: Sequence[str], what: str, kind: str) -> None:
    """The expression must name its columns explicitly, and only columns in ``valid``."""
    if not isinstance(expr, pl.Expr):
        raise SchemaError(f"{what}: expected a Polars expression, got {type(expr).__name__}")
    if expr.meta.has_multiple_outputs():
        raise SchemaError(f"{what}: name the columns explicitly (no pl.all(), regex or selectors); "
                          f"{kind} columns are {list(valid)}")
    roots = expr.meta.root_names()
    system = [n for n in roots if n.startswith(SYSTEM_PREFIX)]
    if system:
        raise SchemaError(f"{what}: system columns {system} cannot be referenced; "
                          f"{kind} columns are {list(valid)}")
    check_known(roots, valid, what, kind)


def fn_identity(fn: Callable) -> dict[str, str]:
    """Name and source hash of a Python function (its bytecode when the source is unavailable)."""
    name = f"{getattr(fn, '__module__', '')}.{getattr(fn, '__qualname__', type(fn).__name__)}"
    try:
        text = textwrap.dedent(inspect.getsource(fn)).encode()
    except (OSError, TypeError):
        code = getattr(fn, "__code__", None)
        if code is None:
            raise OrcaError(f"MapTags: cannot compute an identity for {fn!r} (no source, no code)") from None
        text = code.co_code + repr(code.co_consts).encode()
    return {"name": name, "source": hash_bytes(text)}


def fresh_name(name: str, taken: set[str]) -> str:
    """``name`` with the first free ``__<n>`` suffix (an existing suffix is replaced)."""
    base = re.sub(r"__\d+$", "", name)
    n = 1
    while f"{base}__{n}" in taken:
        n += 1
    return f"{base}__{n}"


class Operator(abc.ABC):
    """Base of every operator: a frozen dataclass of parameters, applied by calling it.

    Subclasses implement ``_apply(*streams) -> Stream``; ``_params()`` gives the canonical
    (JSON) form of the parameters that ``identity`` hashes.
    """

    arity: tuple[int, int | None] = (1, 1)  # (min, max) number of input streams

    @property
    def identity(self) -> str:
        """Hash of the operator's class name and canonical parameters."""
        return hash_bytes(canonical([_IDENTITY_VERSION, type(self).__name__, self._params()]))

    def _params(self) -> Any:
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}

    def __call__(self, *streams: Stream) -> Stream:
        name = type(self).__name__
        low, high = self.arity
        if len(streams) < low or (high is not None and len(streams) > high):
            want = f"{low}" if low == high else f"at least {low}" if high is None else f"{low}-{high}"
            raise TypeError(f"{name} takes {want} stream(s), got {len(streams)}")
        bad = [type(s).__name__ for s in streams if not is_stream(s)]
        if bad:
            raise TypeError(f"{name} takes Streams, got {bad}")
        return self._apply(*streams)

    @abc.abstractmethod
    def _apply(self, *streams: Stream) -> Stream:
        """Build the output stream (each operator's own logic)."""

    def _output(
        self,
        inputs: Sequence[Stream],
        build: Callable[..., pl.LazyFrame],
        *,
        tags: Sequence[str],
        packets: Sequence[str],
        paths: Sequence[str] = (),
        run: Callable[..., pl.DataFrame] | None = None,
    ) -> Stream:
        """The output stream: ``build`` applied to the inputs' ``LazyFrame`` s.

        Nothing is computed: the schema comes from the plan. ``run`` (which returns a
        ``DataFrame``) replaces the plan when collecting must do more than Polars can express
        lazily, e.g. raise on duplicates; it is called each time the stream is collected.
        """
        frames = [s.lazy(include_system=True) for s in inputs]
        plan = build(*frames)
        try:
            schema = arrow_schema_of(plan.collect_schema())
        except pl.exceptions.PolarsError as exc:
            raise SchemaError(f"{type(self).__name__}: {exc}") from exc
        frame: pl.LazyFrame | Callable[[], pl.DataFrame] = plan
        if run is not None:
            def frame() -> pl.DataFrame:
                return run(*frames).select(schema.names)

        identity = hash_bytes(canonical([self.identity, [s.identity for s in inputs]]))
        output = inputs[0].derive(frame, tag_columns=tags, packet_columns=packets, path_columns=paths,
                                  identity=identity, schema=schema, producer=self)
        return recorded(Application(self, tuple(inputs), output))


def dtypes_of(stream: Stream) -> dict[str, Any]:
    """Polars type of every column of ``stream`` (system columns included)."""
    return dict(stream.lazy(include_system=True).collect_schema())
