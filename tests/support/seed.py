"""Source rows inserted as they are, in bulk: no service layer, no outbox rows (what backfill
and verify find in an existing database)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.models import CardProgress, MemoCard, Question, Topic

T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


async def seed_topics(engine: AsyncEngine, ids: Sequence[int], **fields: Any) -> None:
    await _seed(engine, Topic, ids, fields, lambda i: {"title": f"Topic {i}", "description": ""})


async def seed_questions(
    engine: AsyncEngine, ids: Sequence[int], *, topic_id: int = 1, **fields: Any
) -> None:
    """Questions ``ids`` (topic 1 must exist); an even id has a ready explanation."""

    def question(i: int) -> dict[str, Any]:
        ready = i % 2 == 0
        return {
            "topic_id": topic_id,
            "stem": f"Question {i}: which one?",
            "choices": ["yes", "no", "maybe"],
            "answer": "yes",
            "explanation": f"Because {i}." if ready else None,
            "explanation_status": "ready" if ready else "pending",
        }

    await _seed(engine, Question, ids, fields, question)


async def seed_cards(
    engine: AsyncEngine, ids: Sequence[int], *, topic_id: int = 1, **fields: Any
) -> None:
    """Approved, live cards ``ids`` (topic 1 must exist)."""
    card = {"topic_id": topic_id, "needs_review": False}
    await _seed(
        engine, MemoCard, ids, fields, lambda i: card | {"front": f"Front {i}", "back": f"Back {i}"}
    )


async def seed_progress(
    engine: AsyncEngine, ids: Sequence[int], *, card_id: int = 1, **fields: Any
) -> None:
    """New progress rows ``ids`` on card 1 (it must exist), each of another learner."""
    new = {"card_id": card_id, "state": "new", "reps": 0, "lapses": 0}
    await _seed(engine, CardProgress, ids, fields, lambda i: new | {"learner": f"learner-{i}"})


async def _seed(
    engine: AsyncEngine,
    model: type[Any],
    ids: Sequence[int],
    fields: dict[str, Any],
    row: Callable[[int], dict[str, Any]],
) -> None:
    """Insert a version-1 row of ``model`` for each id: ``row(id)``, then ``fields`` over it."""
    rows = [
        {"id": i, "version": 1, "created_at": T0, "updated_at": T0, **row(i), **fields} for i in ids
    ]
    if rows:
        async with engine.begin() as conn:
            await conn.execute(insert(model.__table__), rows)
