"""Engine and sessions: the only place that knows how each database is tuned.

SQLite (the embedded default) runs in WAL mode with foreign keys on and a busy timeout. Its
write transactions start with ``BEGIN IMMEDIATE`` so that the writer lock is taken up front:
a deferred transaction that reads and then writes can fail with ``SQLITE_BUSY`` when another
writer committed in between, which the busy timeout cannot cure. Read-only sessions (feed
reads) use a plain deferred ``BEGIN`` so that readers never wait for writers.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from studypub.errors import DatabaseUnavailable
from studypub.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_FAILED_CONNECT_GRACE_S = 0.05
READ_ONLY = "studypub_read_only"


def is_sqlite_url(url: str) -> bool:
    return url.startswith("sqlite")


def create_engine(url: str | None = None, **kwargs: Any) -> AsyncEngine:
    """An async engine for ``url`` (default: ``STUDYPUB_DATABASE_URL``)."""
    url = url or get_settings().database_url
    if is_sqlite_url(url):
        engine = create_async_engine(url, **kwargs)
        _tune_sqlite(engine)
        return engine
    kwargs.setdefault("pool_size", 10)
    kwargs.setdefault("max_overflow", 20)
    kwargs.setdefault("pool_pre_ping", True)
    return create_async_engine(url, **kwargs)


def _tune_sqlite(engine: AsyncEngine) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module: we emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for writes (SQLite: ``BEGIN IMMEDIATE``)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def read_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads only (SQLite: deferred ``BEGIN``, never waits for a writer)."""
    return async_sessionmaker(engine.execution_options(**{READ_ONLY: True}), expire_on_commit=False)


def dialect_of(bind: AsyncSession | AsyncConnection | AsyncEngine) -> str:
    """``"postgresql"`` or ``"sqlite"``."""
    if isinstance(bind, AsyncSession):
        return bind.get_bind().dialect.name
    return bind.dialect.name


@asynccontextmanager
async def connect_checked(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection, or :class:`DatabaseUnavailable` with the reason in one line."""
    try:
        conn = await engine.connect()
    except (OSError, OperationalError, DBAPIError) as exc:
        if engine.dialect.name == "sqlite":
            # aiosqlite stops the worker thread of a failed connect without waiting for it;
            # if the event loop closes first (a CLI exiting on this error), the thread dies
            # with a traceback on stderr. Give it the moment it needs to finish.
            await asyncio.sleep(SQLITE_FAILED_CONNECT_GRACE_S)
        raise DatabaseUnavailable(
            f"cannot reach the database at {engine.url.render_as_string(hide_password=True)}: "
            f"{_first_line(exc)}"
        ) from exc
    try:
        yield conn
    finally:
        await conn.close()


async def ping(engine: AsyncEngine) -> None:
    """Raise :class:`DatabaseUnavailable` unless the database answers."""
    async with connect_checked(engine) as conn:
        await conn.execute(text("SELECT 1"))


def _first_line(exc: BaseException) -> str:
    cause = getattr(exc, "orig", None) or exc
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]
