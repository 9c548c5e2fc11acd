"""The test databases: the PostgreSQL server the tests create their databases on, and what
every test database starts from.

PostgreSQL is reached through ``STUDYPUB_TEST_PG_URL`` (default: the local server, database
``postgres``). Under CI (``CI=true``) a test that needs a missing PostgreSQL, or a missing
browser, fails instead of being skipped: CI must never pass without them.
"""

from __future__ import annotations

import os

import asyncpg
import pytest
from sqlalchemy import delete, insert, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.models import Base, FeedHead, new_epoch
from studypub.notify import asyncpg_dsn

PG_ADMIN_URL = os.environ.get(
    "STUDYPUB_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
UNDER_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")

# For behaviour only PostgreSQL has (LISTEN, killed backends, truly concurrent writers).
PG_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)


def url_of(engine: AsyncEngine) -> str:
    """The URL of ``engine``'s database, password included (for a command or another engine)."""
    return engine.url.render_as_string(hide_password=False)


def pg_database_url(name: str) -> str:
    """The URL of database ``name`` on the test server."""
    return make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def pg_admin(sql: str) -> None:
    """Run one statement (``CREATE DATABASE``, ``DROP DATABASE``...) as the test server's admin."""
    conn = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


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
