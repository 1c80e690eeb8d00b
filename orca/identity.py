"""A function's identity, for caching: name, version, transitive code hash, output schema, deps.

Results are keyed by ``identity.hash`` + the input packet hash, so everything that can change
what a function returns must reach the identity. The code hash covers the function's own
normalised source and, recursively, the user code it reads: the functions, classes and
methods its globals and closure cells are bound to, and the values of the module-level
constants, closure variables and defaults it reads. Library code (the standard library,
site-packages, orca) is left out unless declared with ``deps=`` (see :mod:`orca.deps`).
What cannot be encoded is reported with an :class:`~orca.errors.IdentityWarning`, never
skipped silently. See ``docs/pods-and-caching.md`` ("Identity").

>>> import orca
>>> @orca.function_pod(output_keys="y")
... def double(x: int) -> int:
...     return 2 * x
>>> [(p.kind, p.name) for p in double.pod.identity.explain().parts]
[('function', 'double'), ('name', 'name'), ('outputs', 'y'), ('version', 'version')]
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import functools
import importlib.metadata
import json
import logging
import os
import sys
import threading
import types
import warnings
from collections.abc import Callable, Sequence
from pathlib import PurePath
from typing import Any

import numpy as np
import pyarrow as pa

from orca._source import (
    Unencodable,
    class_hash,
    is_library_file,
    is_user_module,
    locate,
    source_hash,
    underlying_function,
    unparse,
)
from orca.deps import Dep
from orca.errors import HashingError, IdentityWarning, PodError
from orca.hashing import hash_bytes, hash_file, is_path_field

__all__ = ["FunctionIdentity", "IdentityPart", "Explanation", "function_identity", "normalised_source"]

# Versions the encoding below; a change to any byte hashed here is a new ENCODING.
ENCODING = "orca-identity-1"
_CODE_KINDS = ("function", "class", "constant", "closure", "default")


# ------------------------------------------------------------------------------ public API


@dataclasses.dataclass(frozen=True)
class IdentityPart:
    """One input of an identity: ``(kind, name)`` is a stable key, ``hash`` its content hash.

    ``kind`` is one of ``name``, ``version``, ``outputs``, ``function``, ``class``,
    ``constant``, ``closure``, ``default`` (code), ``file``, ``package``, ``env``, ``value``
    (declared deps) or ``unhashed`` (read but not encodable; ``hash`` is ``None`` and an
    :class:`~orca.errors.IdentityWarning` said so). ``module`` is where a code part lives;
    ``detail`` is for people (a package's version, a value's type) and is not hashed.
    """

    kind: str
    name: str
    module: str | None
    hash: str | None
    detail: str = ""


@dataclasses.dataclass(frozen=True)
class Explanation:
    """What went into an identity, sorted by ``(kind, name)``; ``str()`` renders a table."""

    parts: tuple[IdentityPart, ...]

    def as_dicts(self) -> list[dict[str, Any]]:
        """The parts as plain dicts (stable keys: kind, name, module, hash, detail)."""
        return [dataclasses.asdict(p) for p in self.parts]

    def changed(self, other: Explanation) -> list[tuple[str, str]]:
        """Keys ``(kind, name)`` added, removed or with another hash in ``other``, sorted."""
        mine = {(p.kind, p.name): p.hash for p in self.parts}
        theirs = {(p.kind, p.name): p.hash for p in other.parts}
        return sorted(k for k in mine.keys() | theirs.keys() if mine.get(k, "?") != theirs.get(k, "?"))

    def __str__(self) -> str:
        width = max((len(p.name) for p in self.parts), default=0)
        return "\n".join(
            f"{p.kind:<9} {p.name:<{width}}  {(p.hash or 'not hashed')[:12]:<12}  {p.module or ''}"
            + (f"  ({p.detail})" if p.detail else "")
            for p in self.parts)


class FunctionIdentity:
    """Who a function is, for caching: results are keyed by ``hash`` + input packet hash.

    The function's own source is read when the identity is made (so an unreadable source fails
    at once); the rest -- what its globals and closures are bound to, declared files and
    package versions -- is resolved on first use of ``code_hash``, ``hash`` or ``explain()``,
    i.e. once the defining module has finished importing, and then kept for the process.
    """

    def __init__(self, function: Callable | None, *, name: str, version: str, output_schema: str,
                 deps: tuple[Dep | Any, ...]) -> None:
        self.name = name
        self.version = version
        self.output_schema = output_schema
        self._function = function  # None: code_hash=False
        self._deps = deps
        self._lock = threading.Lock()
        self._resolved: tuple[tuple[IdentityPart, ...], str, str | None] | None = None
        if function is not None:
            root, _ = _unbind(function)
            if root is None:
                raise PodError(f"cannot read the source of {name!r} ({type(function).__name__} is not a "
                               "Python function); pass code_hash=False to identify it by name and version only")
            source_hash(root, root=True)  # fail now, naming the function, if unreadable

    @property
    def code_hash(self) -> str | None:
        """Hash of the code parts (function, classes, constants, closures, defaults), or None."""
        return self._resolve()[2]

    @property
    def hash(self) -> str:
        """The identity: keys the results table and every result record."""
        return self._resolve()[1]

    @property
    def parts(self) -> tuple[IdentityPart, ...]:
        """Every input of the identity, sorted by ``(kind, name)`` (see :meth:`explain`)."""
        return self._resolve()[0]

    def _resolve(self) -> tuple[tuple[IdentityPart, ...], str, str | None]:
        with self._lock:  # resolved once, by one thread
            if self._resolved is None:
                parts = _identity_parts(self)
                code = _hash_parts([p for p in parts if p.kind in _CODE_KINDS]) if self._function else None
                self._resolved = (parts, _hash_parts(parts), code)
            return self._resolved

    def explain(self) -> Explanation:
        """What went into :attr:`hash`, one :class:`IdentityPart` per input."""
        return Explanation(self.parts)

    def refreshed(self) -> FunctionIdentity:
        """The identity as it would be resolved now: globals rebound since (a notebook cell
        re-run), edited declared files, upgraded packages. Cheap: sources stay memoised.
        A runner may call it once at the start of a run; within a run the identity is fixed.
        """
        return FunctionIdentity(self._function, name=self.name, version=self.version,
                                output_schema=self.output_schema, deps=self._deps)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, FunctionIdentity) and other.hash == self.hash

    def __hash__(self) -> int:
        return hash(self.hash)

    def __repr__(self) -> str:
        return (f"FunctionIdentity(name={self.name!r}, version={self.version!r}, "
                f"code_hash={self.code_hash!r}, hash={self.hash!r})")

    def __getstate__(self) -> dict:
        state = dict(self.__dict__, _resolved=self._resolve())  # resolved here; workers never re-walk
        del state["_lock"]
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _lock=threading.Lock())


def function_identity(function: Callable, *, name: str, version: str, code_hash: bool,
                      output_fields: Sequence[pa.Field], deps: Sequence[Any] = ()) -> FunctionIdentity:
    """The identity of ``function`` declared with these options (reads only its source now).

    ``code_hash=False`` leaves the code out: name + version + output schema + deps only.
    ``deps`` are :class:`orca.deps.Dep` or plain values; a bare ``str`` or path raises
    :class:`~orca.errors.PodError` since it could mean a file, a package or a value.
    """
    schema_text = json.dumps([[f.name, str(f.type), f.nullable, is_path_field(f)] for f in output_fields])
    for dep in deps:
        if isinstance(dep, str | PurePath):
            raise PodError(
                f"function {name!r}: dep {dep!r} is ambiguous; write orca.deps.file({str(dep)!r}), "
                f"orca.deps.package(...), orca.deps.env(...) or orca.deps.value({str(dep)!r})")
        if isinstance(dep, Dep) and dep.kind not in ("file", "package", "env", "value"):
            raise PodError(f"function {name!r}: unknown dep kind {dep.kind!r} in {dep!r}")
        if not isinstance(dep, Dep) or dep.kind == "value":  # refuse an unencodable value now
            _dep_parts(name, (dep,))
    return FunctionIdentity(function if code_hash else None, name=name, version=version,
                            output_schema=schema_text, deps=tuple(deps))


def normalised_source(fn: Callable) -> str:
    """``fn``'s own source without decorators, docstrings or comments, as ``ast.unparse`` renders it.

    A lambda is located by its own AST node (line and columns of its code), so two lambdas on
    one line differ and a lambda spanning several lines inside a call is found whole.
    """
    root, _ = _unbind(fn)
    if root is None:
        raise PodError(f"{fn!r} is not a Python function; it has no source to normalise")
    try:
        return unparse(locate(root.__code__, root.__qualname__))
    except Unencodable as exc:
        raise PodError(f"cannot read the source of {root.__qualname__!r}: {exc}") from None


# ------------------------------------------------------------------------- the parts, hashed


def _hash_parts(parts: Sequence[IdentityPart]) -> str:
    rows = sorted([p.kind, p.name, p.hash] for p in parts if p.hash is not None)
    return hash_bytes(json.dumps([ENCODING, rows], separators=(",", ":"), ensure_ascii=False).encode())


def _identity_parts(identity: FunctionIdentity) -> tuple[IdentityPart, ...]:
    parts = [IdentityPart("name", "name", None, hash_bytes(identity.name.encode()), identity.name),
             IdentityPart("version", "version", None, hash_bytes(identity.version.encode()), identity.version),
             IdentityPart("outputs", ",".join(f[0] for f in json.loads(identity.output_schema)), None,
                          hash_bytes(identity.output_schema.encode()))]
    if identity._function is not None:
        parts += _Walk(identity.name, identity._function).run()
    parts += _dep_parts(identity.name, identity._deps)
    keys = [(p.kind, p.name) for p in parts]
    if len(set(keys)) != len(keys):  # same qualname or constant name in two modules: say which
        twice = {k for k in keys if keys.count(k) > 1}
        parts = [dataclasses.replace(p, name=f"{p.module}:{p.name}") if (p.kind, p.name) in twice else p
                 for p in parts]
    return tuple(sorted(parts, key=lambda p: (p.kind, p.name)))


def _dep_parts(pod: str, deps: tuple[Any, ...]) -> list[IdentityPart]:
    parts: dict[tuple[str, str], IdentityPart] = {}
    values = 0
    for dep in deps:
        if not isinstance(dep, Dep) or dep.kind == "value":
            target = dep.target if isinstance(dep, Dep) else dep
            try:
                part = IdentityPart("value", f"value[{values}]", None, _hash_value(target),
                                    type(target).__name__)
            except Unencodable as exc:
                raise PodError(f"function {pod!r}: declared dep {target!r} cannot be hashed: {exc}") from None
            values += 1
        elif dep.kind == "file":
            try:
                part = IdentityPart("file", dep.target, None, hash_file(dep.target))
            except (OSError, HashingError) as exc:
                raise PodError(f"function {pod!r}: declared file dep {dep.target!r} cannot be read: {exc}") from None
        elif dep.kind == "package":
            try:
                installed = importlib.metadata.version(dep.target)
            except importlib.metadata.PackageNotFoundError:
                raise PodError(f"function {pod!r}: declared package dep {dep.target!r} is not installed") from None
            part = IdentityPart("package", dep.target, None, hash_bytes(installed.encode()), installed)
        else:  # env; function_identity refused other kinds
            setting = os.environ.get(dep.target)
            # the value is hashed, never shown: it may be a secret
            part = IdentityPart("env", dep.target, None,
                                hash_bytes(b"\x00unset" if setting is None else b"=" + setting.encode()),
                                "unset" if setting is None else "set")
        parts[(part.kind, part.name)] = part
    return list(parts.values())


# ----------------------------------------------------------------------- walking user code


class _Walk:
    """One pass over the user code a root function reads; collects its code parts."""

    def __init__(self, pod: str, function: Callable) -> None:
        self.pod = pod
        self.root, self.bound = _unbind(function)
        self.root_package = (getattr(self.root, "__module__", None) or "").partition(".")[0]
        self.parts: dict[tuple[str, str, str | None], IdentityPart] = {}
        self.seen: set[Any] = set()
        self.keep: list[Any] = []  # keeps walked objects alive so their ids stay unique

    def run(self) -> list[IdentityPart]:
        self.function(self.root)
        for label, value in self.bound:  # a bound method's instance, a partial's arguments
            self.value(value, "closure", f"{self.root.__qualname__}.{label}", self.root.__module__, self.root)
        return list(self.parts.values())

    def add(self, part: IdentityPart) -> None:
        """Keep ``part``; another part under its key (two lambdas, two closures of one factory)
        gets ``#2``, ``#3``... in walk order, which the code fixes."""
        key, n = (part.kind, part.name, part.module), 1
        while key in self.parts and self.parts[key].hash != part.hash:
            n += 1
            key = (part.kind, f"{part.name}#{n}", part.module)
        self.parts[key] = part if n == 1 else dataclasses.replace(part, name=key[1])

    def once(self, obj: Any) -> bool:
        """True the first time ``obj`` (or a key tuple) is met in this walk."""
        mark = obj if isinstance(obj, tuple) else id(obj)
        if mark in self.seen:
            return False
        self.seen.add(mark)
        self.keep.append(obj)
        return True

    def function(self, fn: types.FunctionType, *, own_part: bool = True, via: str = "") -> None:
        """Walk ``fn``: its source (unless part of a class already), globals, cells, defaults."""
        if not self.once(fn):
            return
        module = getattr(fn, "__module__", None)
        if own_part:
            # a lambda is named by the global or cell it was reached through, not by its line
            key = f"{via}=<lambda>" if fn.__name__ == "<lambda>" and via else fn.__qualname__
            try:
                self.add(IdentityPart("function", key, module, source_hash(fn, root=fn is self.root)))
            except Unencodable as exc:
                self.unhashed("function", key, module, fn, str(exc))
        scope = fn.__globals__
        for name in _global_names(fn.__code__):
            if name in scope:
                self.value(scope[name], "constant", name, module, fn, names=_global_names(fn.__code__))
        for var, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            try:
                contents = cell.cell_contents
            except ValueError:  # an empty cell: the variable is not bound yet
                continue
            self.value(contents, "closure", f"{fn.__qualname__}.{var}", module, fn)
        defaults = dict(zip(_positional_defaults(fn), fn.__defaults__ or (), strict=True))
        defaults.update(fn.__kwdefaults__ or {})
        for param, default in defaults.items():
            self.value(default, "default", f"{fn.__qualname__}({param}=)", module, fn)

    def cls(self, klass: type) -> None:
        if not self.once(klass):
            return
        try:
            self.add(IdentityPart("class", klass.__qualname__, klass.__module__, class_hash(klass)))
        except Unencodable as exc:
            self.unhashed("class", klass.__qualname__, klass.__module__, klass, str(exc))
        for base in klass.__mro__[1:]:
            if self.is_user(base):
                self.cls(base)
        for attr, member in vars(klass).items():
            fn = underlying_function(member)
            if fn is not None and (fn.__code__.co_filename.startswith("<") or is_library_file(fn.__code__.co_filename)):
                continue  # generated from the class body (dataclass, namedtuple): hashed with it
            if fn is not None:
                # methods written in the class body are in its source already
                inline = fn.__qualname__.startswith(f"{klass.__qualname__}.")
                if inline or self.is_user(fn):
                    self.function(fn, own_part=not inline)
            elif not attr.startswith("_") and _is_plain(member):
                # class-level constants: their source is in the class text, their value here
                self.value(member, "constant", f"{klass.__qualname__}.{attr}", klass.__module__, klass)

    def value(self, value: Any, kind: str, key: str, module: str | None, reader: Any,
              names: tuple[str, ...] = ()) -> None:
        """Include what a global, closure cell or default named ``key`` is bound to."""
        if isinstance(value, types.ModuleType):
            if self.is_user(value) and self.once(value):  # attribute chains: `utils.helper`
                for name in names:
                    if name in vars(value):
                        self.value(vars(value)[name], kind, name, value.__name__, reader, names)
            return
        if isinstance(value, functools.partial):
            self.value(value.func, kind, key, module, reader)
            value = (value.args, value.keywords)
        if isinstance(value, types.MethodType):
            self.value(value.__func__, kind, key, module, reader)
            value = value.__self__
        fn = underlying_function(value)
        if fn is not None:
            if self.is_user(fn):
                self.function(fn, via=key)
            return
        if isinstance(value, type):
            if self.is_user(value):
                self.cls(value)
            return
        if _is_ignored(value):
            return
        if type(value).__module__ not in ("builtins", "numpy") and self.is_user(type(value)):
            self.cls(type(value))  # an instance of a user class: its methods may run
        elif callable(value) and hasattr(value, "__name__"):  # a library function, ufunc, builtin
            return
        if not self.once((kind, key, module, id(value))):  # read by several functions: hash once
            return
        self.keep.append(value)  # its id is in the mark
        try:
            digest = _hash_value(value, self.refer)
        except Unencodable as exc:
            self.unhashed(kind, key, module, reader, str(exc))
            return
        self.add(IdentityPart(kind, key, module, digest, type(value).__name__))

    def refer(self, obj: Any) -> str | None:
        """The name of a function or class found inside a value; user code is walked too."""
        fn = underlying_function(obj)
        if fn is not None:
            if self.is_user(fn):
                self.function(fn)
                return fn.__qualname__
            return f"{fn.__module__}.{fn.__qualname__}"
        if isinstance(obj, type):
            if self.is_user(obj):
                self.cls(obj)
                return obj.__qualname__
            return f"{obj.__module__}.{obj.__qualname__}"
        if hasattr(obj, "__name__"):  # a builtin or ufunc
            return f"{getattr(obj, '__module__', None) or type(obj).__module__}.{obj.__name__}"
        return None

    def unhashed(self, kind: str, key: str, module: str | None, reader: Any, why: str) -> None:
        """Record that ``key`` was read but left out, and warn once per process."""
        self.add(IdentityPart("unhashed", key, module, None, f"{kind}: {why}"))
        name = f"{getattr(reader, '__module__', '?')}.{getattr(reader, '__qualname__', '?')}"
        if (name, key) in _WARNED:
            return
        _WARNED.add((name, key))
        code = getattr(reader, "__code__", None)
        where = getattr(sys.modules.get(getattr(reader, "__module__", "")), "__file__", None) or "<unknown>"
        # point at the code that reads it: the walk runs lazily, from anywhere
        warnings.warn_explicit(
            f"function pod {self.pod!r}: {name} reads {kind} {key!r}, which cannot be included in "
            f"its identity ({why}); a change to it will not invalidate cached results. Declare what "
            "it depends on with deps=[...] (orca.deps.file/package/env/value) or bump version= "
            "when it changes.", IdentityWarning,
            code.co_filename if code else where, code.co_firstlineno if code else 1)

    def is_user(self, obj: Any) -> bool:
        if isinstance(obj, types.FunctionType) and is_library_file(obj.__code__.co_filename):
            return False  # a library wrapper carrying a user function's __module__ (functools.wraps)
        module = obj if isinstance(obj, types.ModuleType) else sys.modules.get(getattr(obj, "__module__", None) or "")
        if module is None:
            return False
        name = module.__name__
        if name.partition(".")[0] == self.root_package and self.root_package not in ("", "orca"):
            return True  # the root's own package is user code, even when installed
        return is_user_module(module)


