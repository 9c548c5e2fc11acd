"""Learners' decks: adding cards, reviews scheduled with FSRS, suspending.

Like :mod:`studypub.authoring`, every function works in the caller's session, never commits,
and enqueues the progress rows it changed. The ``fsrs`` library owns the algorithm; this
module maps a :class:`CardProgress` row onto an ``fsrs.Card`` and back. A row in state
``new`` has never been reviewed (``due_at`` NULL): it starts as a fresh FSRS card at its
first learning step. ``suspended`` and ``retired`` are terminal: never scheduled again.

Locks are taken in the order card, then progress row, everywhere (``retire_card`` holds the
card and updates the progress rows): the reverse order could deadlock with it.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fsrs import Card, Rating, Scheduler, State
from sqlalchemy import Select, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from studypub import records
from studypub.errors import Conflict, InvalidInput, NotFound
from studypub.models import CardProgress, MemoCard, ProgressState, utcnow

MAX_LEARNER = 128
LEARNER_PATTERN = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._@-]{{0,{MAX_LEARNER - 1}}}")


class ReviewRating(enum.StrEnum):
    """How well the learner recalled the card (the four FSRS grades)."""

    AGAIN = "again"
    HARD = "hard"
    GOOD = "good"
    EASY = "easy"


_FSRS_RATING: dict[ReviewRating, Rating] = {
    ReviewRating.AGAIN: Rating.Again,
    ReviewRating.HARD: Rating.Hard,
    ReviewRating.GOOD: Rating.Good,
    ReviewRating.EASY: Rating.Easy,
}
_FROM_FSRS_STATE: dict[State, ProgressState] = {
    State.Learning: ProgressState.LEARNING,
    State.Review: ProgressState.REVIEW,
    State.Relearning: ProgressState.RELEARNING,
}
_TO_FSRS_STATE: dict[ProgressState, State] = {
    state: fsrs_state for fsrs_state, state in _FROM_FSRS_STATE.items()
}

# Default FSRS parameters, 90 % desired retention, interval fuzzing on (spreads the load of
# cards learnt together over neighbouring days). The scheduler holds no per-card state.
SCHEDULER = Scheduler()


def apply_review(
    progress: CardProgress,
    rating: ReviewRating,
    reviewed_at: datetime,
    *,
    scheduler: Scheduler = SCHEDULER,
) -> None:
    """Move ``progress`` to its state after a review rated ``rating`` at ``reviewed_at``.

    Counts the review in ``reps``; a lapse is forgetting a card in review (rated *again*).
    The caller has checked that the row is not terminal.
    """
    before = ProgressState(progress.state)
    card = _to_fsrs(progress)
    after, _log = scheduler.review_card(card, _FSRS_RATING[rating], reviewed_at)
    progress.state = _FROM_FSRS_STATE[after.state].value
    progress.step = after.step
    progress.stability = after.stability
    progress.difficulty = after.difficulty
    progress.due_at = after.due
    progress.last_review_at = after.last_review
    progress.reps += 1
    if before is ProgressState.REVIEW and rating is ReviewRating.AGAIN:
        progress.lapses += 1


def _to_fsrs(progress: CardProgress) -> Card:
    state = ProgressState(progress.state)
    if state is ProgressState.NEW:
        # card_id given: without one fsrs derives it from the clock and sleeps 1 ms.
        return Card(card_id=progress.id, state=State.Learning, step=0)
    return Card(
        card_id=progress.id,
        state=_TO_FSRS_STATE[state],
        step=progress.step,
        stability=progress.stability,
        difficulty=progress.difficulty,
        due=progress.due_at,
        last_review=progress.last_review_at,
    )


# ---------------------------------------------------------------- learners' decks


async def get_progress(session: AsyncSession, card_id: int, learner: str) -> CardProgress:
    """One learner's progress on one card (:class:`NotFound` if the card is not in the deck)."""
    progress = await session.scalar(_progress_query(card_id, learner))
    if progress is None:
        raise NotFound(_not_in_deck(card_id, learner))
    return progress


async def add_card_to_deck(session: AsyncSession, card_id: int, learner: str) -> CardProgress:
    """Start ``learner`` on a card: state ``new``, never scheduled (``due_at`` NULL).

    Only an approved, unretired card can be added; adding it twice is a :class:`Conflict`.
    """
    learner = check_learner(learner)
    # Share-locks the card: a concurrent retire waits for us, then retires our row too.
    card = await records.get_live(session, MemoCard, card_id, share_lock=True)
    _require_studyable(card)
    if await session.scalar(_progress_query(card_id, learner)) is not None:
        raise Conflict(f"card {card_id} is already in learner {learner!r}'s deck")
    progress = CardProgress(card_id=card_id, learner=learner, state=ProgressState.NEW.value)
    session.add(progress)
    try:
        await records.save_and_enqueue(session, progress)
    except IntegrityError as exc:
        # Two adds raced past the check above; the unique (card_id, learner) key caught it.
        raise Conflict(f"card {card_id} is already in learner {learner!r}'s deck") from exc
    return progress


