"""Everything at once: 4 relays (own connections), 4 writers on a shared set of 200 entities,
a backfill of every kind and a consumer, released together behind a barrier.

At the end the published store equals the projection of every source row, every seq from
floor + 1 to the head was committed exactly once, the consumer that followed the feed all
along holds the same state, and the outbox is empty.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm.exc import StaleDataError

from studypub.db import create_engine
from studypub.models import CardProgress, MemoCard, Question, SourceMixin, Topic, utcnow
from studypub.outbox import enqueue_changed
from studypub.relay import Relay
from studypub.targets import TARGETS
from tests.support.outbox import backfill_page, drained, outbox_count
from tests.support.state import (
    FeedConsumer,
    decided_state,
    expected_state,
    head_of,
    visible_state,
)
from tests.support.triggers import audited_entries, seq_audit
from tests.support.writes import create_content

RELAYS = 4
WRITERS = 4
WRITES_EACH = 60
ENTITIES_PER_TABLE = 50  # 4 source tables: 200 entities (5 kinds)


def _mutate(row: SourceMixin, rng: random.Random) -> None:
    """A random authoring change: content, eligibility, soft delete or undelete."""
    roll = rng.random()
    if roll < 0.15:
        row.deleted_at = None if row.deleted_at is not None else utcnow()
        return
    if isinstance(row, Topic):
        row.title = f"topic {rng.randrange(5)}"  # few values: many unchanged re-publications
    elif isinstance(row, Question):
        if roll < 0.5:
            row.explanation_status = rng.choice(["pending", "ready", "failed"])
        else:
            row.stem = f"stem {rng.randrange(5)}"
    elif isinstance(row, MemoCard):
        if roll < 0.4:
            row.needs_review = not row.needs_review
        elif roll < 0.5:
            row.retired_at = None if row.retired_at is not None else utcnow()
        else:
            row.front = f"front {rng.randrange(5)}"
    elif isinstance(row, CardProgress):
        row.reps += 1
        row.state = rng.choice(["new", "learning", "review", "suspended"])


async def test_relays_writers_backfill_and_consumer_at_once(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    async with seq_audit(engine):  # dropped afterwards: the PostgreSQL database is shared
        await _run_everything_at_once(engine, sessions, db_url)


async def _run_everything_at_once(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], db_url: str
) -> None:
    await create_content(sessions, ENTITIES_PER_TABLE)
    keys: list[tuple[type[SourceMixin], int]] = []
    async with engine.connect() as conn:
        for model in (Topic, Question, MemoCard, CardProgress):
            ids = (await conn.execute(select(model.id))).scalars().all()  # type: ignore[attr-defined]
            keys += [(model, i) for i in ids]
    assert len(keys) == 4 * ENTITIES_PER_TABLE

    go = asyncio.Event()
    writers_done = asyncio.Event()
    relay_engines = [create_engine(db_url) for _ in range(RELAYS)]
    relays = [Relay(e, batch_size=25, poll_interval_s=0.05) for e in relay_engines]
    follower = FeedConsumer(engine)
    conflicts = 0

    async def writer(seed: int) -> None:
        nonlocal conflicts
        rng = random.Random(seed)
        await go.wait()
        for _ in range(WRITES_EACH):
            model, ident = rng.choice(keys)
            try:
                async with sessions() as s:
                    row = await s.get_one(model, ident)
                    _mutate(row, rng)
                    await enqueue_changed(s, row)
                    await s.commit()
            except StaleDataError:
                conflicts += 1  # another writer updated it first: optimistic locking
            await asyncio.sleep(rng.random() * 0.005)

    async def backfill() -> None:
        await go.wait()
        for target in TARGETS:
            after = 0
            while True:
                async with sessions() as s:
                    count, after = await backfill_page(s, target, after_id=after, limit=20)
                    await s.commit()
                if count < 20:
                    break

    async def consumer() -> None:
        await go.wait()
        while not writers_done.is_set():
            await follower.poll(37)
            await asyncio.sleep(0.01)

    async def relay_loop(relay: Relay) -> None:
        await go.wait()
        await relay.run()

    async def released(*work: Awaitable[Any]) -> None:
        await asyncio.gather(*work)
        writers_done.set()

    relay_tasks = [asyncio.create_task(relay_loop(r)) for r in relays]
    consumer_task = asyncio.create_task(consumer())
    work = asyncio.create_task(released(*(writer(n) for n in range(WRITERS)), backfill()))
    try:
        await asyncio.sleep(0.2)  # everyone waits at the barrier
        go.set()
        await asyncio.wait_for(work, 120)
        await drained(engine, timeout_s=60)
    finally:
        for relay in relays:
            relay.stop()
        await asyncio.wait_for(asyncio.gather(*relay_tasks), 10)
        writers_done.set()
        await consumer_task
        for e in relay_engines:
            await e.dispose()
    await follower.poll(50)

    expected = await expected_state(engine)
    assert len(expected) == 5 * ENTITIES_PER_TABLE
    assert await decided_state(engine) == expected
    head = await head_of(engine)
    entries = await audited_entries(engine)
    assert [seq for seq, _ in entries] == list(range(head.floor + 1, head.last_seq + 1))
    assert len({key for _, key in entries}) == len(entries)  # no (kind, id, version) twice
    assert sum(r.totals.applied for r in relays) == head.last_seq
    visible = await visible_state(engine)
    # Versions too: an unchanged write moves only latest_version, never the entry consumers hold.
    assert follower.state == visible
    assert await outbox_count(engine) == 0
    assert sum(r.totals.dead + r.totals.retried for r in relays) == 0
    # The run really exercised the races it is about.
    assert sum(1 for r in relays if r.totals.applied) >= 2
    # Each backfill snapshot meets (or is met by) a row of its version, or a newer one.
    assert sum(r.totals.stale + r.totals.unchanged for r in relays) >= ENTITIES_PER_TABLE
