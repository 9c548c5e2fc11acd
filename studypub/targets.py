"""What a backfill or a verify walks: a :class:`Target`, one source table in id order.

A target names the table as users type it (``card-progress`` or ``card_progress``), the rows
a backfill enqueues (the seed's filters: live topics and questions, approved live cards, *all*
card progress rows) and the kinds each row feeds. Which payload each kind gets, or whether
it gets a tombstone, is the projections' business alone.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import ColumnElement, Table, true

from studypub.errors import InvalidInput
from studypub.models import CardProgress, MemoCard, Question, SourceMixin, Topic
from studypub.projection import (
    KIND_CARD,
    KIND_CARD_PROGRESS,
    KIND_EXPLANATION,
    KIND_QUESTION,
    KIND_TOPIC,
)

ALL = "all"
# Source rows per page: one transaction each (backfill), three set-based reads each (verify).
MIN_PAGE = 1
MAX_PAGE = 50_000
DEFAULT_PAGE = 5000


@dataclass(frozen=True, eq=False)
class Target:
    """One source table as backfill and verify walk it.

    ``eligible``: the rows a backfill enqueues (verify reads them all, deleted ones too).
    ``kinds``: what each row feeds; a question row publishes a question and its explanation.
    """

    name: str
    model: type[SourceMixin]
    eligible: ColumnElement[bool]
    kinds: tuple[str, ...]

    @property
    def table(self) -> Table:
        return self.model.__table__  # type: ignore[attr-defined,no-any-return]

    @property
    def label(self) -> str:
        """The name as the CLI spells it (``card-progress``)."""
        return self.name.replace("_", "-")


TOPICS = Target("topics", Topic, Topic.deleted_at.is_(None), (KIND_TOPIC,))
QUESTIONS = Target(
    "questions", Question, Question.deleted_at.is_(None), (KIND_QUESTION, KIND_EXPLANATION)
)
CARDS = Target(
    "cards",
    MemoCard,
    MemoCard.deleted_at.is_(None)
    & MemoCard.needs_review.is_(False)
    & MemoCard.retired_at.is_(None),
    (KIND_CARD,),
)
# Every progress row, never-scheduled (due_at NULL) and terminal ones included.
CARD_PROGRESS = Target("card_progress", CardProgress, true(), (KIND_CARD_PROGRESS,))

TARGETS: tuple[Target, ...] = (TOPICS, QUESTIONS, CARDS, CARD_PROGRESS)
# The kinds a changed source row feeds, for enqueue: the one table of kinds per source.
KINDS_OF: dict[type[SourceMixin], tuple[str, ...]] = {t.model: t.kinds for t in TARGETS}
_BY_NAME = {t.name: t for t in TARGETS}


def parse_targets(name: str, *, command: str) -> tuple[Target, ...]:
    """``all`` (every target, in order) or one target; ``-`` and ``_`` are the same.

    ``command`` names what the user ran, in the message of :class:`InvalidInput`.
    """
    key = name.strip().lower().replace("-", "_")
    if key == ALL:
        return TARGETS
    if key in _BY_NAME:
        return (_BY_NAME[key],)
    allowed = ", ".join([*(t.label for t in TARGETS), ALL])
    raise InvalidInput(f"unknown {command} target {name!r}: choose one of {allowed}")


def check_page(page: int) -> int:
    """``page`` if it is an allowed page size, else :class:`InvalidInput` saying which are."""
    if not MIN_PAGE <= page <= MAX_PAGE:
        raise InvalidInput(
            f"page size {page} is out of range: choose a page of {MIN_PAGE} to {MAX_PAGE:,} rows"
        )
    return page
