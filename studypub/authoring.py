"""The authoring service: every write to topics, questions and memo cards goes through here.

Each function works in the caller's session and never commits: the source write and its
outbox rows (``outbox.enqueue_changed``) commit or roll back together. Callers never decide
what gets published; the projections do, from the row as it now stands.

Writes to an existing row take ``expected_version`` (optimistic concurrency, exact thanks to
the row locks of :mod:`studypub.records`). Unknown or deleted ids raise ``NotFound``. Input
wrong in itself raises ``InvalidInput``; a rule that the stored state refuses, ``Conflict``
(a reference to a missing or deleted row: ``MissingReference``). A write that changes
nothing keeps the version and enqueues nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Literal

from sqlalchemy.ext.asyncio import AsyncSession

from studypub import records, scheduling
from studypub.errors import Conflict, InvalidInput
from studypub.models import (
    ExplanationStatus,
    MemoCard,
    Question,
    Topic,
    utcnow,
)

MAX_TITLE = 200
MAX_TEXT = 20_000
MAX_CHOICE = 1_000
MIN_CHOICES = 2
MAX_CHOICES = 10


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET: Literal[_Unset.UNSET] = _Unset.UNSET
"""Marks an optional field the caller did not send (``None`` may be a value)."""


# ---------------------------------------------------------------- topics


async def create_topic(session: AsyncSession, *, title: str, description: str = "") -> Topic:
    topic = Topic(
        title=records.text("title", title, MAX_TITLE),
        description=records.text("description", description, MAX_TEXT, blank=True),
    )
    session.add(topic)
    await records.save_and_enqueue(session, topic)
    return topic


async def update_topic(
    session: AsyncSession,
    topic_id: int,
    *,
    expected_version: int | None = None,
    title: str | None = None,
    description: str | None = None,
) -> Topic:
    """Change the given fields; ``None`` leaves a field as it is."""
    topic = await records.get_for_update(session, Topic, topic_id, expected_version)
    changes: dict[str, Any] = {}
    if title is not None:
        changes["title"] = records.text("title", title, MAX_TITLE)
    if description is not None:
        changes["description"] = records.text("description", description, MAX_TEXT, blank=True)
    if records.assign(topic, changes):
        await records.save_and_enqueue(session, topic)
    return topic


async def delete_topic(
    session: AsyncSession, topic_id: int, *, expected_version: int | None = None
) -> Topic:
    """Soft-delete a topic. Refused while live questions or cards belong to it."""
    topic = await records.get_for_update(session, Topic, topic_id, expected_version)
    questions = await records.count_live(session, Question, Question.topic_id == topic_id)
    cards = await records.count_live(session, MemoCard, MemoCard.topic_id == topic_id)
    if questions or cards:
        raise Conflict(
            f"topic {topic_id} still has {questions} live question(s) and {cards} live card(s);"
            " delete them first"
        )
    topic.deleted_at = utcnow()
    await records.save_and_enqueue(session, topic)
    return topic


# ---------------------------------------------------------------- questions


async def create_question(
    session: AsyncSession, *, topic_id: int, stem: str, choices: Sequence[str], answer: str
) -> Question:
    """A new question; its explanation starts ``pending`` (the explanation worker fills it)."""
    await records.require_live(session, Topic, topic_id, "topic_id")
    question = Question(
        topic_id=topic_id,
        stem=records.text("stem", stem, MAX_TEXT),
        choices=_choices(choices),
        answer=answer,
    )
    _check_answer(question.choices, answer)
    session.add(question)
    await records.save_and_enqueue(session, question)
    return question


async def update_question(
    session: AsyncSession,
    question_id: int,
    *,
    expected_version: int | None = None,
    topic_id: int | None = None,
    stem: str | None = None,
    choices: Sequence[str] | None = None,
    answer: str | None = None,
) -> Question:
    """Change the given fields; the answer must stay one of the (possibly new) choices.

    A change of the stem, the choices or the answer sends the explanation back to
    ``pending``: no explanation stays published beside a question it does not explain.
    """
    question = await records.get_for_update(session, Question, question_id, expected_version)
    changes: dict[str, Any] = {}
    if topic_id is not None and topic_id != question.topic_id:
        await records.require_live(session, Topic, topic_id, "topic_id")
        # Cards link only questions of their own topic: moving one would break that.
        if cards := await records.count_live(
            session, MemoCard, MemoCard.question_id == question_id
        ):
            raise Conflict(f"question {question_id} has {cards} live card(s) in its topic")
        changes["topic_id"] = topic_id
    if stem is not None:
        changes["stem"] = records.text("stem", stem, MAX_TEXT)
    if choices is not None:
        changes["choices"] = _choices(choices)
    if answer is not None:
        changes["answer"] = answer
    _check_answer(
        changes.get("choices", question.choices),
        changes.get("answer", question.answer),
        stored=("choices" in changes) != ("answer" in changes),
    )
    if _explained(question, changes) and question.explanation_status != ExplanationStatus.PENDING:
        # The explanation explains the question as it was: withdrawn (a tombstone in the
        # feed) until the explanation worker writes it again for the new content.
        changes.update(
            explanation_status=ExplanationStatus.PENDING.value,
            explanation=None,
            explanation_error=None,
        )
    if records.assign(question, changes):
        await records.save_and_enqueue(session, question)
    return question


async def delete_question(
    session: AsyncSession, question_id: int, *, expected_version: int | None = None
) -> Question:
    """Soft-delete a question (and so its explanation). Refused while live cards refer to it."""
    question = await records.get_for_update(session, Question, question_id, expected_version)
    cards = await records.count_live(session, MemoCard, MemoCard.question_id == question_id)
    if cards:
        raise Conflict(f"question {question_id} still has {cards} live card(s); delete them first")
    question.deleted_at = utcnow()
    await records.save_and_enqueue(session, question)
    return question


async def complete_explanation(
    session: AsyncSession, question_id: int, body: str, *, expected_version: int | None = None
) -> Question:
    """The explanation worker's result: store ``body`` and mark the explanation ready."""
    return await _set_explanation(
        session,
        question_id,
        expected_version,
        status=ExplanationStatus.READY,
        body=records.text("body", body, MAX_TEXT),
        error=None,
    )


