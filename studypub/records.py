"""How the service layer reads, locks, checks and enqueues source rows.

Shared by :mod:`studypub.authoring` (content) and :mod:`studypub.scheduling` (learners' decks)
so that both follow the same rules: deleted rows do not exist, a row about to change is read
``FOR UPDATE`` and checked against the caller's version, a row a request refers to is
share-locked so that it cannot be deleted before the request commits, and every change is
enqueued through :func:`studypub.outbox.enqueue_changed` in the caller's transaction.

SQLite ignores ``FOR UPDATE`` / ``FOR SHARE``: its writers are serialized by
``BEGIN IMMEDIATE``, which gives the same guarantees.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeVar

from sqlalchemy import ColumnElement, func, select
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm.exc import StaleDataError

from studypub import outbox
from studypub.errors import InvalidInput, MissingReference, NotFound, StaleVersion
from studypub.models import CardProgress, MemoCard, Question, SourceMixin, Topic

LIST_LIMIT = 50  # rows per page of an authoring list, when the client does not say
MAX_LIST_LIMIT = 200

Row = TypeVar("Row", bound=SourceMixin)

_NAMES: dict[type[SourceMixin], str] = {
    Topic: "topic",
    Question: "question",
    MemoCard: "card",
    CardProgress: "progress",
}


def name_of(model: type[SourceMixin]) -> str:
    """The word users know a source table by (``card`` for ``memo_cards``)."""
    return _NAMES[model]


async def save_and_enqueue(session: AsyncSession, *rows: SourceMixin) -> None:
    """Flush ``rows`` and enqueue every kind they feed, in the caller's transaction (the
    relay publishes them once it commits)."""
    try:
        await outbox.enqueue_changed(session, *rows)
    except StaleDataError as exc:
        # version_id_col refused the UPDATE: the row changed after we read it. The row lock
        # of get_for_update makes this unreachable in practice; never let it pass as a 500.
        raise StaleVersion("the row changed concurrently; read it again and retry") from exc


async def get_live(
    session: AsyncSession, model: type[Row], row_id: int, *, share_lock: bool = False
) -> Row:
    """The row, unless unknown or deleted (:class:`NotFound`).

    ``share_lock``: keep it from changing until commit (for a row the write depends on).
    """
    statement = select(model).where(model.id == row_id, model.deleted_at.is_(None))
    if share_lock:
        statement = statement.with_for_update(read=True)
    row = await session.scalar(statement)
    if row is None:
        raise NotFound(f"{name_of(model)} {row_id} not found")
    return row


async def get_for_update(
    session: AsyncSession, model: type[Row], row_id: int, expected_version: int | None = None
) -> Row:
    """The live row, locked until commit and checked against ``expected_version``.

    The lock makes the version check and the write one step: a concurrent writer waits here,
    then sees the new version (and fails its own check if it sent one).
    """
    row = await session.scalar(
        select(model)
        .where(model.id == row_id, model.deleted_at.is_(None))
        .with_for_update()
        .execution_options(populate_existing=True)
    )
    if row is None:
        raise NotFound(f"{name_of(model)} {row_id} not found")
    check_version(row, expected_version)
    return row


def check_version(row: SourceMixin, expected_version: int | None) -> None:
    """Optimistic concurrency: :class:`StaleVersion` unless ``row`` is at the expected version."""
    if expected_version is not None and expected_version != row.version:
        raise StaleVersion(
            f"{name_of(type(row))} {row.id} is at version {row.version}, not {expected_version}",
            current_version=row.version,
        )


async def require_live(session: AsyncSession, model: type[Row], row_id: int, field: str) -> Row:
    """A row the request body refers to, share-locked until commit.

    Its delete takes ``FOR UPDATE`` and checks for live children, so it cannot slip in
    between this check and our commit. Missing or deleted: :class:`MissingReference` naming
    ``field`` (409: the body is well-formed, the state refuses it; not a 404, which would
    say the URL is wrong).
    """
    row = await session.scalar(
        select(model)
        .where(model.id == row_id, model.deleted_at.is_(None))
        .with_for_update(read=True)
    )
    if row is None:
        raise MissingReference(f"{field}: {name_of(model)} {row_id} does not exist or is deleted")
    return row


async def count_live(session: AsyncSession, model: type[Row], where: ColumnElement[bool]) -> int:
    statement = select(func.count()).select_from(model).where(where, model.deleted_at.is_(None))
    return int(await session.scalar(statement) or 0)


async def page(
    session: AsyncSession,
    model: type[Row],
    *,
    after_id: int,
    limit: int,
    where: ColumnElement[bool] | None = None,
) -> Sequence[Row]:
    """Live rows with ``id > after_id`` in id order (keyset paging: stable under writes)."""
    if not 1 <= limit <= MAX_LIST_LIMIT:
        raise InvalidInput(f"limit must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
    statement = select(model).where(model.id > after_id, model.deleted_at.is_(None))
    if where is not None:
        statement = statement.where(where)
    return (await session.scalars(statement.order_by(model.id).limit(limit))).all()


def assign(row: SourceMixin, changes: dict[str, Any]) -> bool:
    """Set the fields that differ. ``False`` when none does: no new version, no enqueue."""
    changed = False
    for field, value in changes.items():
        if getattr(row, field) != value:
            setattr(row, field, value)
            changed = True
    return changed


def text(field: str, value: str, max_length: int, *, blank: bool = False) -> str:
    """``value`` if within ``max_length`` (and not blank unless allowed), and storable: no
    NUL, which PostgreSQL cannot store in text or JSON, and no lone surrogate, which is not
    Unicode text (JSON can spell one, ``"\\ud800"``). Else InvalidInput."""
    if "\x00" in value:
        raise InvalidInput(f"{field} must not contain NUL (U+0000)")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidInput(f"{field} is not valid Unicode text (a lone surrogate)") from None
    if not blank and not value.strip():
        raise InvalidInput(f"{field} must not be blank")
    if len(value) > max_length:
        raise InvalidInput(f"{field} is {len(value)} characters long; at most {max_length} allowed")
    return value
