"""The relay: one batch, outcomes, coalescing, wake-up and shutdown."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta

import asyncpg
import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub.db import application_name
from studypub.errors import InvalidInput
from studypub.models import Outbox, Published, utcnow
from studypub.notify import asyncpg_dsn
from studypub.outbox import snapshot_values
from studypub.relay import MAX_BATCH_SIZE, Outcomes, Relay
from tests.support.databases import PG_ONLY
from tests.support.outbox import outbox_count
from tests.support.state import (
    decided_state,
    expected_state,
    feed_seqs,
    head_of,
    the_published_row,
    wait_for_head,
)
from tests.support.writes import (
    create_content,
    create_topics,
    delete_topic,
    published_topics,
    update_topic,
)


async def test_publishes_every_kind(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await create_content(sessions, 3)
    outcomes = await Relay(engine).run_once()
    assert outcomes == Outcomes(applied=15)
    assert await decided_state(engine) == await expected_state(engine)
    assert await feed_seqs(engine) == list(range(1, 16))
    assert (await head_of(engine)).last_seq == 15
    assert await outbox_count(engine) == 0


async def test_coalesces_per_entity_keeping_the_newest(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    [tid] = await create_topics(sessions, ["a"])
    await update_topic(sessions, tid, title="b")
    await update_topic(sessions, tid, title="c")
    outcomes = await Relay(engine).run_once()
    assert outcomes == Outcomes(applied=1, stale=2)
    row = await the_published_row(engine)
    assert (row.version, row.payload["title"], row.seq) == (3, "c", 1)


async def test_duplicate_enqueue_is_unchanged_and_moves_only_the_latest_version(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    [tid], relay = await published_topics(engine, sessions, ["a"])
    # A write that changes nothing visible (only the version) is unchanged: no new seq.
    await update_topic(sessions, tid, updated_at=utcnow())
    assert await relay.run_once() == Outcomes(unchanged=1)
    row = await the_published_row(engine)
    # The feed entry (what every consumer holds) stays; the relay remembers version 2.
    assert (row.version, row.latest_version, row.seq) == (1, 2, 1)
    assert (await head_of(engine)).last_seq == 1


async def test_tombstone_of_unpublished_entity_is_silent(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    [tid] = await create_topics(sessions, ["a"])
    await delete_topic(sessions, tid)
    assert await Relay(engine).run_once() == Outcomes(unchanged=1, stale=1)
    row = await the_published_row(engine)
    assert (row.deleted, row.seq, row.version) == (True, None, 2)
    assert (await head_of(engine)).last_seq == 0


async def test_update_moves_row_to_new_seq_and_delete_publishes_tombstone(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    (a, b), relay = await published_topics(engine, sessions, ["a", "b"])
    await update_topic(sessions, a, title="a2")
    await relay.run_once()
    await delete_topic(sessions, b)
    assert await relay.run_once() == Outcomes(applied=1)
    assert await feed_seqs(engine) == [3, 4]
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Published).order_by(Published.seq))).all()
    assert [(r.id, r.seq, r.deleted, r.payload) for r in rows] == [
        (a, 3, False, {"id": a, "title": "a2", "description": ""}),
        (b, 4, True, {}),
    ]


async def test_small_batches_drain_in_claim_order(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    ids = await create_topics(sessions, [f"t{i}" for i in range(7)])
    assert await Relay(engine, batch_size=2).run_once() == Outcomes(applied=7)
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Published.id).order_by(Published.seq))).all()
    assert [r.id for r in rows] == ids


async def test_batch_outcomes_are_logged_as_records(
    engine: AsyncEngine,
    sessions: async_sessionmaker[AsyncSession],
    caplog: pytest.LogCaptureFixture,
) -> None:
    await create_topics(sessions, ["a", "b"])
    with caplog.at_level(logging.INFO, logger="studypub.relay"):
        await Relay(engine).run_once()
    [record] = [r for r in caplog.records if r.name == "studypub.relay"]
    assert (record.applied, record.unchanged, record.stale) == (2, 0, 0)  # type: ignore[attr-defined]


async def test_not_yet_available_rows_wait(engine: AsyncEngine, session: AsyncSession) -> None:
    values = snapshot_values(kind="topic", source_id=1, source_version=1, payload={"id": 1})
    values["available_at"] = utcnow() + timedelta(hours=1)
    await session.execute(insert(Outbox), [values])
    await session.commit()
    assert await Relay(engine).run_once() == Outcomes()
    assert await outbox_count(engine) == 1


async def test_run_wakes_on_enqueue_and_stops_quickly(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    # A long poll interval: only the wake-up (LISTEN / in-process signal) can be this fast.
    relay = Relay(engine, poll_interval_s=30)
    task = asyncio.create_task(relay.run())
    await asyncio.sleep(0.3)  # listening
    started = time.monotonic()
    await create_topics(sessions, ["a"])
    while (await head_of(engine)).last_seq < 1:
        assert time.monotonic() - started < 5, "the relay did not wake up"
        await asyncio.sleep(0.01)
    stopped = time.monotonic()
    relay.stop()
    relay.stop()  # idempotent
    await asyncio.wait_for(task, 2)
    assert time.monotonic() - stopped < 2
    assert relay.totals.applied == 1


async def test_cancelled_run_finishes_the_batch_in_flight(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await create_topics(sessions, [f"t{i}" for i in range(300)])
    relay = Relay(engine, batch_size=50, poll_interval_s=30)
    task = asyncio.create_task(relay.run())
    deadline = time.monotonic() + 10
    while (await head_of(engine)).last_seq == 0:
        assert time.monotonic() < deadline, "nothing published"
        await asyncio.sleep(0.001)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    # Whole batches only: what was published is a multiple of the batch size.
    published = (await head_of(engine)).last_seq
    assert published % 50 == 0
    assert await outbox_count(engine) == 300 - published
    assert await Relay(engine).run_once() == Outcomes(applied=300 - published)


@PG_ONLY
async def test_listener_reconnects_after_lost_connection(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    async with relay_running(engine, poll_interval_s=30):
        conn = await asyncpg.connect(asyncpg_dsn(db_url))
        try:
            query = (
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = $1 AND datname = current_database()"
            )
            deadline = time.monotonic() + 5
            while not await conn.fetch(query, application_name("listen")):
                assert time.monotonic() < deadline, "the listener never connected"
                await asyncio.sleep(0.05)
            await asyncio.sleep(1.5)  # reconnect delay is 1 s
            await create_topics(sessions, ["after the reconnect"])
            started = time.monotonic()
            while (await head_of(engine)).last_seq < 1:
                assert time.monotonic() - started < 5, "the listener did not come back"
                await asyncio.sleep(0.02)
            count = (
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                " AND datname = current_database()"
            )
            while await conn.fetchval(count, application_name("listen")) != 1:
                assert time.monotonic() - started < 5, "not exactly one listener"
                await asyncio.sleep(0.02)
        finally:
            await conn.close()


async def test_relay_knobs_are_validated(engine: AsyncEngine) -> None:
    """In the worker's words, so that ``studypub worker`` passes the message on as it is."""
    with pytest.raises(InvalidInput, match=r"^invalid --batch-size 0: allowed 1\.\.2000$"):
        Relay(engine, batch_size=0)
    with pytest.raises(InvalidInput, match=r"^invalid --batch-size 2001: allowed 1\.\.2000$"):
        Relay(engine, batch_size=MAX_BATCH_SIZE + 1)
    with pytest.raises(InvalidInput, match=r"^invalid --poll-interval 0: must be more than 0"):
        Relay(engine, poll_interval_s=0)
    with pytest.raises(InvalidInput, match=r"^invalid --max-attempts 0: must be at least 1$"):
        Relay(engine, max_attempts=0)
    assert Relay(engine, batch_size=MAX_BATCH_SIZE).batch_size == MAX_BATCH_SIZE


