"""Enqueue: atomic with the authoring write, the seed's semantics per kind, source versions."""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import outbox
from studypub.errors import InvalidInput
from studypub.models import CardProgress, MemoCard, Question, Topic, utcnow
from studypub.projection import canonical_json
from tests.support.outbox import read_outbox

EMPTY_HASH = hashlib.sha256(b"{}").hexdigest()

Sessions = async_sessionmaker[AsyncSession]


async def take(engine: AsyncEngine) -> list[tuple[str, int, int, bool, dict[str, Any]]]:
    """(kind, source id, source version, deleted, payload) of the outbox rows, then empty it."""
    rows = await read_outbox(engine)
    async with engine.begin() as conn:
        await conn.execute(outbox.Outbox.__table__.delete())
    return [(r.kind, r.source_id, r.source_version, r.deleted, r.payload) for r in rows]


async def new_topic(sessions: Sessions, **fields: Any) -> Topic:
    async with sessions() as s, s.begin():
        topic = Topic(title="Cells", description="Biology", **fields)
        s.add(topic)
        await outbox.enqueue_changed(s, topic)
    return topic


async def test_rolled_back_write_leaves_no_outbox_row(engine: AsyncEngine, sessions: Sessions):
    async with sessions() as s:
        s.add(topic := Topic(title="Cells"))
        await outbox.enqueue_changed(s, topic)  # flushed: the rows are in the transaction
        await s.rollback()
    assert await read_outbox(engine) == []
    async with sessions() as s:
        assert await s.scalar(select(func.count()).select_from(Topic)) == 0


async def test_failed_write_rolls_back_its_outbox_rows(engine: AsyncEngine, sessions: Sessions):
    with pytest.raises(RuntimeError):
        async with sessions() as s, s.begin():
            s.add(topic := Topic(title="Cells"))
            await outbox.enqueue_changed(s, topic)
            raise RuntimeError("authoring failed after the enqueue")
    assert await read_outbox(engine) == []


async def test_committed_write_has_exactly_its_rows(engine: AsyncEngine, sessions: Sessions):
    topic = await new_topic(sessions)
    async with sessions() as s, s.begin():
        question = Question(topic_id=topic.id, stem="2+2?", choices=["3", "4"], answer="4")
        s.add(question)
        await outbox.enqueue_changed(s, question)
    rows = await read_outbox(engine)
    assert [(r.kind, r.source_id, r.source_version, r.deleted) for r in rows] == [
        ("topic", topic.id, 1, False),
        ("question", question.id, 1, False),
        ("explanation", question.id, 1, True),
    ]
    for row in rows:
        assert row.payload_hash == hashlib.sha256(canonical_json(row.payload).encode()).hexdigest()
        assert row.schema_version == outbox.SCHEMA_VERSION
        assert row.attempts == 0 and row.dead_at is None


async def test_question_and_explanation(engine: AsyncEngine, sessions: Sessions):
    topic = await new_topic(sessions)
    await take(engine)
    async with sessions() as s, s.begin():
        q = Question(
            topic_id=topic.id, stem="Capital of France?", choices=["Paris"], answer="Paris"
        )
        s.add(q)
        await outbox.enqueue_changed(s, q)
    question_payload = {
        "id": q.id,
        "topic_id": topic.id,
        "stem": "Capital of France?",
        "choices": ["Paris"],
        "answer": "Paris",
    }
    assert await take(engine) == [
        ("question", q.id, 1, False, question_payload),
        ("explanation", q.id, 1, True, {}),  # pending: not published
    ]

    async with sessions() as s, s.begin():
        q = await s.merge(q)
        q.explanation, q.explanation_status = "Paris is the capital.", "ready"
        await outbox.enqueue_changed(s, q)
    body = {"id": q.id, "question_id": q.id, "body": "Paris is the capital."}
    assert await take(engine) == [
        ("question", q.id, 2, False, question_payload),
        ("explanation", q.id, 2, False, body),
    ]

    async with sessions() as s, s.begin():  # the explanation is no longer ready: tombstone
        q = await s.merge(q)
        q.explanation_status = "failed"
        await outbox.enqueue_changed(s, q)
    assert await take(engine) == [
        ("question", q.id, 3, False, question_payload),
        ("explanation", q.id, 3, True, {}),
    ]

    async with sessions() as s, s.begin():  # ready again, then the question is deleted
        q = await s.merge(q)
        q.explanation_status = "ready"
        await s.flush()
        q.deleted_at = utcnow()
        await outbox.enqueue_changed(s, q)
    assert await take(engine) == [
        ("question", q.id, 5, True, {}),
        ("explanation", q.id, 5, True, {}),
    ]


