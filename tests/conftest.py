"""Fixtures: every database test runs on SQLite and on PostgreSQL.

PostgreSQL: one throwaway database per test session (``studypub_test_<pid>``) created through
``STUDYPUB_TEST_PG_URL`` (default: the local server, database ``postgres``); tables are
emptied before each test. When the server is down the PostgreSQL half is skipped, except
under CI (``CI=true``), where it fails: CI must never pass without it.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Iterator

import asyncpg
import pytest
from sqlalchemy import delete, insert, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub.db import create_engine, session_factory
from studypub.models import Base, FeedHead, new_epoch

PG_ADMIN_URL = os.environ.get(
    "STUDYPUB_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def _pg_admin(sql: str) -> None:
    conn = await asyncpg.connect(_asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    """URL of this session's PostgreSQL test database, schema created."""
    name = f"studypub_test_{os.getpid()}"
    try:
        asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}"'))
        asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    except (OSError, asyncpg.PostgresError) as exc:
        message = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {exc}"
        if UNDER_CI:
            pytest.fail(message)
        pytest.skip(message)
    url = make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)

    async def create() -> None:
        engine = create_engine(url)
        async with engine.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
        await engine.dispose()

    asyncio.run(create())
    yield url
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


async def reset_tables(engine: AsyncEngine) -> None:
    """Empty every table and put the feed head back at 0 with a fresh epoch."""
    async with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            names = ", ".join(t.name for t in Base.metadata.sorted_tables)
            await conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                await conn.execute(delete(table))
        await conn.execute(insert(FeedHead).values(id=1, epoch=new_epoch(), last_seq=0, floor=0))


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The database of one test: a fresh SQLite file, or the session's PostgreSQL database."""
    if request.param == "sqlite":
        path = tmp_path_factory.mktemp("db") / "studypub.db"
        return f"sqlite+aiosqlite:///{path}"
    return str(request.getfixturevalue("pg_url"))


@pytest.fixture
async def engine(db_url: str) -> AsyncIterator[AsyncEngine]:
    """An engine on an empty, migrated database (the feed head row in place)."""
    eng = create_engine(db_url)
    if eng.dialect.name == "sqlite":
        async with eng.begin() as conn:
            await conn.run_sync(Base.metadata.create_all)
    await reset_tables(eng)
    yield eng
    await eng.dispose()


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


@pytest.fixture
async def session(sessions: async_sessionmaker[AsyncSession]) -> AsyncIterator[AsyncSession]:
    async with sessions() as s:
        yield s
