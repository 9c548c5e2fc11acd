"""How each database is set up (studypub.db): durability, snapshots, connection names."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.db import create_engine, read_session_factory, session_factory
from tests.support.databases import PG_ONLY

# PRAGMA synchronous answers a number: 1 NORMAL, 2 FULL.
NORMAL, FULL = 1, 2


async def test_sqlite_commits_are_on_disk_before_anyone_reads_them(tmp_path: Path) -> None:
    # WAL with synchronous=NORMAL may lose the last commits on power loss after consumers
    # read them; the next writes would then reuse their seqs and consumers skip them.
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'studypub.db'}")
    replica = create_engine(
        f"sqlite+aiosqlite:///{tmp_path / 'replica.db'}", sqlite_synchronous="NORMAL"
    )
    try:
        for eng, expected in ((engine, FULL), (replica, NORMAL)):
            async with eng.connect() as conn:
                assert (await conn.execute(text("PRAGMA synchronous"))).scalar() == expected
                assert (await conn.execute(text("PRAGMA journal_mode"))).scalar() == "wal"
    finally:
        await engine.dispose()
        await replica.dispose()


@PG_ONLY
async def test_postgresql_reads_are_one_repeatable_read_snapshot(engine: AsyncEngine) -> None:
    async with read_session_factory(engine)() as r:
        isolation = (await r.execute(text("SHOW transaction_isolation"))).scalar()
        read_only = (await r.execute(text("SHOW transaction_read_only"))).scalar()
    assert (isolation, read_only) == ("repeatable read", "on")
    async with session_factory(engine)() as w:  # writes keep READ COMMITTED
        assert (await w.execute(text("SHOW transaction_isolation"))).scalar() == "read committed"


@PG_ONLY
async def test_postgresql_connections_say_who_they_are(db_url: str) -> None:
    engine = create_engine(db_url, role="worker")
    try:
        async with engine.connect() as conn:
            name = (await conn.execute(text("SHOW application_name"))).scalar()
            idle = (await conn.execute(text("SHOW idle_in_transaction_session_timeout"))).scalar()
    finally:
        await engine.dispose()
    assert name == f"studypub-worker/{os.getpid()}"
    assert idle == "10s"
