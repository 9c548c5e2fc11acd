"""``studypub.verify`` on both databases: drift made by writes that skipped the outbox (and
by hand edits of the published store) is found once per key, repaired through the relay, and
keys with an outbox row waiting are left to the relay. (The command: tests/cli/test_verify.py.)
"""

from __future__ import annotations

import pytest
from sqlalchemy import delete, event, insert, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from sqlalchemy.orm import ORMExecuteState
from sqlalchemy.util import await_only

from studypub.db import read_session_factory
from studypub.errors import InvalidInput
from studypub.models import CardProgress, MemoCard, Published, Question, Topic, utcnow
from studypub.outbox import enqueue_changed
from studypub.relay import Relay
from studypub.targets import CARD_PROGRESS, QUESTIONS, TARGETS, TOPICS, Target, parse_targets
from studypub.verify import DriftClass, find_drift, verify
from tests.support.state import decided_state, expected_state
from tests.support.writes import (
    change_without_outbox,
    create_content,
    create_topics,
    ids_of,
    update_topic,
)

ORPHAN_ID = 1000
Drifts = dict[tuple[str, int], str]


async def make_drift(engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]) -> Drifts:
    """Published content, then one drift of each class; returns the drift expected."""
    await create_content(sessions, 4)
    topics = await ids_of(sessions, Topic)
    questions = await ids_of(sessions, Question)
    cards = await ids_of(sessions, MemoCard)
    progress = await ids_of(sessions, CardProgress)
    await change_without_outbox(sessions, Topic, topics[2], deleted_at=utcnow())
    async with sessions() as s:  # published as a tombstone first
        await enqueue_changed(s, await s.get_one(Topic, topics[2]))
        await s.commit()
    await Relay(engine).run_once()

    await change_without_outbox(sessions, Topic, topics[0], title="renamed")
    await change_without_outbox(sessions, Topic, topics[1], deleted_at=utcnow())
    await change_without_outbox(sessions, Topic, topics[2], deleted_at=None)
    await change_without_outbox(sessions, Question, questions[0], explanation_status="pending")
    await change_without_outbox(sessions, Question, questions[2], explanation_error="no effect")
    await change_without_outbox(sessions, MemoCard, cards[0], needs_review=True)
    async with sessions() as s:
        added = Topic(title="never enqueued")
        s.add(added)
        await s.commit()
        await s.execute(
            delete(Published).where(Published.kind == "card_progress", Published.id == progress[0])
        )
        await s.execute(
            update(Published)
            .where(Published.kind == "question", Published.id == questions[1])
            .values(version=99, latest_version=99)
        )
        await s.execute(
            insert(Published).values(
                kind="topic",
                id=ORPHAN_ID,
                version=1,
                schema_version=1,
                latest_version=1,
                latest_schema_version=1,
                payload={"id": ORPHAN_ID},
                hash="0" * 64,
                deleted=False,
                seq=10_000,
                published_at=utcnow(),
            )
        )
        await s.commit()
    async with sessions() as s:  # in flight: enqueued, not relayed yet
        topic = await s.get_one(Topic, topics[3])
        topic.title = "on its way"
        await enqueue_changed(s, topic)
        await s.commit()
    return {
        ("topic", topics[0]): DriftClass.STALE,
        ("topic", topics[1]): DriftClass.NOT_ELIGIBLE,
        ("topic", topics[2]): DriftClass.MISSING,
        ("topic", added.id): DriftClass.MISSING,
        ("topic", ORPHAN_ID): DriftClass.NOT_ELIGIBLE,
        ("explanation", questions[0]): DriftClass.NOT_ELIGIBLE,
        ("question", questions[1]): DriftClass.AHEAD,
        ("card", cards[0]): DriftClass.NOT_ELIGIBLE,
        ("card_progress", progress[0]): DriftClass.MISSING,
    }


async def _all_pages(engine: AsyncEngine, target: Target, limit: int) -> tuple[list, int, int]:
    """Every drifted key of ``target`` page by page; (drift, keys checked, keys in flight)."""
    found, checked, in_flight, after_id = [], 0, 0, 0
    while True:
        async with read_session_factory(engine)() as s:
            page = await find_drift(s, target, after_id=after_id, limit=limit)
        found += [(d.kind, d.id, d.drift) for d in page.drifted]
        checked += sum(c["checked"] for c in page.counts.values())
        in_flight += sum(c["in_flight"] for c in page.counts.values())
        if page.rows < limit:
            return found, checked, in_flight
        after_id = page.last_id


