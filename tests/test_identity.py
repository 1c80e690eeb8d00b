"""Function identity: transitive code hash, declared deps, explain(), warnings, stability."""

from __future__ import annotations

import functools
import json
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

import orca
from orca.errors import IdentityWarning, PodError
from orca.identity import _hash_value, function_identity, normalised_source
from tests.helpers import load_module as load
from tests.pipelines import identity_golden

ROOT = Path(__file__).resolve().parent.parent

# Pinned: a change here is a change of orca's identity encoding (every cached result misses).
GOLDEN = {
    "closed": "6352b60fdf322d7fddcc9ba406c8d5e9",
    "lam_a": "0643c3ab5f1226e75fb66d28efc98899",
    "lam_b": "3718cc0d66745a9cf43505657a0a02ae",
    "lam_multi": "7129c1888f5ee022ed33179f3bc0ca2c",
    "plain": "4ac419f640c6802f213ca4236c61fa62",
    "transitive": "0f6968bc0404259d4fbf54f4d5e38492",
}


# -- golden vectors and processes ----------------------------------------------------------


def test_golden_identities():
    assert json.loads(identity_golden.hashes()) == GOLDEN


def test_identity_is_equal_in_fresh_processes_with_other_hash_seeds():
    code = "import tests.pipelines.identity_golden as m; print(m.hashes())"
    for seed in ("0", "12345"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "PYTHONPATH": str(ROOT)}
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                             text=True, check=True)
        assert json.loads(out.stdout) == GOLDEN


def test_explain_lists_every_input_with_stable_keys():
    explanation = identity_golden.transitive.pod.identity.explain()
    keys = [(p.kind, p.name) for p in explanation.parts]
    assert keys == sorted(keys)
    assert {("function", "transitive"), ("function", "helper"), ("function", "_clip"), ("class", "Model"),
            ("class", "Config"), ("constant", "SCALE"), ("constant", "TABLE"), ("constant", "CONFIG"),
            ("name", "name"), ("version", "version"), ("outputs", "y")} <= set(keys)
    assert not any("math" in name or "orca" in name for _, name in keys)  # libraries are left out
    helper = next(p for p in explanation.parts if p.name == "helper")
    assert helper.module == "tests.pipelines.identity_golden" and len(helper.hash) == 32
    assert explanation.as_dicts()[0].keys() == {"kind", "name", "module", "hash", "detail"}
    assert "helper" in str(explanation) and helper.hash[:12] in str(explanation)


def test_an_identity_pickles_with_its_resolved_parts():
    identity = identity_golden.transitive.pod.identity
    copy = pickle.loads(pickle.dumps(identity))
    assert copy == identity and copy.explain() == identity.explain() and copy.code_hash == identity.code_hash


# -- lambdas -------------------------------------------------------------------------------


def test_two_lambdas_on_one_line_differ():
    a, b = identity_golden.lam_a.pod.identity, identity_golden.lam_b.pod.identity
    assert a.name == b.name and a.code_hash != b.code_hash and a.hash != b.hash
    assert normalised_source(identity_golden.lam_a) == "lambda x: x + 1"
    assert normalised_source(identity_golden.lam_b) == "lambda x: x * 100"


def test_a_lambda_spanning_several_lines_in_a_call_hashes():
    assert normalised_source(identity_golden.lam_multi) == "lambda x: x * 2 + 1"
    assert len(identity_golden.lam_multi.pod.identity.hash) == 32


def test_nested_lambdas_are_told_apart(tmp_path):
    module = load(tmp_path, "identity_nested_lambda", "outer = lambda x: lambda y: x + y\n")
    assert normalised_source(module.outer) == "lambda x: lambda y: x + y"
    assert normalised_source(module.outer(1)) == "lambda y: x + y"


# -- what changes the identity, and what does not -------------------------------------------

TEMPLATE = '''
import orca

K = {k}


def unrelated():
    return {unrelated}


def deep(v):
    return v + {deep}


def helper(v):
    # {comment}
    """{doc}"""
    return deep(v) * {helper}


class Scaler:
    def __init__(self, k):
        self.k = k

    def apply(self, v):
        return v * self.k + {method}


def make(c):
    def inner(x: int) -> int:
        return x + c
    return inner


@orca.function_pod(output_keys="y", deps={deps})
def step(x: int) -> int:
    return helper(x) + Scaler(2).apply(x) + K


closure = orca.function_pod(output_keys="c", name="closure")(make({closure}))


@orca.function_pod(output_keys="z")
def down(y: int) -> int:
    return y + 1


@orca.function_pod(output_keys="w")
def other(x: int) -> int:
    return x - 1
'''
BASE = {"k": 10, "unrelated": 1, "deep": 1, "helper": 2, "method": 0, "closure": 5, "comment": "a comment",
        "doc": "A docstring.", "deps": "[]"}