async def rate_card(
    session: AsyncSession,
    card_id: int,
    learner: str,
    rating: ReviewRating | str,
    reviewed_at: datetime | None = None,
    *,
    expected_version: int | None = None,
) -> CardProgress:
    """Record a review and schedule the next one with FSRS.

    The card must be approved and not retired, and the learner's row not terminal
    (:class:`Conflict` otherwise); ``reviewed_at`` (default: now) may not precede the last
    review, since FSRS measures the time elapsed since it. ``expected_version``: the progress
    row's version the learner's client saw (:class:`StaleVersion` if it has moved on), so that
    a review given on one device does not silently follow one given on another.
    """
    rating = _rating(rating)
    reviewed_at = _review_time(reviewed_at)
    # Lock order card -> progress, as in retire_card: the reverse could deadlock with it.
    card = await records.get_live(session, MemoCard, card_id, share_lock=True)
    progress = await _progress_for_update(session, card_id, learner)
    records.check_version(progress, expected_version)
    _require_studyable(card)
    if ProgressState(progress.state).terminal:
        raise Conflict(f"card {card_id} is {progress.state} in learner {learner!r}'s deck")
    if progress.last_review_at is not None and reviewed_at < progress.last_review_at:
        raise Conflict(
            f"reviewed_at {reviewed_at.isoformat()} is before the last review"
            f" ({progress.last_review_at.isoformat()})"
        )
    apply_review(progress, rating, reviewed_at)
    await records.save_and_enqueue(session, progress)
    return progress


async def suspend_card(session: AsyncSession, card_id: int, learner: str) -> CardProgress:
    """The learner sets the card aside for good: terminal ``suspended``, unscheduled.

    Suspending a suspended card changes nothing; a retired one cannot be suspended.
    """
    progress = await _progress_for_update(session, card_id, learner)
    if progress.state == ProgressState.RETIRED.value:
        raise Conflict(f"card {card_id} is retired; it cannot be suspended")
    if records.assign(
        progress, {"state": ProgressState.SUSPENDED.value, "step": None, "due_at": None}
    ):
        await records.save_and_enqueue(session, progress)
    return progress


async def retire_progress(session: AsyncSession, card_id: int) -> Sequence[CardProgress]:
    """Every learner's progress on a retired card: terminal ``retired``, unscheduled."""
    values = {"state": ProgressState.RETIRED.value, "step": None, "due_at": None}
    return await _update_progress_of(session, card_id, values)


async def delete_progress(
    session: AsyncSession, card_id: int, deleted_at: datetime
) -> Sequence[CardProgress]:
    """Every learner's progress on a deleted card is deleted with it."""
    return await _update_progress_of(session, card_id, {"deleted_at": deleted_at})


async def _update_progress_of(
    session: AsyncSession, card_id: int, values: dict[str, Any]
) -> Sequence[CardProgress]:
    """One UPDATE of every live progress row of a card (however many learners); returns the
    rows as updated, for the caller to enqueue. The caller holds the card's row lock.

    A bulk UPDATE bypasses ``version_id_col``, so the version is bumped here explicitly.
    """
    statement = (
        update(CardProgress)
        .where(CardProgress.card_id == card_id, CardProgress.deleted_at.is_(None))
        .values(**values, version=CardProgress.version + 1, updated_at=utcnow())
        .returning(CardProgress)
        .execution_options(populate_existing=True, synchronize_session=False)
    )
    return (await session.scalars(statement)).all()


def check_learner(learner: str) -> str:
    """Learner ids are opaque to studypub but must be short and URL-safe."""
    if not LEARNER_PATTERN.fullmatch(learner):
        raise InvalidInput(
            f"learner {learner[:80]!r} is not a valid id: 1 to {MAX_LEARNER} characters of"
            " letters, digits, '.', '_', '@', '-', starting with a letter or digit"
        )
    return learner


def _progress_query(card_id: int, learner: str) -> Select[CardProgress]:
    return select(CardProgress).where(
        CardProgress.card_id == card_id,
        CardProgress.learner == learner,
        CardProgress.deleted_at.is_(None),
    )


async def _progress_for_update(session: AsyncSession, card_id: int, learner: str) -> CardProgress:
    statement = (
        _progress_query(card_id, learner)
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    progress = await session.scalar(statement)
    if progress is None:
        raise NotFound(_not_in_deck(card_id, learner))
    return progress


def _require_studyable(card: MemoCard) -> None:
    if card.retired_at is not None:
        raise Conflict(f"card {card.id} is retired")
    if card.needs_review:
        raise Conflict(f"card {card.id} is not approved (it is in review)")


def _not_in_deck(card_id: int, learner: str) -> str:
    return f"card {card_id} is not in learner {learner!r}'s deck"


def _rating(rating: ReviewRating | str) -> ReviewRating:
    try:
        return ReviewRating(rating)
    except ValueError:
        allowed = ", ".join(r.value for r in ReviewRating)
        raise InvalidInput(f"rating {rating!r} is not one of: {allowed}") from None


def _review_time(reviewed_at: datetime | None) -> datetime:
    if reviewed_at is None:
        return utcnow()
    if reviewed_at.tzinfo is None:
        raise InvalidInput("reviewed_at needs a time zone (e.g. 2026-01-31T08:00:00Z)")
    return reviewed_at.astimezone(UTC)
