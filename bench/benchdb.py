"""What every PostgreSQL benchmark shares: its own throwaway database, and peak RSS.

``STUDYPUB_BENCH_PG_URL`` is an admin URL (default: the local server, database ``postgres``);
each benchmark creates ``studypub_bench_<name>`` through it and drops it at the end.
"""

from __future__ import annotations

import os
import resource
import socket

import asyncpg
from sqlalchemy import make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.notify import asyncpg_dsn

ADMIN_URL = os.environ.get(
    "STUDYPUB_BENCH_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)


async def admin(sql: str) -> None:
    """Run one statement on the admin database (outside a transaction)."""
    conn = await asyncpg.connect(asyncpg_dsn(ADMIN_URL))
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


def database_url(name: str) -> str:
    """The SQLAlchemy URL of benchmark database ``name``."""
    return make_url(ADMIN_URL).set(database=name).render_as_string(hide_password=False)


async def create_database(name: str) -> str:
    """A fresh, empty database ``name`` (dropped first if left over); returns its URL."""
    await drop_database(name)
    await admin(f'CREATE DATABASE "{name}"')
    return database_url(name)


async def drop_database(name: str) -> None:
    await admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def vacuum(engine: AsyncEngine, statement: str = "VACUUM ANALYZE") -> None:
    """What autovacuum does to a table that has settled (statistics, the visibility map that
    allows index-only scans), now: ``statement`` runs outside a transaction."""
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text(statement))


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far, in MiB."""
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def free_port() -> int:
    """A free loopback TCP port for a server the benchmark starts."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port