COUNTER = iter(range(10**6))


def variant(tmp_path: Path, **changes):
    """The template module with ``changes``, imported under a fresh name."""
    return load(tmp_path, f"identity_variant_{next(COUNTER)}", TEMPLATE.format(**{**BASE, **changes}))


@pytest.mark.parametrize(("change", "pod", "part"), [
    ({"helper": 3}, "step", ("function", "helper")),
    ({"deep": 2}, "step", ("function", "deep")),  # two levels down
    ({"method": 1}, "step", ("class", "Scaler")),  # a method of a class the pod instantiates
    ({"k": 11}, "step", ("constant", "K")),
    ({"closure": 6}, "closure", ("closure", "make.<locals>.inner.c")),
])
def test_editing_what_the_pod_reads_changes_its_identity(tmp_path, change, pod, part):
    before, after = variant(tmp_path), variant(tmp_path, **change)
    old, new = getattr(before, pod).pod.identity, getattr(after, pod).pod.identity
    assert old.hash != new.hash and old.code_hash != new.code_hash
    assert old.explain().changed(new.explain()) == [part]  # says exactly what changed
    assert before.other.pod.identity == after.other.pod.identity


@pytest.mark.parametrize("change", [{"unrelated": 2}, {"comment": "edited"}, {"doc": "Edited."}])
def test_unrelated_edits_comments_and_docstrings_keep_the_identity(tmp_path, change):
    before, after = variant(tmp_path), variant(tmp_path, **change)
    assert before.step.pod.identity.hash == after.step.pod.identity.hash


def test_helpers_defined_below_the_pod_are_seen(tmp_path):
    def build(n, k):
        return load(tmp_path, f"identity_below_{n}", f"""
            import orca

            @orca.function_pod(output_keys="y")
            def f(x: int) -> int:
                return later(x)

            def later(v):
                return v + {k}
        """).f.pod.identity

    assert build(0, 1).explain().changed(build(1, 2).explain()) == [("function", "later")]


def test_code_hash_false_ignores_code_but_not_deps(tmp_path):
    def identity(fn, deps=()):
        return function_identity(fn, name="f", version="1", code_hash=False, output_fields=[], deps=deps)

    a, b = variant(tmp_path), variant(tmp_path, helper=3, k=0)
    assert identity(a.step).code_hash is None
    assert identity(a.step).hash == identity(b.step).hash
    assert identity(a.step, [1]).hash != identity(a.step).hash


def test_source_defined_by_exec_keeps_the_clear_error():
    scope: dict = {}
    exec("def f(x: int) -> int:\n    return x\n", scope)
    with pytest.raises(PodError, match="code_hash=False"):
        orca.function_pod(output_keys="y")(scope["f"])
    assert orca.function_pod(output_keys="y", code_hash=False)(scope["f"]).pod.identity.code_hash is None


def test_attribute_chains_recursion_and_base_classes(tmp_path):
    def build(n, base_offset, helper_body):
        load(tmp_path, f"identity_lib_{n}", f"""
            def helper(v):
                return {helper_body}
        """)
        return load(tmp_path, f"identity_user_{n}", f"""
            import enum
            import identity_lib_{n} as lib
            import orca

            class Mode(enum.Enum):
                FAST = 1

            class Base:
                def offset(self):
                    return {base_offset}

            class Child(Base):
                def value(self, v):
                    return v + self.offset()

            def even(n):
                return n == 0 or odd(n - 1)

            def odd(n):
                return n != 0 and even(n - 1)

            MODE = Mode.FAST

            @orca.function_pod(output_keys="y")
            def f(x: int) -> int:
                return lib.helper(x) + Child().value(x) + int(even(x)) + MODE.value
        """)

    base = build(0, 1, "v + 1").f.pod.identity
    keys = {(p.kind, p.name) for p in base.explain().parts}
    assert {("function", "helper"), ("class", "Base"), ("class", "Child"), ("class", "Mode"),
            ("function", "even"), ("function", "odd"), ("constant", "MODE")} <= keys
    assert base.explain().changed(build(1, 2, "v + 1").f.pod.identity.explain()) == [("class", "Base")]
    assert base.explain().changed(build(2, 1, "v + 2").f.pod.identity.explain()) == [("function", "helper")]


def test_bound_methods_and_partials_include_what_is_bound(tmp_path):
    module = load(tmp_path, "identity_bound", """
        import functools
        import orca

        class Scale:
            def __init__(self, k):
                self.k = k

            def apply(self, x: int) -> int:
                return x * self.k

        def add(x: int, k: int) -> int:
            return x + k
    """)

    def identity(fn):
        return function_identity(fn, name="f", version="1", code_hash=True, output_fields=[])

    assert identity(module.Scale(2).apply) != identity(module.Scale(3).apply)
    by_partial = identity(functools.partial(module.add, k=1)).explain()
    assert ("closure", "add.partial") in [(p.kind, p.name) for p in by_partial.parts]
    assert identity(functools.partial(module.add, k=1)) != identity(functools.partial(module.add, k=2))
    with pytest.raises(PodError, match="code_hash=False"):
        identity(len)