@pytest.mark.parametrize("limit", [1, 2, 5000])
async def test_find_drift_reports_each_drifted_key_once(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], limit: int
) -> None:
    expected = await make_drift(engine, sessions)
    found, checked, in_flight = [], 0, 0
    for target in TARGETS:
        drift, n, waiting = await _all_pages(engine, target, limit)
        found += drift
        checked += n
        in_flight += waiting

    assert sorted(found) == sorted((kind, id_, cls) for (kind, id_), cls in expected.items())
    # 5 topics and the orphan, 4 questions and 4 explanations, 4 cards, 4 progress rows; the
    # topic with an outbox row waiting is in flight, not checked.
    assert (checked, in_flight) == (5 + 8 + 4 + 4, 1)


async def test_verify_counts_per_kind(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await make_drift(engine, sessions)
    summaries = await verify(engine, TARGETS, page=2)
    counts = {
        s.kind: (s.checked, s.in_flight, s.missing, s.stale, s.not_eligible, s.ahead, s.repaired)
        for s in summaries
    }
    assert counts == {
        "topic": (5, 1, 2, 1, 2, 0, 0),
        "question": (4, 0, 0, 0, 0, 1, 0),
        "explanation": (4, 0, 0, 0, 1, 0, 0),
        "card": (4, 0, 0, 0, 1, 0, 0),
        "card_progress": (4, 0, 1, 0, 0, 0, 0),
    }


async def test_repair_then_relay_leaves_no_drift(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    expected = await make_drift(engine, sessions)
    ahead = next(key for key, cls in expected.items() if cls == DriftClass.AHEAD)

    summaries = await verify(engine, TARGETS, page=2, repair=True)
    assert sum(s.repaired for s in summaries) == len(expected) - 1  # all but the ahead one
    await Relay(engine).run_once()

    after = await verify(engine, TARGETS, page=2)
    assert [(s.kind, s.drift, s.ahead, s.in_flight) for s in after if s.drift] == [
        ("question", 1, 1, 0)
    ]
    projected, published = await expected_state(engine), await decided_state(engine)
    assert published[("topic", ORPHAN_ID)][1] is True  # its source row is gone: a tombstone
    for key, (hash_, deleted, _) in projected.items():
        if key == ahead:
            continue
        if deleted:
            assert key not in published or published[key][1], key
        else:
            assert published[key][:2] == (hash_, False), key


async def test_find_drift_skips_keys_with_an_outbox_row_waiting(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await create_content(sessions, 2)  # enqueued, never relayed: everything is in flight
    async with read_session_factory(engine)() as s:
        page = await find_drift(s, QUESTIONS)
    assert page.drifted == []
    assert {k: (c["checked"], c["in_flight"]) for k, c in page.counts.items()} == {
        "question": (0, 2),
        "explanation": (0, 2),
    }
    await Relay(engine).run_once()
    async with read_session_factory(engine)() as s:
        page = await find_drift(s, QUESTIONS)
    assert page.drifted == []
    assert page.counts["question"]["checked"] == 2


@pytest.mark.parametrize("new_row", [False, True], ids=["update", "insert"])
async def test_a_write_relayed_between_the_reads_of_a_page_is_not_drift(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession], new_row: bool
) -> None:
    """A write committed and relayed after the page read its source rows (PostgreSQL reads
    each statement afresh) makes a key look ahead, or published without a source row."""
    topic_id = (await create_topics(sessions, ["first"]))[0]
    await Relay(engine).run_once()

    async def write_and_relay() -> None:
        if new_row:
            await create_topics(sessions, ["second"])
        else:
            await update_topic(sessions, topic_id, title="renamed")
        await Relay(engine).run_once()

    statements = 0

    def between_reads(_: ORMExecuteState) -> None:
        nonlocal statements
        statements += 1
        if statements == 2:  # after the source rows, before the outbox and published reads
            await_only(write_and_relay())

    async with read_session_factory(engine)() as s:
        event.listen(s.sync_session, "do_orm_execute", between_reads)
        page = await find_drift(s, TOPICS)
    assert statements >= 3
    assert page.drifted == []
    async with read_session_factory(engine)() as s:
        again = await find_drift(s, TOPICS)
    assert (again.drifted, again.counts["topic"]["checked"]) == ([], 1 + new_row)


def test_unknown_target_is_refused_with_the_choices() -> None:
    with pytest.raises(InvalidInput, match="unknown verify target 'quiz': choose one of topics"):
        parse_targets("quiz", command="verify")
    assert parse_targets("card-progress", command="verify") == (CARD_PROGRESS,)
