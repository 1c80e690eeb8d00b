"""Lineage: the source rows and files behind every output row, and the reverse.

When a pipeline runs, each source's rows are recorded in ``sources/<source id>``: the record
id (``__record_id``, the value of the ``__tag__<source id>`` system tag), the tag values, the
packet's hash, and for path columns the file's size, mtime and content hash. A row is added
only when something about it changed (a new record; for files, new content, or the same content
at a new path, size or mtime), so the table is the history of what the source delivered, and its
latest row per record is what the source delivers now. It is also the persistent memo of file
hashes: a later process re-reads only files whose size or mtime changed since then
(:func:`remember_source_files`; ``run(rehash_files=True)`` forgets it).

:func:`lineage` walks from selected asset rows back to the sources, through the provenance
tables: a provenance row's ``__source__<column>`` references name either a source record
(``<source id>#<record id>``) or an upstream node's result (``results/<fn>/<hash>#<record id>``),
whose provenance row is the one with that record id and system tags the downstream row carries.
:func:`downstream` goes the other way, by the ``__tag__<source id>`` system tags every derived
row keeps. See ``docs/assets.md``.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from orca.engine import NodeSpec, utc_now
from orca.errors import OrcaError
from orca.hashing import (
    KeySet,
    file_facts,
    hash_keys,
    hash_packets,
    hex_digests,
    keys_binary,
    remember_files,
)
from orca.names import (
    ENTRY_ID,
    INVALIDATED_AT,
    PACKET_HASH,
    RECORD_ID,
    RUN_ID,
    SOURCE_PREFIX,
    SOURCES_INDEX,
    SYSTEM_TAG_PREFIX,
    SYSTEM_TAGS,
    hex_ids,
    sources_table,
)
from orca.sources import Source

if TYPE_CHECKING:
    from orca.stores import Store
    from orca.streams import Stream

__all__ = ["record_sources", "remember_source_files", "lineage", "downstream", "sources_in"]

_ROW_KEY = "__row_key"
_RECORDED_AT = "__recorded_at"


def sources_in(streams: Iterable[Stream]) -> dict[str, Source]:
    """The sources among ``streams`` (by source id)."""
    return {s.source_id: s for s in streams if isinstance(s, Source)}


def _file_columns(column: str) -> tuple[str, str, str]:
    return f"{column}_size", f"{column}_mtime_ns", f"{column}_content_hash"


_RECORD_SLICE = 1_000_000  # source rows appended at a time


def record_sources(store: Store, sources: Mapping[str, Source], run_id: str) -> None:
    """Append to ``sources/<id>`` the rows of each source that are new: a new record (the table is
    keyed by ``__record_id``), or for a source of files, a record whose *state* (packet hash, and
    each file's path, size and mtime) differs from its latest recorded row (keyed by ``__row_key``,
    a hash of the state). A file touched but not edited thus gets a row with its new mtime, which
    the next process's file-hash memo starts from (:func:`remember_source_files`)."""
    for source_id, source in sources.items():
        rows = _delivered(source)
        key = _ROW_KEY if source.path_columns else RECORD_ID
        fingerprint = _fingerprint(rows[key]) if source.path_columns else source.records_digest
        if fingerprint == _recorded_fingerprint(store, source_id):
            continue  # delivered exactly these rows before: nothing to read or write
        delivered = rows.height
        if source.path_columns:
            rows = _changed(store, source_id, rows, _state_columns(source))
        else:
            recorded = _recorded_among(store, source_id, rows[key])
            rows = rows.filter(~rows[key].is_in(recorded.implode())) if recorded.len() else rows
        now = utc_now()
        # A slice at a time: the run id, the time and the Arrow copy of the text are made for
        # one slice while earlier ones commit (whole, 10M rows took ~0.6 GB at a run's peak).
        for start in range(0, rows.height, _RECORD_SLICE):
            part = rows.slice(start, _RECORD_SLICE).with_columns(
                pl.lit(run_id).alias(RUN_ID), pl.lit(now).dt.cast_time_unit("us").alias(_RECORDED_AT))
            # (evolve: two pipelines may give one source id different tag columns)
            store.append(sources_table(source_id), part.to_arrow(), key=[key], evolve=True)
        store.append(SOURCES_INDEX, pa.table({
            "source_id": [source_id], "fingerprint": [fingerprint], "rows": [delivered], "run_id": [run_id],
            "recorded_at": pa.array([utc_now()], pa.timestamp("us", tz="UTC"))}))