def test_functions_inside_constants_are_walked(tmp_path):
    def build(n, second):
        return load(tmp_path, f"identity_steps_{n}", f"""
            import math
            import orca

            def clean(v):
                return v - 1

            STEPS = [clean, lambda v: v * 2, lambda v: v + {second}, math.floor]

            @orca.function_pod(output_keys="y")
            def f(x: int) -> int:
                for step in STEPS:
                    x = step(x)
                return x
        """).f.pod.identity

    base = build(0, 1)
    names = {p.name for p in base.explain().parts if p.kind == "function"}
    assert {"f", "clean", "<lambda>", "<lambda>#2"} <= names
    assert base.code_hash != build(1, 2).code_hash


# -- declared deps ---------------------------------------------------------------------------


def fake_distribution(root: Path, version: str) -> Path:
    info = root / f"orca_identity_fixture-{version}.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: orca-identity-fixture\nVersion: {version}\n")
    return root


def test_declared_file_package_env_and_value_enter_the_identity(tmp_path, monkeypatch):
    data = tmp_path / "weights.txt"
    data.write_text("1 2 3")
    monkeypatch.syspath_prepend(str(fake_distribution(tmp_path / "v1", "1.0")))
    monkeypatch.setenv("ORCA_IDENTITY_TEST", "a")
    deps = (f"[orca.deps.file({str(data)!r}), orca.deps.package('orca-identity-fixture'), "
            "orca.deps.env('ORCA_IDENTITY_TEST'), {'threshold': 0.5}]")
    base = variant(tmp_path, deps=deps).step.pod.identity
    kinds = {p.kind: p for p in base.explain().parts}
    assert kinds["package"].detail == "1.0" and kinds["file"].name == str(data)
    assert kinds["env"].detail == "set" and "a" not in kinds["env"].detail  # values are never shown

    data.write_text("1 2 4")
    edited = variant(tmp_path, deps=deps).step.pod.identity
    assert base.explain().changed(edited.explain()) == [("file", str(data))]
    assert base.code_hash == edited.code_hash

    monkeypatch.syspath_prepend(str(fake_distribution(tmp_path / "v2", "2.0")))
    upgraded = variant(tmp_path, deps=deps).step.pod.identity
    assert edited.explain().changed(upgraded.explain()) == [("package", "orca-identity-fixture")]

    monkeypatch.delenv("ORCA_IDENTITY_TEST")
    unset = variant(tmp_path, deps=deps).step.pod.identity
    assert upgraded.explain().changed(unset.explain()) == [("env", "ORCA_IDENTITY_TEST")]

    other_value = variant(tmp_path, deps=deps.replace("0.5", "0.6")).step.pod.identity
    assert unset.explain().changed(other_value.explain()) == [("value", "value[0]")]


def test_refreshed_sees_rebound_globals_and_edited_files(tmp_path):
    data = tmp_path / "table.txt"
    data.write_text("v1")
    module = variant(tmp_path, deps=f"[orca.deps.file({str(data)!r})]")
    identity = module.step.pod.identity
    assert identity.refreshed() == identity
    data.write_text("v2")
    module.K = 99  # what re-running a notebook cell does
    assert module.step.pod.identity.hash == identity.hash  # fixed for the pod's life...
    changed = identity.refreshed()
    assert identity.explain().changed(changed.explain()) == [("constant", "K"), ("file", str(data))]


@pytest.mark.parametrize(("dep", "error"), [
    ("numpy", r"ambiguous.*orca\.deps\.file"),
    (Path("weights.bin"), r"ambiguous.*orca\.deps\.file"),
    (object(), "declared dep .*object.* cannot be hashed"),
    (orca.deps.Dep("url", "https://example.org"), "unknown dep kind 'url'"),
])
def test_a_dep_that_is_ambiguous_or_unencodable_is_refused_when_declared(dep, error):
    with pytest.raises(PodError, match=error):
        function_identity(len, name="f", version="1", code_hash=False, output_fields=[], deps=[dep])


def test_a_missing_dep_names_it_when_the_identity_is_used(tmp_path):
    identity = function_identity(len, name="f", version="1", code_hash=False, output_fields=[],
                                 deps=[orca.deps.file(tmp_path / "absent.bin")])  # no I/O yet
    with pytest.raises(PodError, match="absent.bin"):
        _ = identity.hash
    with pytest.raises(PodError, match="no-such-distribution"):
        _ = function_identity(len, name="f", version="1", code_hash=False, output_fields=[],
                              deps=[orca.deps.package("no-such-distribution")]).hash


