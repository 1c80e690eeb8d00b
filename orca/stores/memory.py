"""MemoryStore: the same semantics as DeltaStore with in-memory Arrow tables (tests, notebooks)."""

from __future__ import annotations

import dataclasses
import datetime
import uuid
from collections.abc import Callable, Sequence

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc

from orca.errors import StoreError
from orca.stores.base import (
    COMMIT,
    INVALIDATED_AT,
    INVALIDATED_TYPE,
    RUN_ID,
    BufferedStore,
    check_key,
    check_name,
    comparable_keys,
    conform,
    key_frame,
    member,
    single_key,
    sync_plan,
)


@dataclasses.dataclass
class _Table:
    key: tuple[str, ...]
    data: pa.Table
    writers: list[str] = dataclasses.field(default_factory=list)  # who made each version
    # Keyed tables: key, __run_id and the version of every appended row (the dedup rule's
    # commit order; invalidate and compact rewrite `data` but never this).
    added: pl.DataFrame | None = None
    # Unkeyed tables synced with sync_rows: every version's rows and commit details (time travel).
    versions: list[tuple[pa.Table, dict]] = dataclasses.field(default_factory=list)
    uid: str = dataclasses.field(default_factory=lambda: uuid.uuid4().hex)  # (see Store.table_id)