async def fail_explanation(
    session: AsyncSession, question_id: int, error: str, *, expected_version: int | None = None
) -> Question:
    """The explanation worker gave up: keep its error; a ready explanation is withdrawn."""
    return await _set_explanation(
        session,
        question_id,
        expected_version,
        status=ExplanationStatus.FAILED,
        body=None,
        error=records.text("error", error, MAX_TEXT),
    )


async def reset_explanation(
    session: AsyncSession, question_id: int, *, expected_version: int | None = None
) -> Question:
    """Back to ``pending`` (to be written again); a ready explanation is withdrawn."""
    pending = ExplanationStatus.PENDING
    return await _set_explanation(
        session, question_id, expected_version, status=pending, body=None, error=None
    )


async def _set_explanation(
    session: AsyncSession,
    question_id: int,
    expected_version: int | None,
    *,
    status: ExplanationStatus,
    body: str | None,
    error: str | None,
) -> Question:
    question = await records.get_for_update(session, Question, question_id, expected_version)
    changes = {"explanation_status": status.value, "explanation": body, "explanation_error": error}
    if records.assign(question, changes):
        await records.save_and_enqueue(session, question)
    return question


# ---------------------------------------------------------------- memo cards


async def create_card(
    session: AsyncSession,
    *,
    topic_id: int,
    front: str,
    back: str,
    question_id: int | None = None,
) -> MemoCard:
    """A new card; it starts in review (``needs_review``) and is published once approved."""
    await records.require_live(session, Topic, topic_id, "topic_id")
    if question_id is not None:
        await _require_question_of(session, question_id, topic_id)
    card = MemoCard(
        topic_id=topic_id,
        question_id=question_id,
        front=records.text("front", front, MAX_TEXT),
        back=records.text("back", back, MAX_TEXT),
        needs_review=True,
    )
    session.add(card)
    await records.save_and_enqueue(session, card)
    return card


async def update_card(
    session: AsyncSession,
    card_id: int,
    *,
    expected_version: int | None = None,
    topic_id: int | None = None,
    question_id: int | Literal[_Unset.UNSET] | None = UNSET,
    front: str | None = None,
    back: str | None = None,
) -> MemoCard:
    """Change the given fields (``question_id=None`` unlinks the question). Not when retired."""
    card = await records.get_for_update(session, MemoCard, card_id, expected_version)
    _refuse_retired(card, "updated")
    changes: dict[str, Any] = {}
    if topic_id is not None and topic_id != card.topic_id:
        await records.require_live(session, Topic, topic_id, "topic_id")
        changes["topic_id"] = topic_id
    if front is not None:
        changes["front"] = records.text("front", front, MAX_TEXT)
    if back is not None:
        changes["back"] = records.text("back", back, MAX_TEXT)
    if question_id is not UNSET:
        changes["question_id"] = question_id
    linked = changes.get("question_id", card.question_id)
    if linked is not None and ("question_id" in changes or "topic_id" in changes):
        await _require_question_of(session, linked, changes.get("topic_id", card.topic_id))
    if records.assign(card, changes):
        await records.save_and_enqueue(session, card)
    return card


async def delete_card(
    session: AsyncSession, card_id: int, *, expected_version: int | None = None
) -> MemoCard:
    """Soft-delete a card and every learner's progress row of it (tombstones for all)."""
    card = await records.get_for_update(session, MemoCard, card_id, expected_version)
    now = utcnow()
    card.deleted_at = now
    progress = await scheduling.delete_progress(session, card_id, now)
    await records.save_and_enqueue(session, card, *progress)
    return card


