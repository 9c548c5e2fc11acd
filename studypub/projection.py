"""Projections: pure functions from a source row to the JSON payload of one kind.

A projection returns ``None`` when the row is not eligible for publication: that is the one
place where eligibility lives, and ``None`` becomes a tombstone. Payloads hold content only
(no ``version``, no ``updated_at``) so that a rewrite that changes nothing visible hashes the
same and the relay drops it as *unchanged*.

Projections accept any object with the right attributes: an ORM instance or a Core row.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

KIND_TOPIC = "topic"
KIND_QUESTION = "question"
KIND_EXPLANATION = "explanation"
KIND_CARD = "card"
KIND_CARD_PROGRESS = "card_progress"
KINDS: tuple[str, ...] = (
    KIND_TOPIC,
    KIND_QUESTION,
    KIND_EXPLANATION,
    KIND_CARD,
    KIND_CARD_PROGRESS,
)

# Bump when a payload's shape changes; a backfill then republishes (DESIGN "Backfill").
SCHEMA_VERSION = 1

TOMBSTONE: dict[str, Any] = {}

Payload = dict[str, Any]


# One encoder for every call: ``json.dumps`` with options builds a new one each time, and
# this runs once per outbox row on the backfill's hot path.
_CANONICAL = json.JSONEncoder(
    sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
)


def canonical_json(payload: Payload) -> str:
    """Sorted keys, no spaces, non-ASCII kept as is (hashed as UTF-8)."""
    return _CANONICAL.encode(payload)


def payload_hash(payload: Payload) -> str:
    """sha256 hex of the canonical JSON of ``payload``."""
    return hashlib.sha256(canonical_json(payload).encode("utf-8")).hexdigest()


def iso_utc(value: datetime | None) -> str | None:
    """ISO-8601 UTC with microseconds and ``Z``: one spelling in every process."""
    if value is None:
        return None
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    # isoformat is several times faster than strftime, same text (the feed formats every row).
    return value.isoformat(timespec="microseconds") + "Z"


def project_topic(topic: Any) -> Payload | None:
    if topic.deleted_at is not None:
        return None
    return {"id": topic.id, "title": topic.title, "description": topic.description}


def project_question(question: Any) -> Payload | None:
    if question.deleted_at is not None:
        return None
    return {
        "id": question.id,
        "topic_id": question.topic_id,
        "stem": question.stem,
        "choices": list(question.choices),
        "answer": question.answer,
    }


def project_explanation(question: Any) -> Payload | None:
    """The explanation of a question: published only while the question lives and it is ready."""
    if question.deleted_at is not None or question.explanation_status != "ready":
        return None
    return {"id": question.id, "question_id": question.id, "body": question.explanation}


def project_card(card: Any) -> Payload | None:
    """A memo card: published only when live, not retired and approved (``needs_review`` off)."""
    if card.deleted_at is not None or card.retired_at is not None or card.needs_review:
        return None
    return {
        "id": card.id,
        "topic_id": card.topic_id,
        "question_id": card.question_id,
        "front": card.front,
        "back": card.back,
    }


def project_card_progress(progress: Any) -> Payload | None:
    """Every progress row is published: never scheduled (``due_at`` null) and terminal too."""
    if progress.deleted_at is not None:
        return None
    return {
        "id": progress.id,
        "card_id": progress.card_id,
        "learner": progress.learner,
        "state": progress.state,
        "step": progress.step,
        "due_at": iso_utc(progress.due_at),
        "stability": progress.stability,
        "difficulty": progress.difficulty,
        "reps": progress.reps,
        "lapses": progress.lapses,
        "last_review_at": iso_utc(progress.last_review_at),
    }


# The scope of a published row: who may see it. Shared content is everyone's; a learner's
# progress row (tombstone included) is that learner's alone. Set from the source row, like
# eligibility, in one place.
SHARED = ""


def scope_of(kind: str, row: Any) -> str:
    """``SHARED``, or the learner whose row this is (``card_progress``)."""
    return str(row.learner) if kind == KIND_CARD_PROGRESS else SHARED


PROJECTORS: dict[str, Callable[[Any], Payload | None]] = {
    KIND_TOPIC: project_topic,
    KIND_QUESTION: project_question,
    KIND_EXPLANATION: project_explanation,
    KIND_CARD: project_card,
    KIND_CARD_PROGRESS: project_card_progress,
}
