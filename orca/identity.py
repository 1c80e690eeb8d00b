"""A function's identity, for caching: name, version, code hash and output schema.

Results are keyed by ``identity.hash`` + the input packet hash, so everything that can change
what a function returns must reach the identity. See ``docs/pods-and-caching.md``.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
from collections.abc import Callable, Sequence
from typing import Any

import pyarrow as pa

from orca.errors import PodError
from orca.hashing import hash_bytes, is_path_field

__all__ = ["FunctionIdentity", "function_identity"]


@dataclasses.dataclass(frozen=True)
class FunctionIdentity:
    """Who a function is, for caching: results are keyed by ``hash`` + input packet hash."""

    name: str
    version: str
    code_hash: str | None
    output_schema: str
    hash: str


def function_identity(function: Callable, *, name: str, version: str, code_hash: bool,
                      output_fields: Sequence[pa.Field], deps: Sequence[Any] = ()) -> FunctionIdentity:
    """The identity of ``function`` declared with these options (pure: no I/O but reading source)."""
    schema_text = json.dumps([[f.name, str(f.type), f.nullable, is_path_field(f)] for f in output_fields])
    code = hash_bytes(normalised_source(function).encode()) if code_hash else None
    identity = json.dumps({"name": name, "version": version, "code": code, "outputs": schema_text},
                          sort_keys=True)
    return FunctionIdentity(name, version, code, schema_text, hash_bytes(identity.encode()))


def normalised_source(fn: Callable) -> str:
    """Source with decorators, docstrings and comments removed, re-rendered by ``ast.unparse``."""
    try:
        source = textwrap.dedent(inspect.getsource(fn))
    except (OSError, TypeError) as exc:
        raise PodError(
            f"cannot read the source of {fn.__qualname__!r} to hash it ({exc}); "
            "pass code_hash=False to identify it by name and version only"
        ) from exc
    tree = ast.parse(source)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node in tree.body:
                node.decorator_list = []
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(getattr(body[0], "value", None), ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]
    return ast.unparse(tree)
