"""The package's shape: imports go one way, and no module reaches into another's privates."""

from __future__ import annotations

import ast
import pathlib

import orca

ROOT = pathlib.Path(orca.__file__).parent

# Imports inside functions that point *up* the layers, each a documented exception
# (DESIGN_ISSUES.md, "Deliberate exceptions to STYLE.md").
UPWARD_IN_FUNCTIONS = {("orca.pods", "orca.cache")}


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: pathlib.Path) -> tuple[set[str], set[str], list[tuple[str, str]]]:
    """(orca modules imported when the module loads, orca modules imported inside functions,
    (module, name) pairs of ``_private`` names imported from other orca modules)."""
    tree = ast.parse(path.read_text())
    at_load, in_functions, private = set(), set(), []
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and is_type_checking(child):
                continue  # never executed
            inner = in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef)
            targets: list[tuple[str, list[str]]] = []
            if isinstance(child, ast.Import):
                targets = [(a.name, []) for a in child.names]
            elif isinstance(child, ast.ImportFrom):
                base = child.module or ""
                if child.level:
                    base = ".".join([*package.split(".")[: len(package.split(".")) - child.level + 1], base]).strip(".")
                names = [a.name for a in child.names]
                # `from orca import engine` imports the module orca.engine
                folder = ROOT.parent.joinpath(*base.split("."))
                targets = [(f"{base}.{n}" if (folder / n).is_dir() or (folder / f"{n}.py").exists() else base, [n])
                           for n in names]
            for target, names in targets:
                if target == "orca" or not target.startswith("orca"):
                    continue
                (in_functions if inner else at_load).add(target)
                owner = target.rpartition(".")[2]
                private.extend((target, n) for n in names if n.startswith("_") and not owner.startswith("_"))
            visit(child, inner)

    visit(tree, False)
    return at_load, in_functions, private


def graph() -> dict[str, tuple[set[str], set[str], list]]:
    return {module_name(p): imports(p) for p in sorted(ROOT.rglob("*.py"))}


def test_no_import_cycles():
    modules = graph()
    edges = {m: {t for t in at_load if t in modules and t != m} for m, (at_load, _, _) in modules.items()}
    # A package's __init__ re-exports its modules: its edges to them are not a cycle back.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(edges[node]):
            if nxt.startswith(node + "."):  # a package importing its own sub-modules
                continue
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in state:
                walk(nxt, [*path, nxt])
        state[node] = 2

    for module in sorted(edges):
        if module not in state:
            walk(module, [module])
    assert cycles == []


def test_imports_inside_functions_are_for_optional_dependencies_or_listed():
    modules = graph()
    upward = {(m, t) for m, (_, in_functions, _) in modules.items() for t in in_functions if t in modules}
    assert upward <= UPWARD_IN_FUNCTIONS, upward - UPWARD_IN_FUNCTIONS


def test_no_module_imports_another_modules_private_names():
    private = [(m, t, n) for m, (_, _, found) in graph().items() for t, n in found]
    assert private == []
