"""A relay among faults it did not cause.

- Errors that are not the rows' fault: the batch rolls back whole and is tried again later,
  no attempt is counted, no row is bisected out or dead-lettered.
- Another relay stopped while holding entity locks: the others publish everything else and
  never wait for it.

PostgreSQL only: SQLite's transient error ("database is locked") can only come at
``BEGIN IMMEDIATE``, before anything is claimed, and it has one writer at a time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub.db import create_engine
from studypub.errors import DatabaseBusy
from studypub.models import Outbox
from studypub.relay import Outcomes, Relay
from tests.support.databases import PG_ONLY, url_of
from tests.support.state import decided_state, expected_state, head_of
from tests.support.writes import create_topics

pytestmark = PG_ONLY

Sessions = async_sessionmaker[AsyncSession]


async def attempts(engine: AsyncEngine) -> tuple[int, int, int]:
    """(outbox rows, attempts counted, dead rows)."""
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(
                    func.count(),
                    func.coalesce(func.sum(Outbox.attempts), 0),
                    func.count(Outbox.dead_at),
                )
            )
        ).one()
    return int(row[0]), int(row[1]), int(row[2])


@asynccontextmanager
async def feed_head_locked(engine: AsyncEngine) -> AsyncIterator[None]:
    """Another transaction holds the feed head (e.g. a prune, or a relay stuck mid-commit)."""
    async with engine.connect() as conn:
        await conn.execute(text("SELECT 1 FROM feed_head FOR UPDATE"))
        yield
        await conn.rollback()


async def test_a_lock_timeout_rolls_the_batch_back_without_blaming_rows(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    await create_topics(sessions, ["a", "b", "c", "d"])
    impatient = create_engine(
        url_of(engine), connect_args={"server_settings": {"lock_timeout": "200"}}
    )
    try:
        relay = Relay(impatient, listen=False, max_attempts=1)
        async with feed_head_locked(engine):
            with pytest.raises(DatabaseBusy, match="55P03"):
                await relay.run_once()
        assert await attempts(engine) == (4, 0, 0)
        assert await relay.run_once() == Outcomes(applied=4)
    finally:
        await impatient.dispose()
    assert await decided_state(engine) == await expected_state(engine)


@pytest.mark.parametrize("errcode", ["serialization_failure", "deadlock_detected"])
async def test_a_serialization_failure_or_deadlock_is_retried_not_counted(
    engine: AsyncEngine, sessions: Sessions, errcode: str
) -> None:
    await create_topics(sessions, ["a", "b"])
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION refuse_once() RETURNS trigger LANGUAGE plpgsql AS $$"
                f" BEGIN RAISE EXCEPTION 'conflict of the moment' USING ERRCODE = '{errcode}';"
                " END $$"
            )
        )
        await conn.execute(
            text(
                "CREATE TRIGGER refuse_once BEFORE INSERT ON published"
                " FOR EACH ROW EXECUTE FUNCTION refuse_once()"
            )
        )
    relay = Relay(engine, listen=False, max_attempts=1)
    try:
        with pytest.raises(DatabaseBusy, match="conflict of the moment"):
            await relay.run_once()
        assert await attempts(engine) == (2, 0, 0)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text("DROP TRIGGER IF EXISTS refuse_once ON published"))
            await conn.execute(text("DROP FUNCTION IF EXISTS refuse_once()"))
    assert await relay.run_once() == Outcomes(applied=2)


async def test_a_relay_never_waits_for_entities_another_relay_holds(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    held, *others = await create_topics(sessions, [f"t{i}" for i in range(20)])
    relay = Relay(engine, listen=False, batch_size=5)
    # A relay that stopped mid-batch holds its entities' locks (until the server's
    # idle-in-transaction timeout ends its transaction).
    async with engine.connect() as stopped:
        await stopped.execute(
            text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
            {"key": f"topic:{held}"},
        )
        drain = asyncio.create_task(relay.run_once())
        async with asyncio.timeout(10):
            while (await head_of(engine)).last_seq < len(others):  # noqa: ASYNC110 (polls the db)
                await asyncio.sleep(0.02)
        assert not drain.done(), "run_once returned with a due row left behind"
        await stopped.rollback()
    assert await asyncio.wait_for(drain, 10) == Outcomes(applied=20)
    assert await decided_state(engine) == await expected_state(engine)
