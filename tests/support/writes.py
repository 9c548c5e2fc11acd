"""ORM writes with their outbox rows, below the service layer: what the relay tests feed the
relay (the service layer's own rules are tested in test_authoring.py)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub.db import read_session_factory
from studypub.models import CardProgress, MemoCard, Question, Topic, utcnow
from studypub.outbox import enqueue_changed, insert_outbox, outbox_values
from studypub.relay import Relay

Sessions = async_sessionmaker[AsyncSession]


async def create_topics(sessions: Sessions, titles: Sequence[str]) -> list[int]:
    async with sessions() as s:
        topics = [Topic(title=t, description="") for t in titles]
        s.add_all(topics)
        await enqueue_changed(s, *topics)
        await s.commit()
        return [t.id for t in topics]


async def published_topics(
    engine: AsyncEngine, sessions: Sessions, titles: Sequence[str], **knobs: Any
) -> tuple[list[int], Relay]:
    """Topics created, then published by a relay run by hand (``knobs``: its options): their
    ids, and the relay to run again."""
    ids = await create_topics(sessions, titles)
    relay = Relay(engine, **knobs)
    await relay.run_once()
    return ids, relay


async def update_topic(sessions: Sessions, topic_id: int, **changes: Any) -> int:
    """Apply ``changes`` to a topic and enqueue it; returns its new version."""
    async with sessions() as s:
        topic = await s.get_one(Topic, topic_id)
        for name, value in changes.items():
            setattr(topic, name, value)
        await enqueue_changed(s, topic)
        await s.commit()
        return topic.version


async def delete_topic(sessions: Sessions, topic_id: int) -> int:
    return await update_topic(sessions, topic_id, deleted_at=utcnow())


async def create_content(sessions: Sessions, n: int) -> None:
    """``n`` topics, each with a question (ready explanation), an approved card and progress."""
    async with sessions() as s:
        topics = [Topic(title=f"topic {i}", description="d") for i in range(n)]
        s.add_all(topics)
        await s.flush()
        questions = [
            Question(
                topic_id=t.id,
                stem=f"stem {t.id}",
                choices=["a", "b"],
                answer="a",
                explanation=f"because {t.id}",
                explanation_status="ready",
            )
            for t in topics
        ]
        s.add_all(questions)
        await s.flush()
        cards = [
            MemoCard(topic_id=q.topic_id, question_id=q.id, front="f", back="b", needs_review=False)
            for q in questions
        ]
        s.add_all(cards)
        await s.flush()
        progress = [CardProgress(card_id=c.id, learner="ann") for c in cards]
        s.add_all(progress)
        await enqueue_changed(s, *topics, *questions, *cards, *progress)
        await s.commit()


# ---------------------------------------------------------------- snapshots


async def topic_snapshot(engine: AsyncEngine, topic_id: int) -> dict[str, Any]:
    """The outbox row of the topic as it is now, not inserted: a backfill page's snapshot."""
    async with read_session_factory(engine)() as r:
        return outbox_values("topic", await r.get_one(Topic, topic_id))


async def insert_snapshots(sessions: Sessions, *values: dict[str, Any]) -> None:
    """Insert outbox rows as given (late snapshots, duplicates) and commit."""
    async with sessions() as s:
        await insert_outbox(s, list(values))
        await s.commit()


# ---------------------------------------------------------------- writes that skip the outbox


async def ids_of(sessions: Sessions, model: type) -> list[int]:
    """The ids of ``model``'s rows, in order."""
    async with sessions() as s:
        return list((await s.scalars(select(model.id).order_by(model.id))).all())


async def change_without_outbox(sessions: Sessions, model: type, id_: int, **changes: Any) -> None:
    """An ORM update that skips the outbox: the version moves, nothing is enqueued (drift)."""
    async with sessions() as s:
        row = await s.get_one(model, id_)
        for name, value in changes.items():
            setattr(row, name, value)
        await s.commit()
