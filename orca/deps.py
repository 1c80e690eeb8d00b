"""Declared dependencies of a function pod: what its code does not show but its results depend on.

Pass them as ``@orca.function_pod(..., deps=[...])``; each becomes part of the pod's identity
(see ``docs/pods-and-caching.md``). Say what each one is -- a bare string is refused rather
than guessed as a file, a package or an environment variable:

>>> import orca
>>> deps = [orca.deps.file("weights.bin"), orca.deps.package("numpy"), orca.deps.env("MODEL"),
...         orca.deps.value("v2-prompt"), {"threshold": 0.5}]
>>> deps[0]
Dep(kind='file', target='weights.bin')

Anything that is not a :class:`Dep` is a plain value (hashed canonically, like a constant the
function reads); a ``str`` or a path must be wrapped, as its meaning would be ambiguous.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Literal

__all__ = ["Dep", "file", "package", "env", "value"]

Kind = Literal["file", "package", "env", "value"]


@dataclasses.dataclass(frozen=True)
class Dep:
    """One declared dependency: ``kind`` says how ``target`` enters the identity.

    ``file``: the content of the file (or directory) at path ``target``; ``package``: the
    installed version of distribution ``target``; ``env``: the value of environment variable
    ``target`` (unset differs from empty); ``value``: ``target`` itself, hashed canonically.
    """

    kind: Kind
    target: Any


def file(path: str | os.PathLike) -> Dep:
    """A file or directory whose content the function reads (hashed when the identity is first used)."""
    return Dep("file", os.fspath(path))


def package(name: str) -> Dep:
    """An installed distribution (``"numpy"``) whose version the results depend on."""
    return Dep("package", str(name))


def env(name: str) -> Dep:
    """An environment variable the function reads; its value (or its absence) is hashed."""
    return Dep("env", str(name))


def value(target: Any) -> Dep:
    """A plain value (e.g. a string) the results depend on; other values may be passed bare."""
    return Dep("value", target)
