"""One test (at least) per invariant of DESIGN, each on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from datetime import timedelta

import pytest
from sqlalchemy import func, insert, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import feed
from studypub.db import create_engine, read_session_factory
from studypub.errors import ResetRequired
from studypub.models import Outbox, Question, Topic, utcnow
from studypub.outbox import enqueue_changed, outbox_values
from studypub.projection import payload_hash
from studypub.relay import Outcomes, Relay
from studypub.targets import TOPICS
from tests.support.databases import PG_ONLY
from tests.support.outbox import backfill_page, outbox_count
from tests.support.state import (
    FeedConsumer,
    decided_state,
    expected_state,
    feed_seqs,
    head_of,
    the_published_row,
    visible_state,
)
from tests.support.triggers import POISON_ERROR, POISON_TITLE, audited_seqs, poison_rule, seq_audit
from tests.support.writes import (
    create_content,
    create_topics,
    delete_topic,
    insert_snapshots,
    published_topics,
    topic_snapshot,
    update_topic,
)

Sessions = async_sessionmaker[AsyncSession]


# ---------------------------------------------------------------- 1. atomic


async def test_invariant_1_atomic_source_write_and_outbox_roll_back_together(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    async with sessions() as s:
        topic = Topic(title="never", description="")
        s.add(topic)
        await enqueue_changed(s, topic)
        await s.rollback()
    # A write refused by the database at commit takes its outbox rows with it.
    async with sessions() as s:
        orphan = Question(topic_id=999_999, stem="s", choices=["a"], answer="a")
        s.add(orphan)
        with pytest.raises(IntegrityError):
            await enqueue_changed(s, orphan)
            await s.commit()
        await s.rollback()
    assert await outbox_count(engine) == 0
    async with engine.connect() as conn:
        assert (await conn.execute(select(func.count()).select_from(Topic))).scalar_one() == 0
    assert await Relay(engine).run_once() == Outcomes()
    assert await decided_state(engine) == {}


async def test_invariant_1_atomic_committed_write_has_its_outbox_row(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    [tid] = await create_topics(sessions, ["kept"])
    async with engine.connect() as conn:
        rows = (await conn.execute(select(Outbox.kind, Outbox.source_id))).all()
    assert [tuple(r) for r in rows] == [("topic", tid)]


# ---------------------------------------------------------------- 2. nothing lost


async def test_invariant_2_nothing_lost_every_row_published_dead_or_obsolete(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    await create_content(sessions, 5)
    ids = await create_topics(sessions, [f"t{i}" for i in range(10)])
    for tid in ids[:5]:
        await update_topic(sessions, tid, title=f"new {tid}")
    for tid in ids[5:8]:
        await delete_topic(sessions, tid)
    values = await topic_snapshot(engine, ids[9])
    await insert_snapshots(sessions, {**values, "kind": "glossary"})  # no relay can publish it
    before = await outbox_count(engine)
    outcomes = await Relay(engine, batch_size=7, max_attempts=1).run_once()
    assert outcomes.claimed == before
    assert outcomes.dead == 1
    assert await outbox_count(engine, dead=False) == 0
    assert await outbox_count(engine, dead=True) == 1
    async with engine.connect() as conn:
        dead = (await conn.execute(select(Outbox))).one()
    assert dead.kind == "glossary" and "unknown kind 'glossary'" in dead.last_error
    assert await decided_state(engine) == await expected_state(engine)


# ---------------------------------------------------------------- 3. version-monotonic


async def test_invariant_3_version_monotonic_backfill_snapshot_before_live_update_is_stale(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    [tid], relay = await published_topics(engine, sessions, ["v1"])
    snapshot = await topic_snapshot(engine, tid)  # the backfill reads its snapshot (v1) ...
    # ... a live update commits (v2) and is published ...
    await update_topic(sessions, tid, title="v2")
    assert await relay.run_once() == Outcomes(applied=1)
    # ... then the backfill page commits its older snapshot: dropped as stale.
    await insert_snapshots(sessions, snapshot)
    assert await relay.run_once() == Outcomes(stale=1)
    row = await the_published_row(engine)
    assert (row.version, row.payload["title"], row.seq) == (2, "v2", 2)


async def test_invariant_3_version_monotonic_late_snapshot_cannot_resurrect(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    [tid], relay = await published_topics(engine, sessions, ["alive"])
    snapshot = await topic_snapshot(engine, tid)
    await delete_topic(sessions, tid)
    await relay.run_once()
    await insert_snapshots(sessions, snapshot)
    assert await relay.run_once() == Outcomes(stale=1)
    row = await the_published_row(engine)
    assert (row.deleted, row.version, row.payload) == (True, 2, {})
    assert await decided_state(engine) == await expected_state(engine)


@PG_ONLY
async def test_invariant_3_version_monotonic_real_backfill_page_interleaved(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    """PostgreSQL: a backfill page transaction really open across a live update and a relay.

    (SQLite cannot interleave them: the page's BEGIN IMMEDIATE holds the single writer lock,
    so the live update waits for the page to commit; the race cannot happen there.)
    """
    (a, b), relay = await published_topics(engine, sessions, ["a1", "b1"])
    async with sessions() as page:
        assert await backfill_page(page, TOPICS) == (2, b)  # snapshots of a v1, b v1
        await update_topic(sessions, a, title="a2")
        await delete_topic(sessions, b)
        assert await relay.run_once() == Outcomes(applied=2)
        await page.commit()
    assert await relay.run_once() == Outcomes(stale=2)
    assert await decided_state(engine) == await expected_state(engine)


async def test_invariant_3_version_monotonic_in_any_arrival_order(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    [tid] = await create_topics(sessions, ["v1"])
    snapshots = []
    async with sessions() as s:
        for n in range(2, 6):
            topic = await s.get_one(Topic, tid)
            topic.title = f"v{n}"
            await s.flush()
            snapshots.append(outbox_values("topic", topic))
        await s.commit()
    await _clear_outbox(engine)
    relay = Relay(engine, batch_size=1)
    for values in [snapshots[2], snapshots[0], snapshots[3], snapshots[1]]:  # v4 v2 v5 v3
        await insert_snapshots(sessions, values)
        await relay.run_once()
    assert (relay.totals.applied, relay.totals.stale) == (2, 2)
    row = await the_published_row(engine)
    assert (row.version, row.payload["title"]) == (5, "v5")


# ---------------------------------------------------------------- 4. no-op dedup


async def test_invariant_4_no_op_dedup_duplicates_and_schema_bump(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    [tid], relay = await published_topics(engine, sessions, ["same"])
    values = await topic_snapshot(engine, tid)  # twice, then once with a newer schema
    await insert_snapshots(sessions, values, values)
    assert await relay.run_once() == Outcomes(unchanged=1, stale=1)
    async with sessions() as s:
        await backfill_page(s, TOPICS, schema_version=2)
        await s.commit()
    assert await relay.run_once() == Outcomes(unchanged=1)
    row = await the_published_row(engine)
    assert (row.seq, row.schema_version, row.latest_schema_version) == (1, 1, 2)
    assert (await head_of(engine)).last_seq == 1
    # The schema now recorded refuses an older-schema snapshot of the same version.
    await insert_snapshots(sessions, {**values, "payload": {"x": 1}, "payload_hash": "0" * 64})
    assert await relay.run_once() == Outcomes(stale=1)


# ---------------------------------------------------------------- 5. gap-free


async def test_invariant_5_gap_free_seqs_in_commit_order_with_concurrent_relays(
    engine: AsyncEngine, sessions: Sessions, db_url: str
) -> None:
    async with seq_audit(engine), poison_rule(engine):
        ids = await create_topics(sessions, [f"t{i}" for i in range(40)])
        await create_topics(sessions, [POISON_TITLE])  # a failing apply gives its seqs back
        engines = [create_engine(db_url) for _ in range(3)]
        relays = [Relay(e, batch_size=5, max_attempts=1) for e in engines]
        consumer = FeedConsumer(engine)
        rng = random.Random(5)

        async def write() -> None:
            for _ in range(60):
                tid = rng.choice(ids)
                if rng.random() < 0.2:
                    await delete_topic(sessions, tid)
                    ids.remove(tid)
                else:
                    await update_topic(sessions, tid, title=f"x{rng.random()}")

        try:
            writer = asyncio.create_task(write())
            while not writer.done():
                await asyncio.gather(*(r.run_once() for r in relays), consumer.poll(7))
            await writer
            await asyncio.gather(*(r.run_once() for r in relays))
            await consumer.poll(7)
        finally:
            for e in engines:
                await e.dispose()
        head = await head_of(engine)
        applied = sum(r.totals.applied for r in relays)
        assert applied == head.last_seq
        assert await audited_seqs(engine) == list(range(1, head.last_seq + 1))
        assert consumer.seen_seqs == sorted(set(consumer.seen_seqs))
        present = await feed_seqs(engine)
        assert present[-1] == head.last_seq
        assert consumer.state == await visible_state(engine)
        assert sum(r.totals.dead for r in relays) == 1


# ---------------------------------------------------------------- 6. compacted


async def test_invariant_6_compacted_feed_bootstrap_is_current_state(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    ids, relay = await published_topics(engine, sessions, [f"t{i}" for i in range(10)])
    for round_ in range(3):
        for tid in ids:
            await update_topic(sessions, tid, title=f"{tid} round {round_}")
        await relay.run_once()
    await delete_topic(sessions, ids[0])
    await relay.run_once()
    assert (await head_of(engine)).last_seq == 41
    consumer = FeedConsumer(engine)
    await consumer.poll(4)
    assert sorted(consumer.seen_seqs) == await feed_seqs(engine)
    assert len(consumer.seen_seqs) == 10  # one entry per entity
    assert consumer.state == await expected_state(engine)


# ---------------------------------------------------------------- 7. tombstones kept


async def test_invariant_7_tombstones_kept_until_pruned_then_reset_required(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    (a, b, c), relay = await published_topics(engine, sessions, ["a", "b", "c"])
    follower = FeedConsumer(engine)
    await follower.poll()
    old_cursor = follower.cursor
    await delete_topic(sessions, a)
    await relay.run_once()
    await update_topic(sessions, c, title="c2")
    await relay.run_once()
    late = FeedConsumer(engine)
    await late.poll()
    assert late.state[("topic", a)][1] is True  # still there for late consumers
    async with sessions() as s:
        assert (
            await feed.prune_tombstones(
                s, older_than=feed.MIN_RETENTION, now=utcnow() + 2 * feed.MIN_RETENTION
            )
            == 1
        )
        await s.commit()
    head = await head_of(engine)
    assert head.floor == 4
    async with read_session_factory(engine)() as r:
        with pytest.raises(ResetRequired):
            await feed.read_feed(r, old_cursor, 10)
        other_epoch = feed.encode_cursor("restored", head.last_seq)
        with pytest.raises(ResetRequired):
            await feed.read_feed(r, other_epoch, 10)
    fresh = FeedConsumer(engine)
    await fresh.poll()
    assert set(fresh.state) == {("topic", b), ("topic", c)}
    await late.poll()  # a consumer past the floor goes on
    assert late.state[("topic", c)][2] == 2


# ---------------------------------------------------------------- 8. order-insensitive


async def test_invariant_8_order_insensitive_relays_in_parallel(
    engine: AsyncEngine, sessions: Sessions, db_url: str
) -> None:
    ids = await create_topics(sessions, [f"t{i}" for i in range(30)])
    values = []
    async with sessions() as s:
        for tid in ids:
            topic = await s.get_one(Topic, tid)
            for n in range(4):
                topic.title = f"{tid} v{n + 2}"
                if n == 3 and tid % 3 == 0:
                    topic.deleted_at = utcnow()
                await s.flush()
                values.append(outbox_values("topic", topic))
        await s.commit()
    await _clear_outbox(engine)
    random.Random(8).shuffle(values)
    async with sessions() as s:
        await s.execute(insert(Outbox), values)
        await s.commit()
    engines = [create_engine(db_url) for _ in range(4)]
    try:
        relays = [Relay(e, batch_size=9) for e in engines]
        results = await asyncio.gather(*(r.run_once() for r in relays))
    finally:
        for e in engines:
            await e.dispose()
    total = Outcomes()
    for result in results:
        total.add(result)
    assert total.claimed == len(values)
    assert await outbox_count(engine) == 0
    assert await decided_state(engine) == await expected_state(engine)
    seqs = await feed_seqs(engine)
    # Unique, and the last seq handed out is the number of entries applied: no hole.
    head = await head_of(engine)
    assert len(seqs) == len(set(seqs)) and seqs[-1] == total.applied == head.last_seq


# ---------------------------------------------------------------- 9. poison isolation


async def test_invariant_9_poison_isolation_retry_then_dead_letter(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    async with poison_rule(engine):
        ids = await create_topics(sessions, ["ok 1", "ok 2", POISON_TITLE, "ok 3", "ok 4"])
        poisoned = ids[2]
        relay = Relay(engine, max_attempts=3, backoff_base_s=60)
        first = await relay.run_once()
        assert first == Outcomes(applied=4, retried=1)
        async with engine.connect() as conn:
            row = (await conn.execute(select(Outbox))).one()
        assert row.source_id == poisoned and row.attempts == 1 and row.dead_at is None
        assert POISON_ERROR in row.last_error
        # Backoff: not due for 30..60 s, then due again.
        assert timedelta(seconds=29) < row.available_at - utcnow() <= timedelta(seconds=60)
        assert await relay.run_once() == Outcomes()
        for expected in (Outcomes(retried=1), Outcomes(dead=1)):
            await _make_due(engine)
            assert await relay.run_once() == expected
        async with engine.connect() as conn:
            row = (await conn.execute(select(Outbox))).one()
        assert row.attempts == 3 and row.dead_at is not None
        await _make_due(engine)
        assert await relay.run_once() == Outcomes()  # dead rows are never claimed again
        # A newer version of the same entity is not blocked by its dead row.
        await update_topic(sessions, poisoned, title="cured")
        assert await relay.run_once() == Outcomes(applied=1)
    state = await decided_state(engine)
    assert state == await expected_state(engine)
    assert await outbox_count(engine, dead=True) == 1


async def test_invariant_9_poison_isolation_unknown_kind_refused_without_blocking(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    [tid] = await create_topics(sessions, ["fine"])
    async with sessions() as s:
        await s.execute(
            insert(Outbox),
            [
                {
                    "kind": "glossary",
                    "source_id": tid,
                    "source_version": 1,
                    "schema_version": 1,
                    "payload": {"id": tid},
                    "payload_hash": payload_hash({"id": tid}),
                    "deleted": False,
                }
            ],
        )
        await s.commit()
    relay = Relay(engine, max_attempts=2, backoff_base_s=0)
    assert await relay.run_once() == Outcomes(applied=1, retried=1)
    assert await relay.run_once() == Outcomes(dead=1)
    assert await decided_state(engine) == await expected_state(engine)


async def _make_due(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(Outbox.__table__.update().values(available_at=utcnow()))


async def _clear_outbox(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(Outbox.__table__.delete())
