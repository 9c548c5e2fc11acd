"""Replica client: follow a studypub feed over HTTP into a local SQLite replica.

The replica holds one row per (kind, id), tombstones included (they keep the version, so a
replica never moves an entity back), and one cursor row. Each page of entries and the cursor
after it commit in one SQLite transaction: a replica stopped anywhere (Ctrl-C, ``kill -9``)
resumes from exactly the last page it stored, never from 0 again.

A ``410 reset_required`` (the cursor fell below the feed floor, or the feed was restored and
has a new epoch) makes the replica rebuild from 0. The rebuild runs in ONE transaction: a
reader of the replica file sees the old state until the new one is complete, never half of
each; a rebuild that is interrupted leaves the old state and cursor, and starts over (a
follower retries it with the same backoff as any other read).

Reads of the replica (:meth:`Replica.cursor`, :meth:`Replica.state`, opening an existing
file) use deferred transactions: in WAL mode they read the last committed state at once,
never waiting for the writer lock, which a rebuild holds for as long as it pages the feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
from sqlalchemy import (
    Boolean,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    delete,
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

from studypub.db import create_engine, read_only
from studypub.errors import StudypubError, one_line

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000
WAIT_S = 30  # long-poll wait of a following replica
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
HTTP_TIMEOUT_S = 30.0
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


class ReplicaError(StudypubError):
    """The feed refused the replica for a reason retrying will not fix (auth, bad URL)."""

    code = "replica_error"


class _ResetRequired(Exception):
    pass


@dataclass
class ReplicaStats:
    """What this replica object did since it was opened."""

    pages: int = 0
    entries: int = 0
    resets: int = 0
    first_since: str | None = None  # the cursor of the first request (resume check)


class Replica:
    """A local SQLite replica of the feed at ``feed_url`` (the server's base URL).

    Use as ``async with Replica(path, url) as replica: await replica.sync()`` (one pass to the
    head) or ``await replica.follow()`` (long-poll forever, until cancelled or ``stop`` set).
    """

    def __init__(
        self,
        path: str | Path,
        feed_url: str,
        *,
        token: str | None = None,
        limit: int = PAGE_LIMIT,
        wait_s: int = WAIT_S,
        kinds: Sequence[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        on_page: Callable[[str, int], None] | None = None,
    ) -> None:
        self.path = Path(path)
        self.base_url = feed_url.rstrip("/")
        self.limit = limit
        self.wait_s = wait_s
        self.kinds = ",".join(kinds) if kinds else None
        self.stats = ReplicaStats()
        self.on_page = on_page  # (cursor, entries) after each stored page, e.g. for progress
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(HTTP_TIMEOUT_S + wait_s),
            transport=transport,
        )
        # synchronous=NORMAL: a power loss may take back the last pages, and the cursor
        # that commits with them, so the replica reads them again. Nothing is skipped.
        self._engine: AsyncEngine = create_engine(
            f"sqlite+aiosqlite:///{self.path}", sqlite_synchronous="NORMAL"
        )
        # Deferred BEGIN: a reader must not queue behind the writer lock (see the module).
        self._reader: AsyncEngine = read_only(self._engine)

    async def __aenter__(self) -> Replica:
        try:
            await self.open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Create the replica tables if the file is new.

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
        await self._client.aclose()
        await self._engine.dispose()

    # ------------------------------------------------------------ reading the replica

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

    # ------------------------------------------------------------ following the feed

    async def sync(self) -> str:
        """Pull pages until nothing is pending; returns the cursor reached."""
        while True:
            try:
                return await self._pull(wait_s=0)
            except _ResetRequired:
                await self._rebuild()

    async def follow(self, stop: asyncio.Event | None = None) -> None:
        """Long-poll for new entries until ``stop`` is set (or the task is cancelled).

        Network errors and server restarts are retried with capped, jittered backoff, during a
        rebuild too (it rolls back and starts over: the file keeps the old state meanwhile);
        only a refusal that retrying cannot fix (401, 404, a bad request) ends the loop with
        an error.
        """
        stop = stop or asyncio.Event()
        delay = RETRY_MIN_S
        rebuild = False  # a 410 was answered: the next step is a rebuild, until one succeeds
        while not stop.is_set():
            try:
                if rebuild:
                    await self._rebuild()
                    rebuild = False
                else:
                    await self._pull(wait_s=self.wait_s, stop=stop)
                delay = RETRY_MIN_S
            except _ResetRequired:
                rebuild = True
            except (httpx.TransportError, _Retryable) as exc:
                log.warning("feed unreachable (%s); retrying in %.1f s", exc, delay)
                await _sleep_or_stop(stop, delay * (1 + random.random() / 4))
                delay = min(RETRY_MAX_S, delay * 2)

    async def _pull(self, *, wait_s: int, stop: asyncio.Event | None = None) -> str:
        """Fetch and store pages from the stored cursor; each page commits with its cursor."""
        async with self._reader.connect() as conn:
            since = await _read_cursor(conn)
        while True:
            page = await self._fetch(since, wait_s=wait_s, stop=stop)
            if page is None:  # stopped while waiting
                return since
            if not page["results"]:  # a long-poll that timed out: nothing to store
                return since
            async with self._engine.begin() as conn:
                # The cursor must still be the one we fetched from: one writer per replica.
                stored = await _read_cursor(conn)
                if stored != since:
                    raise ReplicaError(
                        f"another process is writing this replica (cursor moved from {since} "
                        f"to {stored}): run one `studypub replicate` per file"
                    )
                await _apply(conn, page["results"])
                await _write_cursor(conn, page["last_seq"])
            since = str(page["last_seq"])
            if self.on_page is not None:
                self.on_page(since, len(page["results"]))
            if page["pending"] == 0:
                return since

    async def _rebuild(self) -> None:
        """Replace the whole replica by a fresh read from 0, atomically (see the module).

        Any error rolls the whole rebuild back; ``stats.resets`` counts completed ones.
        """
        log.warning("the feed asks for a reset: rebuilding the replica from 0")
        async with self._engine.begin() as conn:
            while True:
                try:
                    since = await self._read_all(conn)
                    break
                except _ResetRequired:  # the floor moved again while we read: start over
                    continue
            await _write_cursor(conn, since)
        self.stats.resets += 1

    async def _read_all(self, conn: AsyncConnection) -> str:
        await conn.execute(delete(entries))
        since = START
        while True:
            page = await self._fetch(since, wait_s=0)
            assert page is not None
            await _apply(conn, page["results"])
            since = str(page["last_seq"])
            if page["pending"] == 0 or not page["results"]:
                return since

    async def _fetch(
        self, since: str, *, wait_s: int, stop: asyncio.Event | None = None
    ) -> dict[str, Any] | None:
        params: dict[str, str | int] = {"since": since, "limit": self.limit}
        if wait_s:
            params["wait"] = wait_s
        if self.kinds:
            params["kinds"] = self.kinds
        if self.stats.first_since is None:
            self.stats.first_since = since
        request = asyncio.ensure_future(self._client.get("/v1/feed", params=params))
        if stop is not None:
            stopped = asyncio.ensure_future(stop.wait())
            try:
                await asyncio.wait({request, stopped}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                stopped.cancel()
            if not request.done():
                request.cancel()
                return None
        response = await request
        if response.status_code == 410:
            raise _ResetRequired
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise ReplicaError(
                f"the feed at {self.base_url} answered HTTP {response.status_code}: "
                f"{_detail(response)}"
            )
        page: dict[str, Any] = response.json()
        self.stats.pages += 1
        self.stats.entries += len(page["results"])
        return page


class _Retryable(Exception):
    pass


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:200]


async def _sleep_or_stop(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)


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
        set_={
            name: stmt.excluded[name]
            for name in (
                "version",
                "schema_version",
                "deleted",
                "seq",
                "hash",
                "payload",
                "published_at",
            )
        },
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
