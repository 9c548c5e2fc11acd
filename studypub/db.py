"""Engine and sessions: the only place that knows how each database is tuned, and the one seam
where database errors become studypub errors.

SQLite (the embedded default) runs in WAL mode with foreign keys on, a busy timeout and
``synchronous=FULL``: a commit is on disk before a consumer can read it. (With ``NORMAL``, a
power loss can take back the last commits after consumers read them; the next writes would
reuse those seqs and consumers would skip them silently.) Its write transactions start with
``BEGIN IMMEDIATE`` so that the writer lock is taken up front: a deferred transaction that
reads and then writes can fail with ``SQLITE_BUSY`` when another writer committed in between,
which the busy timeout cannot cure. Read-only sessions use a plain deferred ``BEGIN``, so
readers never wait for writers, and every statement of one read sees one snapshot.

PostgreSQL read-only sessions are ``REPEATABLE READ READ ONLY``: every statement of one read
sees one snapshot (a feed page checks the floor and reads the entries in the same one, so a
prune that commits in between cannot make it skip a tombstone). Every connection carries an
``application_name`` (``studypub-<role>/<pid>``, for ``pg_stat_activity``) and an
``idle_in_transaction_session_timeout``: a process stopped while holding locks (SIGSTOP, a
debugger, a hung host) loses its transaction, and its locks, instead of stalling every relay.

Errors: :func:`translate` turns the driver's errors that are nobody's fault (unreachable
server, lost connection, timeouts, deadlocks, serialization failures, a locked SQLite file)
into :class:`~studypub.errors.TransientError` subclasses, for every engine made here, at the
moment SQLAlchemy raises them. Everything above (relay, API, CLI) handles those classes only.
An :class:`OutageLog` per engine says once that the database went away and once that it is
back, instead of a line per failed request.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import event, text
from sqlalchemy.engine import Connection, Dialect, ExceptionContext
from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from studypub import checksums
from studypub.errors import (
    DatabaseBusy,
    DatabaseUnavailable,
    DatabaseUnreachable,
    TransientError,
    one_line,
)
from studypub.settings import get_settings

SQLITE_BUSY_TIMEOUT_MS = 30_000
SQLITE_SYNCHRONOUS = "FULL"
SQLITE_FAILED_CONNECT_GRACE_S = 0.05
PG_CONNECT_TIMEOUT_S = 10
PG_IDLE_IN_TRANSACTION_TIMEOUT_MS = 10_000
READ_ONLY = "studypub_read_only"

log = logging.getLogger("studypub.db")


def is_sqlite_url(url: str) -> bool:
    return url.startswith("sqlite")


class _Process:
    role = "app"  # the CLI sets the command's name (cli/__init__.py)


def set_process_role(role: str) -> None:
    """Name this process's connections after what it does (``worker``, ``serve``)."""
    _Process.role = role


def application_name(role: str | None = None) -> str:
    """How a studypub process shows in ``pg_stat_activity``: ``studypub-worker/1234``."""
    return f"studypub-{role or _Process.role}/{os.getpid()}"


def create_engine(
    url: str | None = None,
    *,
    role: str | None = None,
    sqlite_synchronous: str = SQLITE_SYNCHRONOUS,
    **kwargs: Any,
) -> AsyncEngine:
    """An async engine for ``url`` (default: ``STUDYPUB_DATABASE_URL``).

    ``role`` names the connections in PostgreSQL's ``application_name`` (default: the
    process's, see :func:`set_process_role`). ``sqlite_synchronous``
    is for files whose last commits may be lost on power loss (a replica, which reads them
    again from its older cursor); studypub's own database keeps ``FULL``.
    """
    url = url or get_settings().database_url
    if is_sqlite_url(url):
        engine = create_async_engine(url, **kwargs)
        _tune_sqlite(engine, sqlite_synchronous)
    else:
        kwargs.setdefault("pool_size", 10)
        kwargs.setdefault("max_overflow", 20)
        kwargs.setdefault("pool_pre_ping", True)
        connect_args = dict(kwargs.pop("connect_args", {}))
        connect_args.setdefault("timeout", PG_CONNECT_TIMEOUT_S)
        connect_args["server_settings"] = {
            "application_name": application_name(role),
            "idle_in_transaction_session_timeout": str(PG_IDLE_IN_TRANSACTION_TIMEOUT_MS),
            **connect_args.get("server_settings", {}),
        }
        engine = create_async_engine(url, connect_args=connect_args, **kwargs)
    _translate_errors(engine)
    return engine


