"""The replica's local SQLite file: its tables, its cursor, and pages applied by the apply rule.

The file holds one row per (kind, id), tombstones included (they keep the version, so a
replica never moves an entity back), and one cursor row. Each page of entries and the cursor
after it commit in one SQLite transaction: a replica stopped anywhere (Ctrl-C, ``kill -9``)
resumes from exactly the last page it stored, never from 0 again.

A rebuild (:meth:`ReplicaStore.rebuilding`) replaces every entry in ONE transaction: a reader
of the file sees the old state until the new one is complete, never half of each; a rebuild
that fails leaves the old state and cursor.

Reads (:meth:`ReplicaStore.cursor`, :meth:`ReplicaStore.state`, opening an existing file) use
deferred transactions: in WAL mode they read the last committed state at once, never waiting
for the writer lock, which a rebuild holds for as long as it pages the feed.

What goes over HTTP (paging, long-polls, backoff, when to rebuild) is
:class:`studypub.replica.Replica`'s.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects.sqlite import Insert as SqliteInsert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine
from sqlalchemy.sql.elements import ColumnElement

from studypub import checksums
from studypub.db import create_engine, read_only
from studypub.errors import ReplicaError, StudypubError, one_line

START = "0"

metadata = MetaData()

entries = Table(
    "replica_entries",
    metadata,
    Column("kind", String(32), primary_key=True),
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
    Column("schema_version", Integer, nullable=False),
    Column("deleted", Boolean, nullable=False),
    Column("seq", Integer, nullable=False),
    Column("hash", String(64), nullable=False),
    Column("payload", Text, nullable=False),  # the entry's payload as JSON text
    Column("published_at", String(40), nullable=False),
)

cursor_table = Table(
    "replica_cursor",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("cursor", String(64), nullable=False),
)

_STORED = ("version", "schema_version", "deleted", "seq", "hash", "payload", "published_at")


@dataclass(frozen=True, slots=True)
class Page:
    """One page of the feed as read from ``since``: its entries, and the cursor after it;
    at the head, the feed's state checksums per kind (``{"kind": {"count", "checksum"}}``)."""

    since: str
    results: Sequence[dict[str, Any]]
    last_seq: str
    pending: int
    checksums: dict[str, dict[str, Any]] | None = None


class ReplicaStore:
    """The SQLite file of one replica. One writer per file; any number of readers."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        # synchronous=NORMAL: a power loss may take back the last pages, and the cursor
        # that commits with them, so the replica reads them again. Nothing is skipped.
        self._engine: AsyncEngine = create_engine(
            f"sqlite+aiosqlite:///{self.path}", sqlite_synchronous="NORMAL"
        )
        # Deferred BEGIN: a reader must not queue behind the writer lock (see the module).
        self._reader: AsyncEngine = read_only(self._engine)

    async def open(self) -> None:
        """Create the tables if the file is new.

        The check reads only, so that opening a replica another process is rebuilding does
        not wait for its writer lock; only a new file takes it, to create the tables.
        """
        try:
            async with self._reader.connect() as conn:
                ready = await conn.run_sync(_has_tables)
            if not ready:
                async with self._engine.begin() as conn:
                    await conn.run_sync(metadata.create_all)
        except (DBAPIError, StudypubError) as exc:  # studypub.db may have translated it
            reason = _driver_reason(exc)
            raise ReplicaError(f"cannot open the replica file {self.path}: {reason}") from None

    async def close(self) -> None:
        await self._engine.dispose()

    async def cursor(self) -> str:
        """The stored cursor (``"0"`` for a new replica)."""
        async with self._reader.connect() as conn:
            return await _read_cursor(conn)

    async def state(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The live entries (tombstones left out): ``{(kind, id): entry}``."""
        async with self._reader.connect() as conn:
            rows = (await conn.execute(select(entries).where(entries.c.deleted.is_(False)))).all()
        return {
            (row.kind, row.id): {
                "kind": row.kind,
                "id": row.id,
                "version": row.version,
                "schema_version": row.schema_version,
                "hash": row.hash,
                "payload": json.loads(row.payload),
                "seq": row.seq,
            }
            for row in rows
        }

    async def apply_page(self, page: Page) -> None:
        """Apply ``page`` and store the cursor after it, in one transaction."""
        async with self._engine.begin() as conn:
            # The cursor must still be the one the page was read from: one writer per file.
            stored = await _read_cursor(conn)
            if stored != page.since:
                raise ReplicaError(
                    f"another process is writing this replica (cursor moved from {page.since} "
                    f"to {stored}): run one `studypub replicate` per file"
                )
            await _apply(conn, page.results)
            await _write_cursor(conn, page.last_seq)

    async def checksums(self) -> dict[str, checksums.State]:
        """The state checksums of the live entries held, per kind (studypub.checksums)."""
        query = (
            select(
                entries.c.kind,
                func.count(),
                func.sum(checksums.hi_of(entries.c.hash)),
                func.sum(checksums.lo_of(entries.c.hash)),
            )
            .where(entries.c.deleted.is_(False))
            .group_by(entries.c.kind)
        )
        async with self._reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return {kind: checksums.State(n, int(hi), int(lo)) for kind, n, hi, lo in rows}

    @asynccontextmanager
    async def replacing(self, kind: str) -> AsyncIterator[Rebuild]:
        """A rebuild of one kind: its entries replaced by the pages given to it (a bootstrap
        of that kind alone), in ONE transaction; the other kinds and the cursor stay."""
        async with self._engine.begin() as conn:
            rebuild = Rebuild(conn, kind)
            await rebuild.restart()
            yield rebuild

    @asynccontextmanager
    async def rebuilding(self) -> AsyncIterator[Rebuild]:
        """A rebuild: every entry replaced by the pages given to it, in ONE transaction
        (see the module), the cursor after the last of them stored at the end. An error
        inside the block rolls it all back."""
        async with self._engine.begin() as conn:
            rebuild = Rebuild(conn)
            await rebuild.restart()
            yield rebuild
            await _write_cursor(conn, rebuild.cursor)