_WARNED: set[tuple[str, str]] = set()  # (reader, key): warned once per process


def _unbind(function: Callable) -> tuple[types.FunctionType | None, list[tuple[str, Any]]]:
    """The Python function a pod calls, and what is bound to it (method instance, partial args)."""
    bound: list[tuple[str, Any]] = []
    while isinstance(function, types.MethodType | functools.partial):
        if isinstance(function, types.MethodType):
            bound.append(("__self__", function.__self__))
            function = function.__func__
        else:
            bound.append(("partial", (function.args, function.keywords)))
            function = function.func
    return underlying_function(function), bound


def _positional_defaults(fn: types.FunctionType) -> tuple[str, ...]:
    code = fn.__code__
    count = len(fn.__defaults__ or ())
    return code.co_varnames[code.co_argcount - count:code.co_argcount] if count else ()


@functools.cache
def _global_names(code: types.CodeType) -> tuple[str, ...]:
    """Names a code object and the code nested in it (inner functions, comprehensions) look up.

    ``co_names`` holds globals and attribute names alike; an attribute name that is also a
    global only over-includes (more invalidation, never less).
    """
    names = dict.fromkeys(code.co_names)
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            names.update(dict.fromkeys(_global_names(const)))
    return tuple(names)


def _ignored_types() -> tuple[type, ...]:
    return (logging.Logger, logging.LoggerAdapter, threading.Lock().__class__, type(threading.RLock()),
            types.GenericAlias, types.UnionType)