def _recorded_among(store: Store, source_id: str, keys: pl.Series) -> pl.Series:
    """Which of ``keys`` (record ids) ``sources/<id>`` already holds: one scan of its key column
    probing a set of ``keys``, so a small delivery against a large record costs a read, not a
    deduplication of every recorded key (a 10k-row source against 3M recorded rows: ~0.15 s
    instead of ~1.5 s)."""
    name = sources_table(source_id)
    table = store.scan(name, include_invalidated=True)  # (never invalidated; copies are harmless)
    if table is None:
        return keys.clear()
    found = table.select(RECORD_ID).filter(pl.col(RECORD_ID).is_in(keys.implode())).unique()
    return store.collect(name, found).to_series()


def _state_columns(source: Source) -> list[str]:
    """The columns that make a recorded row of a source of files: its record, its packet (files by
    content), and where and as what each file was found (the memo trusts size and mtime)."""
    files = [c for path in sorted(source.path_columns) for c in (path, *_file_columns(path)[:2])]
    return [RECORD_ID, PACKET_HASH, *files]


def _delivered(source: Source) -> pl.DataFrame:
    """The rows ``source`` delivers now, as ``sources/<id>`` holds them (without run and time);
    for a source of files with ``__row_key`` = the hash of the state columns."""
    record = SYSTEM_TAG_PREFIX + source.source_id
    frame = source.lazy(include_system=True).select(
        *source.tag_columns, record, *sorted(set(source.path_columns) - set(source.tag_columns))).collect()
    columns: dict[str, Any] = {c: frame[c] for c in source.tag_columns}
    columns[RECORD_ID] = frame[record]
    for path in sorted(source.path_columns):
        facts = file_facts(frame[path].to_list())
        size, mtime, digest = _file_columns(path)
        columns[path] = frame[path]
        columns[size] = pl.Series([f[0] if f else None for f in facts], dtype=pl.Int64)
        columns[mtime] = pl.Series([f[1] if f else None for f in facts], dtype=pl.Int64)
        columns[digest] = pl.Series([f[2] if f else None for f in facts], dtype=pl.String)
    rows = pl.DataFrame(columns)
    if not source.path_columns:  # tags only: a record id is the row
        return rows
    packets = source.to_arrow().select(list(source.packet_columns))
    rows = rows.with_columns(pl.Series(PACKET_HASH, hash_packets(packets)))
    return rows.with_columns(pl.Series(_ROW_KEY, hash_packets(rows.select(_state_columns(source)).to_arrow())))


def _changed(store: Store, source_id: str, rows: pl.DataFrame, state: list[str]) -> pl.DataFrame:
    """The rows whose state is not that of their record's latest recorded row.

    Compared with the latest row, not with every row recorded, so that a file whose earlier state
    comes back (a touch undone, a backup restored) is recorded again: lineage and the memo read
    the latest row. Such a row's state key is taken, so its key is chained to the row it follows.
    """
    name = sources_table(source_id)
    table = store.scan(name, include_invalidated=True)  # (never invalidated; copies are harmless)
    if table is None:
        return rows
    names = table.collect_schema().names()
    wanted = [RECORD_ID, _ROW_KEY, _RECORDED_AT, *state[1:]]
    recorded = store.collect(name, table.select(  # (a column a later pipeline added: null before)
        pl.col(c) if c in names else pl.lit(None, rows.schema.get(c, pl.Null)).alias(c) for c in wanted))
    latest = recorded.sort(_RECORDED_AT, nulls_last=False).unique(RECORD_ID, keep="last")
    previous = "__previous"
    compared = rows.join(latest, on=RECORD_ID, how="left", suffix=previous)
    changed = compared.filter(pl.any_horizontal(pl.col(c).ne_missing(pl.col(c + previous)) for c in state[1:]))
    again = changed[_ROW_KEY].is_in(recorded[_ROW_KEY].implode())
    if again.any():
        chained = hash_packets(changed.select(_ROW_KEY, _ROW_KEY + previous).to_arrow())
        changed = changed.with_columns(pl.when(again).then(pl.Series(chained)).otherwise(pl.col(_ROW_KEY))
                                       .alias(_ROW_KEY))
    return changed.select(rows.columns)


def _fingerprint(keys: pl.Series) -> str:
    """An order-independent digest of a source's row keys (32-hex-digit record ids; for files,
    the rows' state keys): a source that delivers the same rows again is recognised without
    reading what was recorded. Their bytes are summed and XORed (:class:`KeySet`), not hashed
    and sorted: 0.06-0.10 s per million rows instead of 0.24-0.29 s (mostly reading the hex). A
    source's record ids are digested so when it is built (``Source.records_digest``), while
    they are keys: the hex is not read again each run."""
    words = hex_digests(keys).view(">u8")
    return KeySet().add_words(words[:, 0], words[:, 1]).digest


