"""Dead outbox rows: the ones the relay gave up on (``dead_at`` set after ``max_attempts``
failures), for an operator to read, replay after fixing the cause, or drop.

Every operation is one set-based statement over the chosen rows (a listing adds its count),
whatever their number. A dead row is never claimed by a relay, so nothing here races the
apply transaction: a replay makes the rows due like fresh ones, and the relay's version
rules decide what they become (a row older than what was published since ends as *stale*).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from studypub import store
from studypub.errors import InvalidInput, NotFound
from studypub.feed import parse_kinds
from studypub.models import Outbox

DEFAULT_LIMIT = 50  # rows a listing shows when the operator does not say
MAX_LIMIT = 10_000

_outbox = Outbox.__table__


@dataclass(frozen=True, slots=True)
class Choice:
    """Which dead rows a replay or a drop acts on: those of ``kinds`` and among ``ids``
    (None: any), both at once when both are given. Made by :func:`choose`, which refuses an
    empty choice unless every dead row was asked for."""

    kinds: tuple[str, ...] | None = None
    ids: tuple[int, ...] | None = None


def choose(kinds: Sequence[str], ids: Sequence[int], *, every: bool) -> Choice:
    """The :class:`Choice` of the ``--kind``, ``--id`` and ``--all`` options, or
    :class:`InvalidInput` saying what is wrong. Nothing chosen is an error, never "all"."""
    if every and (kinds or ids):
        raise InvalidInput("--all chooses every dead row: give it alone, or --kind and --id")
    if not (every or kinds or ids):
        raise InvalidInput(
            "no dead rows chosen: give --kind KIND or --id ID (each repeatable; together,"
            " the rows matching both), or --all for every dead row"
        )
    for outbox_id in ids:
        check_id(outbox_id, option="--id")
    return Choice(kinds=check_kinds(kinds), ids=tuple(dict.fromkeys(ids)) or None)


def check_kinds(kinds: Sequence[str]) -> tuple[str, ...] | None:
    """The kinds filter (None: every kind), or :class:`InvalidInput` naming the allowed ones."""
    try:
        return parse_kinds(kinds)
    except InvalidInput as exc:
        # A dead row of a kind this release does not publish (from a newer writer) exists;
        # it is still chosen by its id.
        raise InvalidInput(f"{exc}; choose a dead row of another kind by --id") from None


def check_id(outbox_id: int, *, option: str) -> int:
    if outbox_id < 1:
        raise InvalidInput(f"invalid {option} {outbox_id}: outbox ids are positive")
    return outbox_id


def check_limit(limit: int) -> int:
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"invalid --limit {limit}: allowed 1..{MAX_LIMIT}")
    return limit


def _dead(kinds: Sequence[str] | None = None, ids: Sequence[int] | None = None) -> Any:
    """The condition of the dead rows of ``kinds`` among ``ids`` (None: any)."""
    condition: ColumnElement[bool] = _outbox.c.dead_at.is_not(None)
    if kinds is not None:
        condition &= _outbox.c.kind.in_(kinds)
    if ids is not None:
        condition &= _outbox.c.id.in_(ids)
    return condition


# ---------------------------------------------------------------- reading


@dataclass(frozen=True, slots=True)
class DeadRow:
    """One dead outbox row as a listing shows it; ``error`` is ``last_error`` in full."""

    id: int
    kind: str
    source_id: int
    source_version: int
    attempts: int
    dead_at: datetime
    error: str

    @property
    def first_line(self) -> str:
        """The error's first line (the relay stores one; a hand-made row may hold more)."""
        lines = self.error.strip().splitlines()
        return lines[0] if lines else ""


@dataclass(frozen=True, slots=True)
class DeadDetail(DeadRow):
    """The whole dead row: what a listing shows, the snapshot and when it was enqueued."""

    schema_version: int
    deleted: bool
    scope: str
    enqueued_at: datetime
    available_at: datetime
    payload_hash: str
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class DeadPage:
    """The first dead rows of a listing, oldest dead first, and how many match in all."""

    rows: list[DeadRow]
    total: int


_ROW_COLUMNS = (
    _outbox.c.id,
    _outbox.c.kind,
    _outbox.c.source_id,
    _outbox.c.source_version,
    _outbox.c.attempts,
    _outbox.c.dead_at,
    func.coalesce(_outbox.c.last_error, "").label("error"),
)


