"""Where user code lives and what its source says: the source side of a function's identity.

A source file is parsed once per process (again only when ``linecache`` re-reads it because the
file changed); its definitions are indexed by line and qualified name, docstrings removed. A
definition's normalised source is ``ast.unparse`` of its node without decorators; hashes are
memoised per code object and per class. See ``orca/identity.py``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import linecache
import os
import site
import sys
import sysconfig
import threading
import types
from typing import Any

from orca.errors import PodError
from orca.hashing import hash_bytes


def underlying_function(value: Any) -> types.FunctionType | None:
    """The Python function behind a function, static/class method, property or wrapper."""
    if isinstance(value, staticmethod | classmethod):
        value = value.__func__
    elif isinstance(value, property):
        value = value.fget
    seen = 0
    while not isinstance(value, types.FunctionType) and hasattr(value, "__wrapped__") and seen < 8:
        value, seen = value.__wrapped__, seen + 1  # functools.wraps, lru_cache, ...
    return value if isinstance(value, types.FunctionType) else None


# ------------------------------------------------------------------------- user code or not


def _library_roots() -> tuple[str, ...]:
    paths = sysconfig.get_paths()
    roots = {paths["stdlib"], paths["platstdlib"], paths["purelib"], paths["platlib"],
             *site.getsitepackages(), site.getusersitepackages()}
    return tuple(sorted(os.path.join(os.path.realpath(r), "") for r in roots if r))


_LIBRARY_ROOTS = _library_roots()
_USER_MODULES: dict[str, bool] = {}


def is_user_module(module: types.ModuleType) -> bool:
    """True for modules of the user's code: not stdlib, site-packages, builtins or orca."""
    name = module.__name__
    if name not in _USER_MODULES:
        path = getattr(module, "__file__", None)
        if name == "orca" or name.startswith("orca.") or name in sys.builtin_module_names:
            user = False
        elif path is None:
            user = name == "__main__"  # a REPL or notebook; other file-less modules are built
        else:
            user = not is_library_file(path)
        _USER_MODULES[name] = user
    return _USER_MODULES[name]


@functools.cache
def is_library_file(path: str) -> bool:
    real = os.path.realpath(path)
    parts = real.split(os.sep)
    return real.startswith(_LIBRARY_ROOTS) or "site-packages" in parts or "dist-packages" in parts


# ----------------------------------------------------------------------------- source text


class Unencodable(Exception):
    """Something read by a pod has no stable encoding (the message says why)."""


@dataclasses.dataclass
class _ModuleSource:
    """A source file parsed once, docstrings removed, with its definitions indexed by line."""

    tree: ast.Module
    functions: dict[tuple[int, str], ast.AST]  # (first line incl. decorators, name) -> def
    classes: dict[str, ast.ClassDef]  # qualname -> class
    lambdas: dict[int, list[ast.Lambda]] | None = None  # by line; indexed on first need

    def lambdas_at(self, line: int) -> list[ast.Lambda]:
        if self.lambdas is None:
            self.lambdas = {}
            for node in ast.walk(self.tree):
                if isinstance(node, ast.Lambda):
                    self.lambdas.setdefault(node.lineno, []).append(node)
        return self.lambdas.get(line, [])


_MODULES: dict[str, tuple[list[str], _ModuleSource]] = {}  # filename -> (linecache's lines, index)
_SOURCES: dict[int, tuple[Any, str]] = {}  # id(code or class) -> (it, hash): kept alive, ids stay unique
_UNPARSE = threading.Lock()
_BLOCKS = ("body", "orelse", "finalbody", "handlers", "cases")


def _module_source(filename: str, module_globals: dict | None) -> _ModuleSource:
    linecache.checkcache(filename)
    lines = linecache.getlines(filename, module_globals)
    if not lines:
        raise Unencodable(f"no source for {filename!r} (defined in a REPL or by exec?)")
    cached = _MODULES.get(filename)
    if cached is not None and cached[0] is lines:  # linecache reads a changed file into a new list
        return cached[1]
    try:
        tree = ast.parse("".join(lines), filename)
    except SyntaxError as exc:
        raise Unencodable(f"{filename!r} does not parse ({exc})") from None
    index = _ModuleSource(tree, {}, {})
    _index(tree.body, "", index)
    _MODULES[filename] = (lines, index)
    return index


