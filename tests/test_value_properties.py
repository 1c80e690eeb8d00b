"""Properties of value hashing across processes (issue 14, item 3).

Every generated value either hashes identically in processes with different
``PYTHONHASHSEED``s or raises ``HashingError``; never a hash that depends on set order,
pointers or ``repr``. The examples are hashed here, pickled to one file, and hashed again in
ONE subprocess per seed (not one per example), so the test stays fast.

Also: normalising a column to its Delta-storable type (``orca.types.storable_column``) never
changes its hashes, so the value hashed at a source is the value the store keeps.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import subprocess
import sys
from decimal import Decimal

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from orca.errors import HashingError, SchemaError
from orca.hashing import hash_packet, hash_packets
from orca.types import storable_column

SEEDS = ("1", "2")

# ------------------------------------------------------------------------- Python values

_text = st.text(alphabet=st.characters(codec="utf-8"), max_size=8)  # non-ASCII included
_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([float("nan"), -0.0, 0.0]),
    _text,
    st.binary(max_size=8),
    st.dates(),
    st.datetimes(),
    st.datetimes(timezones=st.sampled_from([dt.UTC, dt.timezone(dt.timedelta(hours=5, minutes=30))])),
    st.decimals(allow_nan=False, allow_infinity=False, places=2, min_value=-(10**6), max_value=10**6),
)
# Containers pyarrow would accept: lists (and tuples), str-keyed dicts, and sets, which orca
# must refuse (their iteration order changes with PYTHONHASHSEED).
python_values = st.recursive(
    _scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.tuples(inner, inner),
        st.dictionaries(st.sampled_from(["a", "b", "é"]), inner, max_size=3),
        st.frozensets(_text, min_size=3, max_size=5),
        st.sets(_text, min_size=3, max_size=5),
        st.dictionaries(st.integers(0, 3), inner, min_size=1, max_size=2),  # non-str keys
    ),
    max_leaves=6,
)

# ------------------------------------------------------------------------- Arrow columns

_ints = {pa.int8(): 7, pa.int16(): 15, pa.int32(): 31, pa.int64(): 63}
_uints = {pa.uint8(): 8, pa.uint16(): 16, pa.uint32(): 32, pa.uint64(): 64}
_ARROW: list[tuple[pa.DataType, st.SearchStrategy]] = [
    *[(t, st.integers(-(2**bits), 2**bits - 1)) for t, bits in _ints.items()],
    *[(t, st.integers(0, 2**bits - 1)) for t, bits in _uints.items()],
    (pa.float32(), st.floats(width=32)),
    (pa.float64(), st.floats()),
    (pa.string(), _text),
    (pa.large_string(), _text),
    (pa.string_view(), _text),
    (pa.binary(), st.binary(max_size=8)),
    (pa.binary(2), st.binary(min_size=2, max_size=2)),
    (pa.bool_(), st.booleans()),
    (pa.null(), st.none()),
    (pa.date32(), st.dates()),
    (pa.date64(), st.dates()),
    (pa.timestamp("us"), st.datetimes()),
    (pa.timestamp("ns"), st.integers(-(2**62), 2**62)),
    (pa.timestamp("ms", "Europe/Paris"), st.integers(-(2**50), 2**50)),
    (pa.timestamp("us", "UTC"), st.datetimes(timezones=st.just(dt.UTC))),
    (pa.time64("us"), st.times()),
    (pa.duration("ns"), st.integers(-(2**62), 2**62)),
    (pa.decimal128(10, 2), st.decimals(allow_nan=False, allow_infinity=False, places=2,
                                       min_value=Decimal("-99999999.99"), max_value=Decimal("99999999.99"))),
    (pa.decimal256(50, 3), st.decimals(allow_nan=False, allow_infinity=False, places=3,
                                       min_value=-(10**20), max_value=10**20)),
    (pa.large_list(pa.int64()), st.lists(st.one_of(st.none(), st.integers(-(2**63), 2**63 - 1)), max_size=3)),
    (pa.list_(pa.float64(), 2), st.lists(st.floats(), min_size=2, max_size=2)),
    (pa.list_(pa.list_(pa.string())), st.lists(st.lists(_text, max_size=2), max_size=2)),
    (pa.struct([("b", pa.string()), ("a", pa.int32())]),
     st.fixed_dictionaries({"b": st.one_of(st.none(), _text), "a": st.integers(-(2**31), 2**31 - 1)})),
    (pa.large_list(pa.struct([("x", pa.float64())])),
     st.lists(st.fixed_dictionaries({"x": st.floats()}), max_size=2)),
    (pa.map_(pa.string(), pa.int64()), st.lists(st.tuples(_text, st.integers(0, 9)), max_size=2)),
]


@st.composite
def arrow_columns(draw) -> pa.Table:
    """A one-column table of a drawn Arrow type, 1-3 rows, nulls included."""
    arrow_type, values = draw(st.sampled_from(_ARROW))
    column = draw(st.lists(st.one_of(st.none(), values), min_size=1, max_size=3))
    array = pa.array(column, arrow_type)
    if pa.types.is_string(arrow_type) and draw(st.booleans()):
        array = array.dictionary_encode()
    return pa.table({"v": array})


# ------------------------------------------------------------------------------ hashing

# Run here and, as source text, in the subprocesses (which so import only orca.hashing).
_HASHERS = """
from orca.errors import HashingError
from orca.hashing import hash_packet, hash_packets