@pytest.mark.parametrize(
    ("change", "published"),
    [
        ({"back": "the powerhouse"}, True),
        ({"needs_review": True}, False),
        ({"retired_at": "now"}, False),
        ({"deleted_at": "now"}, False),
    ],
    ids=["approved", "back-to-review", "retired", "deleted"],
)
async def test_card_eligibility(
    engine: AsyncEngine, sessions: Sessions, change: dict[str, Any], published: bool
):
    topic = await new_topic(sessions)
    async with sessions() as s, s.begin():
        card = MemoCard(topic_id=topic.id, front="mitochondria", back="powerhouse")
        s.add(card)
        await outbox.enqueue_changed(s, card)  # new cards wait for review
    async with sessions() as s, s.begin():
        card = await s.merge(card)
        card.needs_review = False
        await outbox.enqueue_changed(s, card)
    async with sessions() as s, s.begin():
        card = await s.merge(card)
        for field, value in change.items():
            setattr(card, field, utcnow() if value == "now" else value)
        await outbox.enqueue_changed(s, card)
    payload = {
        "id": card.id,
        "topic_id": topic.id,
        "question_id": None,
        "front": "mitochondria",
        "back": "powerhouse",
    }
    last = (card.id, 3, True, {})
    if published:
        last = (card.id, 3, False, payload | {"back": "the powerhouse"})
    assert [row[1:] for row in await take(engine) if row[0] == "card"] == [
        (card.id, 1, True, {}),
        (card.id, 2, False, payload),
        last,
    ]


async def test_topic_publish_and_tombstone(engine: AsyncEngine, sessions: Sessions):
    topic = await new_topic(sessions)
    async with sessions() as s, s.begin():
        topic = await s.merge(topic)
        topic.title = "Cell biology"
        await outbox.enqueue_changed(s, topic)
    async with sessions() as s, s.begin():
        topic = await s.merge(topic)
        topic.deleted_at = utcnow()
        await outbox.enqueue_changed(s, topic)
    assert await take(engine) == [
        ("topic", topic.id, 1, False, {"id": topic.id, "title": "Cells", "description": "Biology"}),
        (
            "topic",
            topic.id,
            2,
            False,
            {"id": topic.id, "title": "Cell biology", "description": "Biology"},
        ),
        ("topic", topic.id, 3, True, {}),
    ]


async def test_card_progress_every_row_published(engine: AsyncEngine, sessions: Sessions):
    topic = await new_topic(sessions)
    async with sessions() as s, s.begin():
        card = MemoCard(topic_id=topic.id, front="f", back="b", needs_review=False)
        s.add(card)
        await s.flush()
        never = CardProgress(card_id=card.id, learner="ana")  # due_at NULL: never scheduled
        due = utcnow()
        done = CardProgress(
            card_id=card.id, learner="ben", state="suspended", due_at=due, stability=2.5, reps=3
        )
        s.add_all([never, done])
        await outbox.enqueue_changed(s, never)
        await outbox.enqueue_changed(s, done)
    rows = [row for row in await take(engine) if row[0] == "card_progress"]
    assert [(r[1], r[2], r[3]) for r in rows] == [(never.id, 1, False), (done.id, 1, False)]
    assert rows[0][4]["due_at"] is None and rows[0][4]["state"] == "new"
    assert rows[1][4]["state"] == "suspended" and rows[1][4]["stability"] == 2.5
    assert rows[1][4]["due_at"].endswith("Z")

    async with sessions() as s, s.begin():
        never = await s.merge(never)
        never.deleted_at = utcnow()
        await outbox.enqueue_changed(s, never)
    assert await take(engine) == [("card_progress", never.id, 2, True, {})]


async def test_versions_rise_on_every_update(engine: AsyncEngine, sessions: Sessions):
    topic = await new_topic(sessions)
    versions = [topic.version]
    for title in ("a", "b", "c"):
        async with sessions() as s, s.begin():
            topic = await s.merge(topic)
            topic.title = title
            await outbox.enqueue_changed(s, topic)
        versions.append(topic.version)
    async with sessions() as s, s.begin():  # soft delete is an update too
        topic = await s.merge(topic)
        topic.deleted_at = utcnow()
        await outbox.enqueue_changed(s, topic)
    versions.append(topic.version)
    assert versions == [1, 2, 3, 4, 5]
    assert [row[2] for row in await take(engine)] == versions  # each row carries its version


async def test_enqueue_publish_as_given(engine: AsyncEngine, sessions: Sessions):
    async with sessions() as s, s.begin():
        await outbox.enqueue_publish(
            s, kind="topic", source_id=7, source_version=4, payload={"id": 7, "title": "é"}
        )
        await outbox.enqueue_publish(
            s, kind="topic", source_id=8, source_version=2, payload={"id": 8}, deleted=True
        )
    rows = await read_outbox(engine)
    assert [(r.source_id, r.source_version, r.deleted, r.payload) for r in rows] == [
        (7, 4, False, {"id": 7, "title": "é"}),
        (8, 2, True, {}),
    ]
    assert rows[1].payload_hash == EMPTY_HASH


async def test_enqueue_publish_refuses_unknown_kind(engine: AsyncEngine, sessions: Sessions):
    async with sessions() as s, s.begin():
        with pytest.raises(InvalidInput, match="unknown kind 'quiz'"):
            await outbox.enqueue_publish(s, kind="quiz", source_id=1, source_version=1, payload={})
    assert await read_outbox(engine) == []