async def test_head_row_is_untouched_when_nothing_applies(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    [tid] = await create_topics(sessions, ["a"])
    await delete_topic(sessions, tid)
    await Relay(engine).run_once()
    async with engine.connect() as conn:
        head = (await conn.execute(text("SELECT last_seq FROM feed_head"))).scalar_one()
    assert head == 0


@PG_ONLY
async def test_serving_relay_recovers_after_its_connections_are_killed(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    async with relay_running(engine, poll_interval_s=0.1):
        await create_topics(sessions, ["before"])
        await wait_for_head(engine, 1, timeout_s=5)
        conn = await asyncpg.connect(asyncpg_dsn(db_url))
        try:
            killed = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        finally:
            await conn.close()
        assert killed >= 2  # the relay's connection and its listener at least
        await create_topics(sessions, ["after"])
        await wait_for_head(engine, 2, timeout_s=5)


@asynccontextmanager
async def relay_running(engine: AsyncEngine, *, poll_interval_s: float) -> AsyncIterator[Relay]:
    """A relay serving in a task, stopped (within 2 s) at the end."""
    relay = Relay(engine, poll_interval_s=poll_interval_s)
    task = asyncio.create_task(relay.run())
    try:
        yield relay
    finally:
        relay.stop()
        await asyncio.wait_for(task, 2)