def python_hash(value):
    try:
        return hash_packet({"v": value})
    except HashingError:
        return "HashingError"


def table_hashes(table):
    try:
        return hash_packets(table).to_pylist()
    except HashingError:
        return ["HashingError"]
"""
_hashers: dict = {}
exec(_HASHERS, _hashers)
python_hash, table_hashes = _hashers["python_hash"], _hashers["table_hashes"]

_CHILD = _HASHERS + """
import json, pickle, sys
values, tables = pickle.load(open(sys.argv[1], "rb"))
json.dump([[python_hash(v) for v in values], [table_hashes(t) for t in tables]], sys.stdout)
"""


def _hash_in_subprocesses(path: str) -> dict[str, list]:
    """The examples at ``path`` hashed in one subprocess per seed, the subprocesses in parallel."""
    children = {seed: subprocess.Popen([sys.executable, "-c", _CHILD, path], text=True,
                                       env={**os.environ, "PYTHONHASHSEED": seed},
                                       stdout=subprocess.PIPE, stderr=subprocess.PIPE)
                for seed in SEEDS}
    results = {}
    for seed, child in children.items():
        out, err = child.communicate(timeout=120)
        assert child.returncode == 0, err
        results[seed] = json.loads(out)
    return results


@settings(max_examples=1, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(values=st.lists(python_values, min_size=200, max_size=200),
       tables=st.lists(arrow_columns(), min_size=200, max_size=200))
def test_values_hash_the_same_under_every_hash_seed_or_raise(tmp_path_factory, values, tables):
    # sets of several strings are always among the examples: their order differs per seed
    values = [*values, {"alpha", "beta", "gamma", "delta", "epsilon"}, [{"x": {"p", "q", "r", "s"}}]]
    here = [[python_hash(v) for v in values], [table_hashes(t) for t in tables]]
    path = tmp_path_factory.mktemp("examples") / "examples.pickle"
    path.write_bytes(pickle.dumps((values, tables)))
    for seed, there in _hash_in_subprocesses(str(path)).items():
        for value, mine, theirs in zip(values, here[0], there[0], strict=True):
            assert mine == theirs, f"{value!r} hashed differently under PYTHONHASHSEED={seed}"
        for table, mine, theirs in zip(tables, here[1], there[1], strict=True):
            assert mine == theirs, f"{table.column(0)!r} hashed differently under PYTHONHASHSEED={seed}"
    # the refusals are the ones intended: sets, and dicts with non-str keys
    for value, digest in zip(values, here[0], strict=True):
        if isinstance(value, set | frozenset):
            assert digest == "HashingError"


@settings(max_examples=150, deadline=None)
@given(table=arrow_columns())
def test_normalising_to_a_storable_type_never_changes_a_hash(table):
    try:
        stored = storable_column(table.column("v"), "v")
    except SchemaError:  # time, duration, map, or a value the conversion would lose
        return
    assert hash_packets(pa.table({"v": stored})).equals(hash_packets(table))


@pytest.mark.parametrize("value", [{"b", "a", "c"}, [frozenset({"x", "y"})], {"k": {"p", "q"}}])
def test_set_values_are_refused_not_hashed_in_set_order(value):
    with pytest.raises(HashingError, match="set has no order"):
        hash_packet({"v": value})