def _recorded_fingerprint(store: Store, source_id: str) -> str | None:
    """The fingerprint of the rows source ``source_id`` delivered when it was last recorded."""
    index = store.scan(SOURCES_INDEX)
    if index is None:
        return None
    found = store.collect(SOURCES_INDEX, index.filter(pl.col("source_id") == source_id)
                          .sort("recorded_at").select("fingerprint").tail(1))
    return found["fingerprint"][0] if found.height else None


def remember_source_files(store: Store, sources: Mapping[str, Source]) -> None:
    """Seed the file-hash memo from the recorded sources, so unchanged files are not re-read."""
    for source_id, source in sources.items():
        if not source.path_columns:
            continue
        table = store.scan(sources_table(source_id))
        if table is None:
            continue
        names = table.collect_schema().names()
        for path in source.path_columns:
            size, mtime, digest = _file_columns(path)
            if not {path, size, mtime, digest} <= set(names):
                continue
            # each path's latest row only (its earlier ones would be passed to Python to be dropped)
            latest = pl.col(_RECORDED_AT) == pl.col(_RECORDED_AT).max().over(path)
            known = store.collect(sources_table(source_id), table.filter(latest)
                                  .select(path, size, mtime, digest).drop_nulls())
            remember_files(known[path].to_list(), known[size].to_list(), known[mtime].to_list(),
                           known[digest].to_list())


# -- lineage ----------------------------------------------------------------------------------
_LINEAGE_SCHEMA = {
    "row": pl.Int64, "depth": pl.Int64, "kind": pl.String, "node": pl.String, "entry_id": pl.String,
    "record_id": pl.String, "function_hash": pl.String, "run_id": pl.String, "source_id": pl.String,
    "source_tags": pl.String, "path": pl.String, "content_hash": pl.String,
}


def lineage(store: Store, specs: Mapping[str, NodeSpec], label: str, rows: pl.DataFrame) -> pl.DataFrame:
    """For each row of ``rows`` (asset rows of node ``label``, with ``__entry_id``), every step back
    to the sources: one row per node entry and per source record, with the row's position in
    ``rows`` (``row``) and its distance from it (``depth``)."""
    by_results = {spec.results_table: name for name, spec in specs.items()}
    out: list[dict] = []
    frontier = [(i, 0, label, entry, None) for i, entry in enumerate(rows[ENTRY_ID].to_list())]
    seen: set[tuple] = set()
    while frontier:
        wanted: dict[str, list] = {}
        for step in frontier:
            wanted.setdefault(step[2], []).append(step)
        frontier = []
        for name, steps in wanted.items():
            spec = specs[name]
            prov = _provenance(store, spec, [s[3] for s in steps if s[3] is not None],
                               [s[4] for s in steps if s[3] is None])
            for row, depth, _, entry, by_record in steps:
                matches = prov.filter(pl.col(ENTRY_ID) == entry) if entry is not None else \
                    prov.filter(pl.col(RECORD_ID) == by_record[0]).filter(
                        pl.col(SYSTEM_TAGS).map_elements(lambda t, c=by_record[1]: _within(t, c), pl.Boolean))
                for p in matches.iter_rows(named=True):
                    if (row, name, p[ENTRY_ID]) in seen:
                        continue
                    seen.add((row, name, p[ENTRY_ID]))
                    out.append({"row": row, "depth": depth, "kind": "node", "node": name, "entry_id": p[ENTRY_ID],
                                "record_id": p[RECORD_ID], "function_hash": spec.pod.identity.hash,
                                "run_id": p[RUN_ID]})
                    carried = _values(json.loads(p[SYSTEM_TAGS]))
                    for ref in _refs(p):
                        table, _, record = ref.rpartition("#")
                        if table in by_results:
                            frontier.append((row, depth + 1, by_results[table], None, (record, carried)))
                        else:
                            out.append(_source_step(store, row, depth + 1, table, record))
    return pl.DataFrame(out, schema=_LINEAGE_SCHEMA).unique(maintain_order=True)


def _provenance(store: Store, spec: NodeSpec, entries: list[str], records: list[tuple]) -> pl.DataFrame:
    """Live provenance rows of ``spec`` with these entry ids or record ids."""
    prov = store.scan(spec.provenance_table, include_invalidated=True)
    if prov is None:
        raise OrcaError(f"node {spec.label!r} has no provenance table yet: run the pipeline first")
    prov = prov.filter(pl.col(INVALIDATED_AT).is_null())
    wanted = (pl.col(ENTRY_ID).is_in(_stored_ids(entries).implode())
              | pl.col(RECORD_ID).is_in(_stored_ids([r[0] for r in records]).implode()))
    return hex_ids(store.collect(spec.provenance_table, prov.filter(wanted)))