class Rebuild:
    """The open transaction of a rebuild (:meth:`ReplicaStore.rebuilding`)."""

    def __init__(self, conn: AsyncConnection, kind: str | None = None) -> None:
        self._conn = conn
        self.kind = kind  # None: every kind
        self.cursor = START

    async def restart(self) -> None:
        """Drop what this rebuild applied so far (and the old entries): read from 0 again."""
        held = delete(entries)
        if self.kind is not None:
            held = held.where(entries.c.kind == self.kind)
        await self._conn.execute(held)
        self.cursor = START

    async def apply_page(self, page: Page) -> None:
        await _apply(self._conn, page.results)
        self.cursor = page.last_seq


def _driver_reason(exc: BaseException) -> str:
    """The first line of the driver's own words: what is wrong with the file, not which
    wrappers the error went through on its way up."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    return one_line(exc)


def _has_tables(conn: Connection) -> bool:
    found = inspect(conn)
    return all(found.has_table(table.name) for table in metadata.sorted_tables)


async def _read_cursor(conn: AsyncConnection) -> str:
    value = (await conn.execute(select(cursor_table.c.cursor))).scalar_one_or_none()
    return value if value is not None else START


async def _write_cursor(conn: AsyncConnection, cursor: str) -> None:
    changed = await conn.execute(update(cursor_table).values(cursor=cursor))
    if changed.rowcount == 0:
        await conn.execute(cursor_table.insert().values(id=1, cursor=cursor))


def _applies(stmt: SqliteInsert) -> ColumnElement[bool]:
    """The apply rule of every consumer (docs/feed-protocol.md, "apply rule"): an entry
    replaces the stored row of its key when its (version, schema_version) is higher, or equal
    with another hash or deleted flag (``verify --repair`` republishes drifted keys at the
    same version); an older entry never applies, so a key never moves back. (The feed never
    sends an older one, but a replica is only as good as its own guarantee.)"""
    new, held = stmt.excluded, entries.c
    same_version = new.version == held.version
    same_schema = new.schema_version == held.schema_version
    higher = (new.version > held.version) | (
        same_version & (new.schema_version > held.schema_version)
    )
    differs = (new.hash != held.hash) | (new.deleted != held.deleted)
    return higher | (same_version & same_schema & differs)


async def _apply(conn: AsyncConnection, results: Sequence[dict[str, Any]]) -> None:
    """Upsert a page in one statement; the upsert's WHERE is the apply rule (:func:`_applies`),
    so an entry the rule refuses leaves the stored row as it is."""
    if not results:
        return
    stmt = sqlite_insert(entries)
    stmt = stmt.on_conflict_do_update(
        index_elements=[entries.c.kind, entries.c.id],
        set_={name: stmt.excluded[name] for name in _STORED},
        where=_applies(stmt),
    )
    await conn.execute(
        stmt,
        [
            {
                "kind": e["kind"],
                "id": e["id"],
                "version": e["version"],
                "schema_version": e["schema_version"],
                "deleted": bool(e["deleted"]),
                "seq": e["seq"],
                "hash": e["hash"],
                "payload": json.dumps(e["payload"], separators=(",", ":"), ensure_ascii=False),
                "published_at": e["published_at"],
            }
            for e in results
        ],
    )