async def list_rows(
    session: AsyncSession, *, kinds: Sequence[str] | None = None, limit: int = DEFAULT_LIMIT
) -> DeadPage:
    """The dead rows of ``kinds`` (None: all), oldest dead first (the ``dead_at`` index), up
    to ``limit``, and how many there are. Read in one snapshot with a read session."""
    condition = _dead(kinds)
    query = (
        select(*_ROW_COLUMNS)
        .where(condition)
        .order_by(_outbox.c.dead_at, _outbox.c.id)
        .limit(limit)
    )
    rows = [DeadRow(**row._mapping) for row in (await session.execute(query)).all()]
    total = (
        await session.execute(select(func.count()).select_from(_outbox).where(condition))
    ).scalar_one()
    return DeadPage(rows=rows, total=int(total))


async def read_row(session: AsyncSession, outbox_id: int) -> DeadDetail:
    """The dead row ``outbox_id`` in full, or :class:`NotFound` saying why there is none."""
    query = select(
        *_ROW_COLUMNS,
        _outbox.c.schema_version,
        _outbox.c.deleted,
        _outbox.c.scope,
        _outbox.c.enqueued_at,
        _outbox.c.available_at,
        _outbox.c.payload_hash,
        _outbox.c.payload,
    ).where(_outbox.c.id == outbox_id)
    row = (await session.execute(query)).one_or_none()
    if row is None:
        raise NotFound(
            f"no outbox row {outbox_id}: published, dropped or never enqueued"
            " (`studypub dead list` shows the dead ones)"
        )
    if row.dead_at is None:
        raise NotFound(
            f"outbox row {outbox_id} is not dead: it waits for the relay"
            f" (attempts so far: {row.attempts})"
        )
    return DeadDetail(**row._mapping)


async def count(session: AsyncSession, choice: Choice) -> tuple[int, datetime | None]:
    """How many dead rows ``choice`` holds now, and the newest ``dead_at`` among them: what
    a drop asks the operator to confirm (see :func:`drop`)."""
    query = select(func.count(), func.max(_outbox.c.dead_at)).where(_dead(choice.kinds, choice.ids))
    n, newest = (await session.execute(query)).one()
    return int(n), newest


# ---------------------------------------------------------------- changing


@dataclass(frozen=True, slots=True)
class Changed:
    """What a replay or a drop did: how many dead rows, and which of the ids the operator
    named were not dead rows (published, dropped, still waiting, or never enqueued)."""

    rows: int
    not_dead: tuple[int, ...] = ()


async def replay(session: AsyncSession, choice: Choice, *, now: datetime) -> Changed:
    """Make the chosen dead rows due now, with a fresh round of attempts; the caller commits.

    ``last_error`` is kept: until the relay's next attempt it says why the row died (an
    attempt that fails again replaces it; one that succeeds deletes the row with it). The
    relays are woken on commit (PostgreSQL; a SQLite relay in another process polls).
    """
    replayed = (
        update(Outbox)
        .where(_dead(choice.kinds, choice.ids))
        .values(dead_at=None, attempts=0, available_at=now)
        .execution_options(synchronize_session=False)
    )
    changed = await _execute(session, replayed, choice)
    if changed.rows:
        await store.notify_relay(session)
    return changed


async def drop(
    session: AsyncSession, choice: Choice, *, dead_until: datetime | None = None
) -> Changed:
    """Delete the chosen dead rows; the caller commits. Their snapshots are never published.

    ``dead_until``: only rows dead since no later than this, the newest ``dead_at`` that
    :func:`count` showed the operator, so that a row dead-lettered (or replayed and dead
    again) while the operator read the prompt is not deleted unseen.
    """
    condition = _dead(choice.kinds, choice.ids)
    if dead_until is not None:
        condition &= _outbox.c.dead_at <= dead_until
    dropped = delete(Outbox).where(condition).execution_options(synchronize_session=False)
    return await _execute(session, dropped, choice)


async def _execute(session: AsyncSession, statement: Any, choice: Choice) -> Changed:
    if choice.ids is None:
        result: Any = await session.execute(statement)
        return Changed(rows=int(result.rowcount))
    # Named ids: the statement says which it changed, so that the others can be reported.
    done = set((await session.execute(statement.returning(Outbox.id))).scalars().all())
    return Changed(rows=len(done), not_dead=tuple(i for i in choice.ids if i not in done))