def _stored_ids(ids: list[str]) -> pl.Series:
    """Hex ids as the 16 bytes stored."""
    return pl.Series(keys_binary(hash_keys(pl.Series(ids, dtype=pl.String))), dtype=pl.Binary)


def _refs(row: Mapping[str, Any]) -> list[str]:
    refs: set[str] = set()
    for column, value in row.items():
        if column.startswith(SOURCE_PREFIX):
            refs.update(_leaves(value))
    return sorted(refs)


def _values(system_tags: Mapping[str, Any]) -> set[str]:
    """Every record id a row's system tags hold (lists after a batch, lists of lists after two)."""
    return {v for value in system_tags.values() for v in _leaves(value)}


def _leaves(value: Any) -> Iterator[Any]:
    """The values of ``value`` that are not None, from nested lists at any depth."""
    if isinstance(value, list):
        for item in value:
            yield from _leaves(item)
    elif value is not None:
        yield value


def _within(system_tags: str, carried: set[str]) -> bool:
    """Whether an upstream row's system tags are among those the downstream row carries."""
    return _values(json.loads(system_tags)) <= carried


def _source_step(store: Store, row: int, depth: int, source_id: str, record: str) -> dict:
    step = {"row": row, "depth": depth, "kind": "source", "source_id": source_id, "record_id": record}
    table = store.scan(sources_table(source_id))
    if table is None:
        return step
    found = store.collect(sources_table(source_id), table.filter(pl.col(RECORD_ID) == record))
    if found.height == 0:
        return step
    latest = found.sort(_RECORDED_AT).row(-1, named=True)
    system = {RECORD_ID, PACKET_HASH, _ROW_KEY, RUN_ID, _RECORDED_AT, INVALIDATED_AT}
    digests = [c for c in latest if c.endswith("_content_hash")]
    step["content_hash"] = latest[digests[0]] if digests else None
    step["path"] = latest[digests[0].removesuffix("_content_hash")] if digests else None
    step["source_tags"] = json.dumps({k: v for k, v in latest.items() if k not in system and not k.startswith(
        tuple(c.removesuffix("_content_hash") for c in digests))}, default=str, sort_keys=True)
    return step


def downstream(store: Store, specs: Mapping[str, NodeSpec], source_id: str, records: pl.Series) -> pl.DataFrame:
    """The asset rows of every node that depend on source ``source_id``'s records ``records``:
    ``node`` plus the asset columns."""
    wanted = set(records.cast(pl.String).to_list())
    prefix = SYSTEM_TAG_PREFIX + source_id
    found = []
    for name, spec in specs.items():
        prov = store.scan(spec.provenance_table)
        asset = store.scan(spec.asset_table) if spec.asset_table else None
        if prov is None or asset is None:
            continue
        # The node's system tags from this source (``__tag__<id>``, or ``__tag__<id>__1`` after a
        # self-join), read out of the JSON column in one pass each; after a batch they are lists.
        columns = [c for c in spec.input.system_tag_columns if c == prefix or c.startswith(prefix + "__")]
        if not columns:
            continue
        schema = spec.input.full_schema
        matches = []
        for column in columns:
            value = pl.col(SYSTEM_TAGS).str.json_path_match(f'$["{column}"]')
            if pa.types.is_list(schema.field(column).type) or pa.types.is_large_list(schema.field(column).type):
                value = value.str.json_decode(pl.List(pl.String))
                matches.append(value.list.eval(pl.element().is_in(list(wanted))).list.any())
            else:
                matches.append(value.is_in(list(wanted)))
        hit = store.collect(spec.provenance_table, prov.filter(pl.any_horizontal(matches)).select(ENTRY_ID))
        if hit.height:
            rows = store.collect(spec.asset_table, asset.join(hit.lazy(), on=ENTRY_ID, how="semi"))
            found.append(hex_ids(rows).with_columns(pl.lit(name).alias("node")))
    return pl.concat(found, how="diagonal_relaxed") if found else pl.DataFrame(schema={"node": pl.String})


def source_rows(store: Store, source_id: str) -> pl.LazyFrame:
    """The recorded rows of source ``source_id`` (``sources/<source id>``)."""
    table = store.scan(sources_table(source_id))
    if table is None:
        raise OrcaError(f"no recorded rows for source {source_id!r}: run a pipeline that reads it first")
    return table
