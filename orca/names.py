"""The store's table and column names, and the Arrow schema of each table orca writes.

Defined once, here: every module that reads or writes a table takes its names from this
module, and stores learn them from their callers. Stored system columns start with ``__``;
user columns may not (see :func:`check_user_columns`). ``docs/stores.md`` documents each table.

>>> results_table("double", "ab12")
'results/double/ab12'
>>> provenance_table("demo", "double")
'pipelines/demo/double'
>>> source_column("x")
'__source__x'
"""

from __future__ import annotations

import re
from collections.abc import Sequence

import polars as pl
import pyarrow as pa

from orca.errors import SchemaError

# -- prefixes ----------------------------------------------------------------------------------
SYSTEM_PREFIX = "__"
SOURCE_PREFIX = "__source__"  # __source__<packet column>: "<source id>#<record id>"
SYSTEM_TAG_PREFIX = "__tag__"  # __tag__<source id>: the record id of the source row

# -- tables --------------------------------------------------------------------------------------
FAILURES = "failures"
RUNS = "runs"
SOURCES_INDEX = "sources_index"  # one row per recorded state of a source: its rows' fingerprint
# The store's maintenance lease (a claims table): compaction and invalidation, the operations that
# rewrite the same files, never overlap (see DeltaStore.upkeep).
MAINTENANCE = "maintenance"

# -- stored columns ------------------------------------------------------------------------------
PACKET_HASH = "__packet_hash"
RECORD_ID = "__record_id"
ENTRY_ID = "__entry_id"
SYSTEM_TAGS = "__system_tags"
FUNCTION_HASH = "__function_hash"
COMPUTED_AT = "__computed_at"
DURATION = "__duration_s"
RUN_ID = "__run_id"
RECORDED_AT = "__recorded_at"
INVALIDATED_AT = "__invalidated_at"

# -- working columns (in memory only, never stored) ------------------------------------------
KEY = "__hash_key"  # an input packet hash as one UInt128 (see hashing.hash_keys)
ENTRY_KEY = "__entry_key"  # a node's entry id as one UInt128
HIT = "__hit"  # the packet has a live result (null: none)
DONE = "__done"  # the entry is done: live provenance row and live result
ROW = "__row"  # a row's position in a chunk handed to an executor
OK = "__ok"  # the call succeeded
ATTEMPTS = "__attempts"
ERROR_TYPE, ERROR_MESSAGE, TRACEBACK = "__error_type", "__error_message", "__traceback"
ERROR_COLUMNS = (ERROR_TYPE, ERROR_MESSAGE, TRACEBACK)
INPUT_ROW = "__input_row"  # an entry's row in the node's input
UPSTREAM_KEY = "__upstream_key"  # the upstream node's packet key of each input row

_TIME = pa.timestamp("us", tz="UTC")
# Ids (packet hashes, entry ids, record ids) are stored as 16 bytes; orca's API shows them as
# 32 hex digits (see hex_ids). Stores written before that hold hex text (see stores/delta.py).
ID_TYPE = pa.binary()
ID_COLUMNS = (PACKET_HASH, RECORD_ID, ENTRY_ID, "packet_hash", "entry_id")
# The tables whose id columns are binary (sources keep their record ids as text: they are tags).
ID_TABLE_PREFIXES = ("results/", "pipelines/", "assets/")
LABEL_OK = re.compile(r"^[A-Za-z0-9_\-.]+$")


def results_table(function: str, function_hash: str) -> str:
    """``results/<function>/<function hash>``: one row per input packet hash."""
    return f"results/{function}/{function_hash}"


def provenance_table(pipeline: str, label: str) -> str:
    """``pipelines/<pipeline>/<label>``: one provenance row per entry of a node."""
    return f"pipelines/{pipeline}/{label}"


def asset_table(pipeline: str, label: str) -> str:
    """``assets/<pipeline>/<label>``: a node's current output, one row per current entry."""
    return f"assets/{pipeline}/{label}"


def sources_table(source_id: str) -> str:
    """``sources/<source id>``: the rows a source delivered (record ids, tags, files)."""
    return f"sources/{source_id}"


def claims_table(pipeline: str, label: str) -> str:
    """``claims/<pipeline>/<label>``: leases on chunks of a node's entries (``run(claim=True)``)."""
    return f"claims/{pipeline}/{label}"