def _index(statements: list[ast.AST], prefix: str, index: _ModuleSource) -> None:
    """Index the defs and classes among ``statements`` (and the blocks nested in them)."""
    for node in statements:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                    and isinstance(body[0].value.value, str):
                node.body = body[1:] or [ast.Pass()]  # docstrings never count
            qualname = f"{prefix}{node.name}"
            if isinstance(node, ast.ClassDef):
                index.classes.setdefault(qualname, node)
                _index(node.body, f"{qualname}.", index)
            else:
                first = min([d.lineno for d in node.decorator_list] + [node.lineno])
                index.functions[(first, node.name)] = node
                _index(node.body, f"{qualname}.<locals>.", index)
        else:  # if/for/while/try/with/match blocks may hold defs too
            for field in _BLOCKS:
                block = getattr(node, field, None)
                if block:
                    _index(block, prefix, index)


def locate(code: types.CodeType, qualname: str) -> ast.AST:
    """The AST node of a function's own code (a def or a lambda)."""
    try:
        index = _module_source(code.co_filename, None)
    except OSError as exc:
        raise Unencodable(str(exc)) from None
    if code.co_name != "<lambda>":
        node = index.functions.get((code.co_firstlineno, code.co_name))
        if node is None:
            raise Unencodable(f"{qualname!r} not found at {code.co_filename}:{code.co_firstlineno} "
                              "(was the file edited after import?)")
        return node
    # A lambda: the innermost lambda whose body spans its instructions' positions (3.11+
    # co_positions; (0, 0) columns are the synthetic RESUME/RETURN of the frame).
    spans = [(line, col, end_line, end_col) for line, end_line, col, end_col in code.co_positions()
             if line is not None and col is not None and (col, end_col) != (0, 0)]
    candidates = list(index.lambdas_at(code.co_firstlineno))
    if spans:
        start, end = min((s[0], s[1]) for s in spans), max((s[2], s[3]) for s in spans)
        candidates = [n for n in candidates
                      if (n.body.lineno, n.body.col_offset) <= start
                      and end <= (n.body.end_lineno, n.body.end_col_offset)]
        candidates.sort(key=lambda n: (n.body.lineno, n.body.col_offset), reverse=True)
    if not candidates or (not spans and len(candidates) > 1):
        raise Unencodable(f"lambda at {code.co_filename}:{code.co_firstlineno} not found in its source")
    return candidates[0]


def unparse(node: ast.AST) -> str:
    """Source of ``node``; a def loses its decorators (what they wrap is walked as objects)."""
    with _UNPARSE:  # the nodes are shared; decorators are put back at once
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            decorators, node.decorator_list = node.decorator_list, []
            try:
                return ast.unparse(node)
            finally:
                node.decorator_list = decorators
        return ast.unparse(node)


def source_hash(fn: types.FunctionType, *, root: bool = False) -> str:
    """Hash of ``fn``'s normalised source, memoised per code object; a root fails with PodError."""
    code = fn.__code__
    cached = _SOURCES.get(id(code))
    if cached is not None:
        return cached[1]
    try:
        node = locate(code, fn.__qualname__)
    except Unencodable as exc:
        if not root:
            raise
        raise PodError(
            f"cannot read the source of {fn.__qualname__!r} to hash it ({exc}); "
            "pass code_hash=False to identify it by name and version only") from None
    digest = hash_bytes(unparse(node).encode())
    _SOURCES[id(code)] = (code, digest)
    return digest


def class_hash(klass: type) -> str:
    """Hash of a class's normalised source (methods and class body included), memoised."""
    cached = _SOURCES.get(id(klass))
    if cached is not None:
        return cached[1]
    module = sys.modules.get(klass.__module__)
    # a method's code names the file (a notebook's __main__ has no __file__, its cells do)
    codes = [fn.__code__ for fn in map(underlying_function, vars(klass).values())
             if fn is not None and fn.__qualname__.startswith(f"{klass.__qualname__}.")]
    filename = next((c.co_filename for c in codes
                     if not c.co_filename.startswith("<") and not is_library_file(c.co_filename)), None) \
        or getattr(module, "__file__", None)
    if filename is None:
        raise Unencodable(f"no source file for class {klass.__qualname__!r}")
    node = _module_source(filename, vars(module) if module else None).classes.get(klass.__qualname__)
    if node is None:
        raise Unencodable(f"class {klass.__qualname__!r} not found in {filename!r}")
    digest = hash_bytes(unparse(node).encode())
    _SOURCES[id(klass)] = (klass, digest)
    return digest