def _tune_sqlite(engine: AsyncEngine, synchronous: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module: we emit BEGIN ourselves.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.close()
        checksums.register_sqlite(dbapi_connection)

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(conn: Connection) -> None:
        read_only = conn.get_execution_options().get(READ_ONLY, False)
        conn.exec_driver_sql("BEGIN" if read_only else "BEGIN IMMEDIATE")


def session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for writes (SQLite: ``BEGIN IMMEDIATE``)."""
    return async_sessionmaker(engine, expire_on_commit=False)


def read_session_factory(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Sessions for reads only, one snapshot per transaction (see the module docstring)."""
    return async_sessionmaker(read_only(engine), expire_on_commit=False)


def read_only(engine: AsyncEngine) -> AsyncEngine:
    """``engine`` for read-only transactions: SQLite deferred ``BEGIN`` (never waits for a
    writer), PostgreSQL ``REPEATABLE READ READ ONLY`` (one snapshot for every statement)."""
    options: dict[str, Any] = {READ_ONLY: True}
    if engine.dialect.name == "postgresql":
        options.update(isolation_level="REPEATABLE READ", postgresql_readonly=True)
    return engine.execution_options(**options)


def dialect_of(bind: AsyncSession | AsyncConnection | AsyncEngine) -> str:
    """``"postgresql"`` or ``"sqlite"``."""
    if isinstance(bind, AsyncSession):
        return bind.get_bind().dialect.name
    return bind.dialect.name


@asynccontextmanager
async def connect_checked(engine: AsyncEngine) -> AsyncIterator[AsyncConnection]:
    """A connection, or :class:`DatabaseUnreachable` with the reason in one line."""
    try:
        conn = await engine.connect()
    except DatabaseUnreachable:
        if engine.dialect.name == "sqlite":
            # aiosqlite stops the worker thread of a failed connect without waiting for it;
            # if the event loop closes first (a CLI exiting on this error), the thread dies
            # with a traceback on stderr. Give it the moment it needs to finish.
            await asyncio.sleep(SQLITE_FAILED_CONNECT_GRACE_S)
        raise
    try:
        yield conn
    finally:
        await conn.close()


async def ping(engine: AsyncEngine) -> None:
    """Raise :class:`DatabaseUnavailable` unless the database answers."""
    async with connect_checked(engine) as conn:
        await conn.execute(text("SELECT 1"))


# ---------------------------------------------------------------- errors


class OutageLog:
    """One warning when the database becomes unreachable, one when it answers again.

    During an outage every request and every relay pass fails; a line for each would bury
    the one fact an operator needs (down since when, back after how long).
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self.down_since: float | None = None

    def down(self, reason: str) -> None:
        if self.down_since is None:
            self.down_since = time.monotonic()
            log.warning(
                "database at %s unavailable: %s; retrying until it is back",
                self.where,
                reason,
                extra={"event": "database_down", "error": reason},
            )

    def up(self) -> None:
        if self.down_since is not None:
            seconds = time.monotonic() - self.down_since
            self.down_since = None
            log.warning(
                "database at %s reachable again after %.1f s",
                self.where,
                seconds,
                extra={"event": "database_up", "seconds": round(seconds, 3)},
            )


# PostgreSQL SQLSTATEs (https://www.postgresql.org/docs/current/errcodes-appendix.html).
_PG_UNAVAILABLE_CLASSES = ("08",)  # connection exception
_PG_UNAVAILABLE = frozenset(
    {
        "57P01",  # admin_shutdown (a fast shutdown or restart, pg_terminate_backend)
        "57P02",  # crash_shutdown
        "57P03",  # cannot_connect_now (starting up, shutting down)
        "53300",  # too_many_connections
    }
)
_PG_BUSY = frozenset(
    {
        "40001",  # serialization_failure
        "40P01",  # deadlock_detected
        "55P03",  # lock_not_available (lock_timeout)
        "57014",  # query_canceled (statement_timeout, pg_cancel_backend)
        "25P03",  # idle_in_transaction_session_timeout
    }
)
_SQLITE_BUSY = ("database is locked", "database table is locked")
_SQLITE_UNAVAILABLE = ("unable to open database file", "disk i/o error")


def translate(exc: BaseException, *, is_disconnect: bool = False) -> TransientError | None:
    """The :class:`TransientError` for a driver error that is nobody's fault, else None.

    Errors that follow the data (a constraint, a trigger, a bad value) stay as they are: the
    relay counts those against the rows, the API reports them as bugs.
    """
    if not isinstance(exc, Exception):
        return None  # cancellation, exit: not a database answer
    cause = getattr(exc, "orig", None) or exc
    reason = one_line(cause)
    state = getattr(cause, "sqlstate", None) or getattr(cause, "pgcode", None)
    if isinstance(state, str):
        if state in _PG_BUSY:
            return DatabaseBusy(f"the database gave up on the statement ({state}): {reason}")
        if state in _PG_UNAVAILABLE or state.startswith(_PG_UNAVAILABLE_CLASSES):
            return DatabaseUnavailable(f"the database is unavailable ({state}): {reason}")
    lowered = reason.lower()
    if any(marker in lowered for marker in _SQLITE_BUSY):
        return DatabaseBusy(f"the database is busy: {reason}")
    if any(marker in lowered for marker in _SQLITE_UNAVAILABLE):
        return DatabaseUnavailable(f"the database is unavailable: {reason}")
    if is_disconnect or isinstance(cause, OSError):
        return DatabaseUnavailable(f"lost the connection to the database: {reason}")
    return None


def _translate_errors(engine: AsyncEngine) -> None:
    """Install :func:`translate` on ``engine``: at connect, and wherever SQLAlchemy raises.

    A failed connect raises the driver's own error (an ``OSError`` for a refused connection
    on asyncpg), which SQLAlchemy's ``handle_error`` never sees: ``do_connect`` wraps it.
    A lost connection is still invalidated by SQLAlchemy (it does so after the handlers
    run), so the pool replaces it and the next request reconnects by itself.
    """
    where = engine.url.render_as_string(hide_password=True)
    outage = OutageLog(where)

    @event.listens_for(engine.sync_engine, "do_connect")
    def _connect(dialect: Dialect, _record: Any, cargs: Any, cparams: Any) -> Any:
        try:
            connection = dialect.connect(*cargs, **cparams)
        except Exception as exc:
            outage.down(one_line(exc))
            raise DatabaseUnreachable(
                f"cannot reach the database at {where}: {one_line(exc)}"
            ) from exc
        outage.up()
        return connection

    @event.listens_for(engine.sync_engine, "handle_error")
    def _on_error(context: ExceptionContext) -> None:
        if context.is_pre_ping:
            return  # the pool reconnects on its own; a failure then comes through _connect
        error = translate(context.original_exception, is_disconnect=context.is_disconnect)
        if error is None:
            return
        if isinstance(error, DatabaseUnavailable):
            outage.down(str(error))
        raise error
