"""Content written through the service layer, as authors write it (every rule and every
outbox row of the real write paths)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import authoring
from studypub.db import session_factory


@dataclass
class Content:
    topics: list[int]
    questions: list[int]
    cards: list[int]


async def write_content(engine: AsyncEngine, *, topics: int = 2, per_topic: int = 4) -> Content:
    """Topics with questions (half the explanations ready) and cards (all approved)."""
    made = Content([], [], [])
    async with session_factory(engine)() as session, session.begin():
        for t in range(topics):
            topic = await authoring.create_topic(session, title=f"Topic {t}", description="d")
            made.topics.append(topic.id)
            for q in range(per_topic):
                question = await authoring.create_question(
                    session,
                    topic_id=topic.id,
                    stem=f"Question {t}.{q}?",
                    choices=["yes", "no"],
                    answer="yes",
                )
                made.questions.append(question.id)
                if q % 2 == 0:
                    await authoring.complete_explanation(session, question.id, f"Because {q}.")
                card = await authoring.create_card(
                    session, topic_id=topic.id, front=f"Front {t}.{q}", back=f"Back {t}.{q}"
                )
                await authoring.approve_card(session, card.id)
                made.cards.append(card.id)
    return made


async def create_topic(engine: AsyncEngine, title: str, description: str = "") -> int:
    async with session_factory(engine)() as session, session.begin():
        topic = await authoring.create_topic(session, title=title, description=description)
        return topic.id


async def delete_card(engine: AsyncEngine, card_id: int) -> None:
    async with session_factory(engine)() as session, session.begin():
        await authoring.delete_card(session, card_id)


async def churn(engine: AsyncEngine, rounds: int) -> None:
    """Writes, updates and deletes, in many small transactions."""
    for n in range(rounds):
        made = await write_content(engine, topics=1, per_topic=2)
        async with session_factory(engine)() as session, session.begin():
            await authoring.update_topic(session, made.topics[0], title=f"Renamed {n}")
        await delete_card(engine, made.cards[0])
        await asyncio.sleep(0.01)