async def approve_card(
    session: AsyncSession, card_id: int, *, expected_version: int | None = None
) -> MemoCard:
    """Reviewed and fit to publish. Approving an approved card changes nothing."""
    card = await records.get_for_update(session, MemoCard, card_id, expected_version)
    _refuse_retired(card, "approved")
    if records.assign(card, {"needs_review": False}):
        await records.save_and_enqueue(session, card)
    return card


async def send_card_to_review(
    session: AsyncSession, card_id: int, *, expected_version: int | None = None
) -> MemoCard:
    """Withdraw an approved card for another review: its publication becomes a tombstone."""
    card = await records.get_for_update(session, MemoCard, card_id, expected_version)
    _refuse_retired(card, "sent to review")
    if records.assign(card, {"needs_review": True}):
        await records.save_and_enqueue(session, card)
    return card


async def retire_card(
    session: AsyncSession, card_id: int, *, expected_version: int | None = None
) -> MemoCard:
    """Retire a card for good: a tombstone for it, and every learner's progress row of it
    moves to the terminal state ``retired`` (unscheduled). Retiring twice changes nothing."""
    card = await records.get_for_update(session, MemoCard, card_id, expected_version)
    if card.retired_at is not None:
        return card
    card.retired_at = utcnow()
    progress = await scheduling.retire_progress(session, card_id)
    await records.save_and_enqueue(session, card, *progress)
    return card


def _refuse_retired(card: MemoCard, verb: str) -> None:
    if card.retired_at is not None:
        raise Conflict(f"card {card.id} is retired and cannot be {verb}")


# ---------------------------------------------------------------- reads


async def get_topic(session: AsyncSession, topic_id: int) -> Topic:
    return await records.get_live(session, Topic, topic_id)


async def get_question(session: AsyncSession, question_id: int) -> Question:
    return await records.get_live(session, Question, question_id)


async def get_card(session: AsyncSession, card_id: int) -> MemoCard:
    return await records.get_live(session, MemoCard, card_id)


async def list_topics(
    session: AsyncSession, *, after_id: int = 0, limit: int = records.LIST_LIMIT
) -> Sequence[Topic]:
    """Live topics in id order after ``after_id`` (keyset paging)."""
    return await records.page(session, Topic, after_id=after_id, limit=limit)


async def list_questions(
    session: AsyncSession,
    *,
    after_id: int = 0,
    limit: int = records.LIST_LIMIT,
    topic_id: int | None = None,
) -> Sequence[Question]:
    where = None if topic_id is None else Question.topic_id == topic_id
    return await records.page(session, Question, after_id=after_id, limit=limit, where=where)


async def list_cards(
    session: AsyncSession,
    *,
    after_id: int = 0,
    limit: int = records.LIST_LIMIT,
    topic_id: int | None = None,
) -> Sequence[MemoCard]:
    where = None if topic_id is None else MemoCard.topic_id == topic_id
    return await records.page(session, MemoCard, after_id=after_id, limit=limit, where=where)


# ---------------------------------------------------------------- rules


async def _require_question_of(session: AsyncSession, question_id: int, topic_id: int) -> None:
    """A card may link only a live question of its own topic."""
    question = await records.require_live(session, Question, question_id, "question_id")
    if question.topic_id != topic_id:
        raise Conflict(
            f"question_id: question {question_id} belongs to topic {question.topic_id},"
            f" not to topic {topic_id}"
        )


def _explained(question: Question, changes: dict[str, Any]) -> bool:
    """Whether ``changes`` touch what an explanation explains (stem, choices, answer); moving
    the question to another topic does not."""
    return any(
        field in changes and changes[field] != getattr(question, field)
        for field in ("stem", "choices", "answer")
    )


def _choices(choices: Sequence[str]) -> list[str]:
    values = list(choices)
    if not MIN_CHOICES <= len(values) <= MAX_CHOICES:
        raise InvalidInput(
            f"choices has {len(values)} entries; between {MIN_CHOICES} and {MAX_CHOICES} allowed"
        )
    for index, choice in enumerate(values):
        records.text(f"choices[{index}]", choice, MAX_CHOICE)
    if len(set(values)) != len(values):
        raise InvalidInput("choices must be unique")
    return values


def _check_answer(choices: Sequence[str], answer: str, *, stored: bool = False) -> None:
    """The answer must be one of the choices. ``stored``: one of the two is the stored
    question's (a PATCH changing only the other), so the state refuses the request
    (:class:`Conflict`), not its input."""
    if answer in choices:
        return
    if stored:
        raise Conflict(f"answer {answer[:80]!r} is not one of the question's choices")
    raise InvalidInput(f"answer {answer[:80]!r} is not one of the choices")