_IGNORED = _ignored_types()


def _is_ignored(value: Any) -> bool:
    """Values that never change what a function returns: loggers, locks, type annotations."""
    return isinstance(value, _IGNORED) or type(value).__module__ == "typing"


# ---------------------------------------------------------------------------- plain values


def _is_plain(value: Any) -> bool:
    try:
        _encode(value, ())
    except Unencodable:
        return False
    return True


def _hash_value(value: Any, refer: Callable[[Any], str | None] | None = None) -> str:
    encoded = json.dumps([ENCODING, _encode(value, (), refer)], separators=(",", ":"), ensure_ascii=False)
    return hash_bytes(encoded.encode())


def _encode(value: Any, stack: tuple[int, ...], refer: Callable[[Any], str | None] | None = None) -> Any:
    """A canonical JSON-able form of plain data: each value tagged with its type.

    Floats are encoded by ``float.hex`` (exact), sets and dict items sorted by their encoding,
    so the form depends on neither ``PYTHONHASHSEED`` nor insertion order. A function or class
    inside a container (``STEPS = [clean, scale]``) is encoded by the name ``refer`` gives it
    (the walk hashes its code). Raises ``Unencodable`` for anything else (never a fallback to
    ``repr`` or pickle).
    """
    if value is None or isinstance(value, bool):
        return value
    kind = type(value)
    if isinstance(value, enum.Enum):
        return ["enum", kind.__qualname__, value.name]
    if kind is int:
        return ["int", str(value)]
    if kind is float:
        return ["float", value.hex()]
    if kind is str:
        return value
    if kind in (bytes, bytearray):
        return ["bytes", bytes(value).hex()]
    if kind is complex:
        return ["complex", value.real.hex(), value.imag.hex()]
    if kind is decimal.Decimal:
        return ["decimal", str(value)]
    if kind in (datetime.date, datetime.datetime, datetime.time):
        return [kind.__name__, value.isoformat()]
    if kind is datetime.timedelta:
        return ["timedelta", value.days, value.seconds, value.microseconds]
    if isinstance(value, PurePath):
        return ["path", value.as_posix()]
    if isinstance(value, np.generic) and not isinstance(value, np.object_):
        return ["numpy", value.dtype.str, value.tobytes().hex()]
    if refer is not None and callable(value):
        reference = refer(value)
        if reference is not None:
            return ["code", reference]
    if id(value) in stack:
        raise Unencodable(f"{kind.__name__} contains itself")
    inner = (*stack, id(value))
    if isinstance(value, np.ndarray):
        if value.dtype.hasobject:
            return ["ndarray-object", list(value.shape), [_encode(v, inner, refer) for v in value.ravel().tolist()]]
        return ["ndarray", value.dtype.str, list(value.shape), hash_bytes(np.ascontiguousarray(value).tobytes())]
    name = kind.__qualname__  # no module: the same code imported as __main__ or by name agrees
    if isinstance(value, list | tuple):
        return [name, [_encode(v, inner, refer) for v in value]]
    if isinstance(value, set | frozenset):
        return [name, sorted((_encode(v, inner, refer) for v in value), key=_sort_key)]
    if isinstance(value, dict):
        items = [[_encode(k, inner, refer), _encode(v, inner, refer)] for k, v in value.items()]
        return [name, sorted(items, key=lambda kv: _sort_key(kv[0]))]
    if dataclasses.is_dataclass(value):
        return [name, [[f.name, _encode(getattr(value, f.name), inner, refer)] for f in dataclasses.fields(value)]]
    if hasattr(value, "__dict__") and kind.__module__ != "builtins" and _is_user_module_name(kind.__module__):
        # a plain instance of a user class: its attributes (its class is walked for code)
        return [name, sorted([[k, _encode(v, inner, refer)] for k, v in vars(value).items()], key=lambda kv: kv[0])]
    raise Unencodable(f"{name} has no stable encoding")


def _sort_key(encoded: Any) -> str:
    return json.dumps(encoded, separators=(",", ":"), ensure_ascii=False)


def _is_user_module_name(name: str) -> bool:
    module = sys.modules.get(name)
    return module is not None and is_user_module(module)
