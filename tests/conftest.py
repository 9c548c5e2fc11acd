"""Fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL: one throwaway database per test session (``studypub_test_<pid>``) created on the
server of ``tests.support.databases.PG_ADMIN_URL``; tables are emptied before each test. When
the server is down the PostgreSQL half is skipped, except under CI (``CI=true``), where it
fails: CI must never pass without it.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import asyncpg
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import migrate
from studypub import replica as replica_module
from studypub.db import create_engine, read_session_factory, session_factory
from studypub.models import Base
from studypub.signals import STOP_SIGNALS
from tests.support import ast_guard
from tests.support.databases import (
    PG_ADMIN_URL,
    UNDER_CI,
    pg_admin,
    pg_database_url,
    reset_tables,
)
from tests.support.signals import Previous

ast_guard.install()  # hypothesis's ast.parse, on CPython 3.11.7 (see the module)


# ---------------------------------------------------------------- databases


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of this session's PostgreSQL test database, schema created."""
    name = f"studypub_test_{os.getpid()}"
    try:
        asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}"'))
        asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}"
        if UNDER_CI:
            pytest.fail(message)
        pytest.skip(message)
    url = pg_database_url(name)

    async def create() -> None:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await engine.dispose()

    asyncio.run(create())
    yield url
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The database of one test: a fresh SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "studypub.db"
        return f"sqlite+aiosqlite:///{path}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty database with the models' schema (the feed head row in place)."""
    eng = create_engine(db_url)
    if eng.dialect.name == "sqlite":
        async with eng.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    await reset_tables(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Write sessions on ``engine``."""
    return session_factory(engine)


@pytest.fixture
def reads(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    """Read sessions on ``engine`` (one snapshot each, as the feed reads)."""
    return read_session_factory(engine)


@pytest.fixture
async def session(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessions() as s:
        yield s


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database with no schema at all: a new SQLite file, or a new PostgreSQL
    database created (and dropped) here. ``pg_url`` decides whether PostgreSQL is there (skip
    locally, fail under CI)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    request.getfixturevalue("pg_url")
    name = f"studypub_test_{os.getpid()}_fresh"
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(pg_admin(f'CREATE DATABASE "{name}"'))
    yield pg_database_url(name)
    asyncio.run(pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture
async def migrated(fresh_url: str) -> AsyncIterator[AsyncEngine]:
    """A database migrated the way an operator does it (commands check the revision)."""
    engine = create_engine(fresh_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


# ---------------------------------------------------------------- process and client state


@pytest.fixture
def previous() -> Iterator[Previous]:
    """The stop signals' handlers replaced by a recorder for the test, restored after."""
    handler = Previous()
    saved = {signum: signal.signal(signum, handler) for signum in STOP_SIGNALS}
    try:
        yield handler
    finally:
        for signum, old in saved.items():
            signal.signal(signum, old)


@pytest.fixture
def fast_retries(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replica client retries after 10 to 50 ms instead of its real backoff."""
    monkeypatch.setattr(replica_module, "RETRY_MIN_S", 0.01)
    monkeypatch.setattr(replica_module, "RETRY_MAX_S", 0.05)