def has_ids(table: str) -> bool:
    """Whether table ``table``'s id columns (:data:`ID_COLUMNS`) hold 16-byte ids."""
    return table == FAILURES or table.startswith(ID_TABLE_PREFIXES)


def hex_ids(frame: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """``frame`` with its binary id columns as 32 lowercase hex digits (how users see ids).

    >>> hex_ids(pl.DataFrame({"__entry_id": [bytes(15) + b"\\x0f"], "x": [1]})).row(0)
    ('0000000000000000000000000000000f', 1)
    """
    schema = frame.collect_schema()
    return frame.with_columns(pl.col(c).bin.encode("hex") for c in ID_COLUMNS if schema.get(c) == pl.Binary)


def source_column(packet_column: str) -> str:
    """Name of the source-info column for ``packet_column``."""
    return SOURCE_PREFIX + packet_column


def source_references(source_id: str) -> pl.Expr:
    """A source's rows' ``__source__`` references (one for all its packet columns):
    ``<source id>#<record id>``, from the record id system tag."""
    return pl.lit(source_id + "#") + pl.col(SYSTEM_TAG_PREFIX + source_id)


def check_label(kind: str, value: object) -> str:
    """A pipeline name or node label: letters, digits, ``_``, ``-`` and ``.`` (it names a table).

    >>> check_label("pipeline", "a b")
    Traceback (most recent call last):
    ...
    orca.errors.SchemaError: pipeline name 'a b' may hold only letters, digits, '_', '-' and '.'
    """
    if not isinstance(value, str) or not LABEL_OK.match(value):
        raise SchemaError(f"{kind} name {value!r} may hold only letters, digits, '_', '-' and '.'")
    return value


def check_user_columns(names: Sequence[object], where: str) -> None:
    """User column names are non-empty strings without the system prefix ``__``.

    >>> check_user_columns(["x", "__y"], "demo")
    Traceback (most recent call last):
    ...
    orca.errors.SchemaError: demo: column names must be non-empty strings not starting with '__' (reserved for orca): ['__y']
    """
    bad = [n for n in names if not isinstance(n, str) or not n or n.startswith(SYSTEM_PREFIX)]
    if bad:
        raise SchemaError(
            f"{where}: column names must be non-empty strings not starting with '__' (reserved for orca): {bad!r}")


# -- schemas of the tables orca writes -----------------------------------------------------------
def results_schema(output_fields: Sequence[pa.Field]) -> pa.Schema:
    """A results table: the outputs, then the system columns."""
    return pa.schema([*output_fields,
                      (PACKET_HASH, ID_TYPE), (RECORD_ID, ID_TYPE),
                      (FUNCTION_HASH, pa.large_string()), (COMPUTED_AT, _TIME),
                      (DURATION, pa.float64()), (RUN_ID, pa.large_string())])


FAILURES_SCHEMA = pa.schema([
    ("node", pa.large_string()), ("entry_id", ID_TYPE), ("packet_hash", ID_TYPE),
    ("function", pa.large_string()), ("function_hash", pa.large_string()), ("tag", pa.large_string()),
    ("error_type", pa.large_string()), ("message", pa.large_string()), ("traceback", pa.large_string()),
    ("attempts", pa.int64()), ("run_id", pa.large_string()), ("failed_at", _TIME),
])

RUNS_SCHEMA = pa.schema([
    ("run_id", pa.large_string()), ("pipeline", pa.large_string()), ("seq", pa.int64()),
    ("event", pa.large_string()), ("status", pa.large_string()), ("node", pa.large_string()),
    ("total", pa.int64()), ("cached", pa.int64()), ("computed", pa.int64()), ("failed", pa.int64()),
    ("started_at", _TIME), ("at", _TIME),
    ("asset_version", pa.int64()), ("environment", pa.large_string()),
    ("function_hash", pa.large_string()), ("identity", pa.large_string()),
])

ADOPTIONS = "adoptions"
ADOPTIONS_SCHEMA = pa.schema([
    ("pipeline", pa.large_string()), ("node", pa.large_string()), ("function", pa.large_string()),
    ("old_function_hash", pa.large_string()), ("new_function_hash", pa.large_string()),
    ("rows", pa.int64()), ("changed", pa.large_string()), ("adopted_at", _TIME),
])