class MemoryStore(BufferedStore):
    """Tables held in this process; a commit moves buffered rows into the committed table.

    >>> import pyarrow as pa
    >>> store = MemoryStore()
    >>> store.append("runs", pa.table({"run": ["r1"]}))
    >>> store.scan("runs") is None  # not committed yet
    True
    >>> store.flush()
    >>> store.scan("runs").collect()["run"].to_list()
    ['r1']
    """

    location = "memory"

    def __init__(
        self, *, max_rows: int = 200_000, max_seconds: float = 30.0, max_retries: int = 10,
        background: bool = True,
    ) -> None:
        # (Commits here are quick, in-memory and always in the caller; ``background`` is
        # accepted so that code can configure either store the same way.)
        super().__init__(max_rows=max_rows, max_seconds=max_seconds, max_retries=max_retries,
                         background=background)
        self._tables: dict[str, _Table] = {}
        self._claims: dict[str, dict[tuple[int, int], dict]] = {}  # (see claim)

    def uri(self, name: str) -> str:
        """A label for messages; memory tables cannot be read by ``pl.scan_delta``."""
        return f"memory://{check_name(name)}"

    def _known_key(self, name: str) -> tuple[str, ...] | None:
        table = self._tables.get(name)
        return None if table is None else table.key

    def _commit(self, name: str, data: pa.Table, key: tuple[str, ...]) -> None:
        table = self._tables.get(name)
        if table is None:
            table = self._tables[name] = _Table(key, data.slice(0, 0))
        check_key(self.uri(name), key, table.key)
        data = conform(data, table.data.schema, self.uri(name), evolve=name in self._evolving)
        if len(data.schema) > len(table.data.schema):  # new columns: earlier rows get nulls
            table.data = conform(table.data, data.schema, self.uri(name), evolve=True)
        if key:
            version = len(table.writers)
            added = pl.from_arrow(data.select([*key, RUN_ID])).with_columns(pl.lit(version, pl.Int64).alias(COMMIT))
            table.added = added if table.added is None else pl.concat([table.added, added])
        table.data = pa.concat_tables([table.data, data])
        table.writers.append(self.writer_id)

    def _first_commits(self, name: str, pairs: pl.DataFrame) -> pl.DataFrame:
        """Commit order is known exactly here: every appended row's version is kept (the
        latest append of a pair is the live one, as in ``DeltaStore``)."""
        on = [*self._tables[name].key, RUN_ID]
        first = self._tables[name].added.group_by(on).agg(pl.col(COMMIT).max())
        return pairs.join(first, on=on, how="left", nulls_equal=True)

    def version(self, name: str) -> int | None:
        table = self._tables.get(check_name(name))
        return None if table is None else len(table.writers) - 1

    def table_id(self, name: str) -> str | None:
        table = self._tables.get(check_name(name))
        return None if table is None else table.uid

    def only_own_commits(self, name: str, since: int | None) -> bool:
        table = self._tables.get(check_name(name))
        if table is None:
            return True
        first = 0 if since is None else since + 1
        return all(w == self.writer_id for w in table.writers[first:])

    def unchanged_since(self, name: str, since: int | None, until: int | None = None) -> bool:
        table = self._tables.get(check_name(name))
        if table is None or since is None:
            return table is None and since is None
        end = len(table.writers) - 1 if until is None else until
        # (compact() rewrites without changing rows; every other commit may change them)
        return since <= end <= len(table.writers) - 1 and all(w == "compact" for w in table.writers[since + 1:end + 1])

    def _read(self, name: str) -> tuple[pl.LazyFrame, tuple[str, ...]] | None:
        table = self._tables.get(name)
        return None if table is None else (pl.from_arrow(table.data).lazy(), table.key)

    def invalidate(self, name: str, keys: pl.Series | pa.Array) -> int:
        """Mark live rows whose key is in ``keys`` invalidated; return the rows affected."""
        table = self._tables.get(check_name(name))
        if table is None:
            return 0
        column = single_key(self.uri(name), table.key)
        dtype = pl.from_arrow(table.data.select([column]))[column].dtype
        wanted = key_frame(keys, column, dtype).to_arrow().column(column)
        current = table.data.column(INVALIDATED_AT)
        hit = pc.and_(
            pc.is_in(
                table.data.column(column),
                value_set=wanted.cast(table.data.schema.field(column).type),
            ),
            pc.is_null(current),
        )
        now = pa.scalar(datetime.datetime.now(datetime.UTC), INVALIDATED_TYPE)
        updated = pc.if_else(hit, now, current)
        index = table.data.schema.get_field_index(INVALIDATED_AT)
        table.data = table.data.set_column(index, table.data.schema.field(index), updated)
        table.writers.append("invalidate")
        return int(pc.sum(hit).as_py() or 0)

    def exists(self, name: str) -> bool:
        return check_name(name) in self._tables

    def upkeep(self, names: Sequence[str]) -> None:
        """Nothing to do: in memory there are no files or logs to grow."""

    def ensure(self, name: str, schema: pa.Schema) -> None:
        """Create table ``name`` (unkeyed, empty) if it does not exist."""
        if check_name(name) not in self._tables:
            self._tables[name] = _Table((), schema.empty_table())

    def claim(self, name: str, chunk: int, of: int, owner: str, lease_seconds: float) -> bool:
        """As :meth:`DeltaStore.claim` (one process: a dict decides)."""
        claims = self._claims.setdefault(check_name(name), {})
        now = datetime.datetime.now(datetime.UTC)
        held = claims.get((chunk, of))
        if held is not None and (held["state"] == "done" or held["expires_at"] >= now):
            return False
        claims[(chunk, of)] = {"chunk": chunk, "of": of, "owner": owner, "state": "working", "claimed_at": now,
                               "expires_at": now + datetime.timedelta(seconds=lease_seconds)}
        return True

    def claims(self, name: str, of: int) -> dict[int, str]:
        held = self._claims.get(check_name(name), {})
        return {chunk: c["state"] for (chunk, n), c in held.items() if n == of}

    def update_claim(self, name: str, chunk: int, of: int, owner: str, *, lease_seconds: float | None = None,
                     done: bool = False) -> bool:
        held = self._claims.get(check_name(name), {}).get((chunk, of))
        if held is None or held["owner"] != owner or held["state"] != "working":
            return False
        if done:
            held["state"] = "done"
        else:
            held["expires_at"] = datetime.datetime.now(datetime.UTC) + datetime.timedelta(seconds=lease_seconds or 0)
        return True

    def tables(self, prefix: str = "") -> list[str]:
        return sorted(n for n in self._tables if n.startswith(prefix))

    def sync_rows(self, name: str, key: str, rows: pa.Table, changed: pl.Series, *,
                  metadata: dict[str, str] | None = None, compare: Sequence[str] = (),
                  trust_since: int | None = None) -> int | None:
        """As :meth:`DeltaStore.sync_rows`: make ``name`` hold exactly ``rows``, in one version."""
        table = self._tables.get(check_name(name))
        if table is None:
            table = self._tables[name] = _Table((), rows.slice(0, 0))
        if trust_since is not None and self.version(name) == trust_since:
            compare = ()
        data = conform(rows, table.data.schema, self.uri(name))
        existing = pl.from_arrow(table.data.select([key, *(c for c in compare if c in table.data.column_names)]))
        plan = sync_plan(existing if compare else existing[key], data, key, changed)
        delete, upsert, updated = plan.delete, plan.upsert, plan.updated
        if delete.len() == 0 and upsert.num_rows == 0 and table.writers:
            return None
        kept = comparable_keys(pl.Series(key, table.data.column(key)))
        keep = ~member(kept, pl.concat([comparable_keys(delete), comparable_keys(pl.Series(key, upsert.column(key)))]))
        table.data = pa.concat_tables([table.data.filter(keep.to_arrow()), upsert])
        table.writers.append(self.writer_id)
        table.versions.append((table.data, {
            "version": len(table.writers) - 1, "at": datetime.datetime.now(datetime.UTC),
            "run_id": (metadata or {}).get("orca.run"), "versions": (metadata or {}).get("orca.versions"),
            "operation": "MERGE",
            "inserted": upsert.num_rows - updated, "updated": updated, "deleted": delete.len()}))
        return len(table.writers) - 1

    def sync_staged(self, name: str, key: str, staged: Callable[[], pa.RecordBatchReader], staged_keys: pl.Series,
                    delete: pl.Series, *, since: int, metadata: dict[str, str] | None = None) -> int | None:
        """As :meth:`DeltaStore.sync_staged`: the staged rows in, the ``delete`` keys out, in one
        version; None, writing nothing, if the table is not at version ``since``."""
        reader = staged()
        table = self._tables.get(check_name(name))
        if table is None or self.version(name) != since:
            reader.close()
            return None
        existing = comparable_keys(pl.Series(key, table.data.column(key)))
        upsert = conform(reader.read_all(), table.data.schema, self.uri(name))
        deleted = member(existing, delete)
        replaced = member(existing, staged_keys)
        table.data = pa.concat_tables([table.data.filter((~deleted & ~replaced).to_arrow()), upsert])
        table.writers.append(self.writer_id)
        updated = int((replaced & ~deleted).sum())
        table.versions.append((table.data, {
            "version": len(table.writers) - 1, "at": datetime.datetime.now(datetime.UTC),
            "run_id": (metadata or {}).get("orca.run"), "versions": (metadata or {}).get("orca.versions"),
            "operation": "MERGE",
            "inserted": upsert.num_rows - updated, "updated": updated, "deleted": int(deleted.sum())}))
        return len(table.writers) - 1

    def delete_rows(self, name: str, key: str, keys: pl.Series, *, metadata: dict[str, str] | None = None) -> int:
        """As :meth:`DeltaStore.delete_rows`."""
        table = self._tables.get(check_name(name))
        if table is None:
            return 0
        column = pl.Series(key, table.data.column(key))
        wanted = key_frame(keys, key, column.dtype).to_series()
        hit = comparable_keys(column).is_in(comparable_keys(wanted).implode())
        if not hit.any():
            return 0
        table.data = table.data.filter((~hit).to_arrow())
        table.writers.append(self.writer_id)
        table.versions.append((table.data, {
            "version": len(table.writers) - 1, "at": datetime.datetime.now(datetime.UTC),
            "run_id": (metadata or {}).get("orca.run"), "versions": None, "operation": "DELETE",
            "inserted": 0, "updated": 0, "deleted": int(hit.sum())}))
        return int(hit.sum())

    def scan_version(self, name: str, *, version: int | None = None,
                     as_of: datetime.datetime | None = None) -> pl.LazyFrame | None:
        table = self._tables.get(check_name(name))
        if table is None:
            return None
        if version is None and as_of is None:
            return pl.from_arrow(table.data).lazy()
        for data, info in reversed(table.versions):
            if (version is not None and info["version"] <= version) or (as_of is not None and info["at"] <= as_of):
                return pl.from_arrow(data).lazy()
        raise StoreError(f"{self.uri(name)}: no version {version if version is not None else as_of}")

    def history(self, name: str, limit: int | None = None) -> list[dict]:
        table = self._tables.get(check_name(name))
        found = [] if table is None else [dict(info) for _, info in table.versions]
        return found if limit is None else found[-limit:]

    def compact(self, name: str) -> None:
        """Merge the committed chunks of ``name``; every row is kept."""
        table = self._tables.get(check_name(name))
        if table is not None:
            table.data = table.data.combine_chunks()
            table.writers.append("compact")