# -- warnings --------------------------------------------------------------------------------


def test_an_unhashable_global_warns_once_naming_it(tmp_path):
    module = load(tmp_path, "identity_opaque", '''
        import orca

        PENDING = iter([1, 2])

        @orca.function_pod(output_keys="y")
        def f(x: int) -> int:
            return x + next(PENDING)
    ''')
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = module.f.pod.identity.hash
        module.f.pod.identity.explain()
        again = orca.function_pod(output_keys="y")(module.f).pod.identity.hash  # a second pod, same function
    assert first == again
    assert [w.category for w in caught] == [IdentityWarning]
    message = str(caught[0].message)
    assert "PENDING" in message and "deps=" in message and "version=" in message
    assert ("unhashed", "PENDING") in [(p.kind, p.name) for p in module.f.pod.identity.explain().parts]


def test_loggers_library_functions_and_modules_are_left_out_silently(tmp_path):
    module = load(tmp_path, "identity_libraries", '''
        import logging
        import math
        from os.path import join

        import numpy as np

        import orca

        log = logging.getLogger(__name__)
        WEIGHTS = np.arange(4.0)

        @orca.function_pod(output_keys="y")
        def f(x: float) -> float:
            log.debug("x=%s", x)
            return float(np.dot(WEIGHTS, WEIGHTS)) + math.sqrt(x) + len(join("a", "b"))
    ''')
    with warnings.catch_warnings():
        warnings.simplefilter("error", IdentityWarning)
        parts = module.f.pod.identity.explain().parts
    assert {(p.kind, p.name) for p in parts if p.kind in ("function", "constant")} == {
        ("function", "f"), ("constant", "WEIGHTS")}


# -- canonical values ------------------------------------------------------------------------

plain = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=3), inner, max_size=4),
    max_leaves=12)


@given(st.lists(plain, max_size=5), st.randoms())
def test_value_hash_ignores_set_and_dict_order(values, rnd):
    keys = [f"k{i}" for i in range(len(values))]
    shuffled = list(zip(keys, values, strict=True))
    rnd.shuffle(shuffled)
    assert _hash_value(dict(zip(keys, values, strict=True))) == _hash_value(dict(shuffled))
    texts = [json.dumps(v, sort_keys=True) for v in values]
    assert _hash_value(frozenset(texts)) == _hash_value(frozenset(reversed(texts)))


def test_value_hash_tells_types_apart():
    assert len({_hash_value(v) for v in (1, 1.0, "1", True, None, (1,), [1], b"1")}) == 8
    assert _hash_value(0.1 + 0.2) != _hash_value(0.3)


# -- end to end: what a run recomputes --------------------------------------------------------


def run(module, store, rows):
    pipeline = orca.Pipeline("identity", store=store)
    with pipeline:
        src = orca.DictSource(rows, tags=["i"], source_id="src")
        module.down.pod(module.step.pod(src))
        module.other.pod(src)
    result = pipeline.run(progress=False)
    return {label: (c.cached, c.computed) for label, c in result.counts.items()}


@pytest.mark.parametrize("change", [{"helper": 20}, {"deep": 2}, {"k": 11}, {"method": 1}, "file", "package",
                                    {"unrelated": 2}, {"comment": "edited"}])
def test_a_run_recomputes_exactly_the_changed_pod_and_its_downstream(tmp_path, monkeypatch, change):
    data = tmp_path / "table.txt"
    data.write_text("v1")
    monkeypatch.syspath_prepend(str(fake_distribution(tmp_path / "v1", "1.0")))
    deps = f"[orca.deps.file({str(data)!r}), orca.deps.package('orca-identity-fixture')]"
    store = orca.DeltaStore(tmp_path / "store")
    rows = [{"i": i, "x": i} for i in range(6)]
    assert run(variant(tmp_path, deps=deps), store, rows) == {"step": (0, 6), "down": (0, 6), "other": (0, 6)}
    if change == "file":
        data.write_text("v2")
    elif change == "package":
        monkeypatch.syspath_prepend(str(fake_distribution(tmp_path / "v2", "2.0")))
    edits = change if isinstance(change, dict) else {}
    counts = run(variant(tmp_path, deps=deps, **edits), store, rows)
    if "unrelated" in edits or "comment" in edits:
        assert counts == {"step": (6, 0), "down": (6, 0), "other": (6, 0)}
    elif edits:  # the code changed every y (to values not seen before): down computes them all
        assert counts == {"step": (0, 6), "down": (0, 6), "other": (6, 0)}
    else:  # a declared dep changed: step recomputes, returns the same y, so down is served
        assert counts == {"step": (0, 6), "down": (6, 0), "other": (6, 0)}
