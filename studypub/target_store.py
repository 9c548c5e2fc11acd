"""Every query backfill and verify run over a :class:`~studypub.targets.Target`.

Keyset pages of a target's source rows (``id > after_id ORDER BY id LIMIT n``, reading only
the columns projections read), its backfill checkpoint row, and the outbox and published keys
of an id range. None of them differs between the databases: SQLAlchemy Core throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Column, ColumnElement, Row, Table, delete, func, insert, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from studypub import checksums, store
from studypub.models import BackfillCheckpoint, FeedChecksum, Outbox, Published
from studypub.targets import Target

# What projections read; pages skip the rest (timestamps cost a conversion per row).
_NOT_PROJECTED = frozenset({"created_at", "updated_at", "explanation_error"})


def _projected(table: Table) -> list[Column[Any]]:
    return [column for column in table.c if column.name not in _NOT_PROJECTED]


# ---------------------------------------------------------------- source rows


async def read_sources(
    session: AsyncSession, target: Target, *, after_id: int, limit: int, eligible_only: bool
) -> Sequence[Row[Any]]:
    """The keyset page of ``target``'s source rows after ``after_id``, as projections read
    them: the eligible ones (a backfill page), or all of them, deleted ones too (verify)."""
    table = target.table
    query = select(*_projected(table)).where(table.c.id > after_id)
    if eligible_only:
        query = query.where(target.eligible)
    return (await session.execute(query.order_by(table.c.id).limit(limit))).all()


async def read_sources_by_id(
    session: AsyncSession, target: Target, ids: Sequence[int]
) -> dict[int, Row[Any]]:
    """``target``'s source rows of ``ids`` that still exist, as projections read them."""
    table = target.table
    query = select(*_projected(table)).where(table.c.id.in_(ids))
    return {row.id: row for row in (await session.execute(query)).all()}


async def read_source_versions(
    session: AsyncSession, target: Target, ids: Sequence[int]
) -> dict[int, int]:
    """The current version of each of ``ids`` that still exists."""
    table = target.table
    query = select(table.c.id, table.c.version).where(table.c.id.in_(ids))
    return {id_: version for id_, version in (await session.execute(query)).all()}


async def count_eligible(session: AsyncSession, target: Target, *, after_id: int) -> int:
    """How many rows a backfill of ``target`` has left after ``after_id``."""
    model = target.model
    query = select(func.count()).select_from(model).where(target.eligible, model.id > after_id)
    return int(await session.scalar(query) or 0)


# ---------------------------------------------------------------- verify: keys of an id range


def _in_range(column: Any, after_id: int, up_to: int | None) -> ColumnElement[bool]:
    low: ColumnElement[bool] = column > after_id
    return low if up_to is None else low & (column <= up_to)


async def read_waiting_keys(
    session: AsyncSession, kinds: Sequence[str], *, after_id: int, up_to: int | None
) -> set[tuple[str, int]]:
    """The (kind, id) keys with a live outbox row waiting, ids in ``(after_id, up_to]``
    (no upper bound when ``up_to`` is None)."""
    query = (
        select(Outbox.kind, Outbox.source_id)
        .where(
            Outbox.kind.in_(kinds),
            Outbox.dead_at.is_(None),
            _in_range(Outbox.source_id, after_id, up_to),
        )
        .distinct()
    )
    return {(kind, id_) for kind, id_ in (await session.execute(query)).all()}


async def read_published_keys(
    session: AsyncSession, kinds: Sequence[str], *, after_id: int, up_to: int | None
) -> dict[tuple[str, int], Any]:
    """The published rows of ``kinds`` with ids in ``(after_id, up_to]``, by (kind, id):
    ``version`` and ``schema_version`` are the newest the relay has seen (``latest_*``), with
    ``hash``, ``deleted`` and ``scope``."""
    query = select(
        Published.kind,
        Published.id,
        Published.latest_version.label("version"),
        Published.latest_schema_version.label("schema_version"),
        Published.hash,
        Published.deleted,
        Published.scope,
    ).where(Published.kind.in_(kinds), _in_range(Published.id, after_id, up_to))
    return {(row.kind, row.id): row for row in (await session.execute(query)).all()}


# ---------------------------------------------------------------- backfill checkpoints


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """Where the backfill of a target stands: the last id enqueued, the rows enqueued by
    this pass, and whether the pass finished."""

    last_id: int
    rows_done: int
    finished: bool


async def lock_checkpoint(session: AsyncSession, target: Target) -> Checkpoint | None:
    """The checkpoint of ``target``, locked until commit (PostgreSQL: ``FOR UPDATE``;
    SQLite: the write session's ``BEGIN IMMEDIATE``); None before the first run."""
    query = (
        select(
            BackfillCheckpoint.last_id,
            BackfillCheckpoint.rows_done,
            BackfillCheckpoint.finished_at,
        )
        .where(BackfillCheckpoint.target == target.name)
        .with_for_update()
    )
    row = (await session.execute(query)).one_or_none()
    if row is None:
        return None
    return Checkpoint(row.last_id, row.rows_done, finished=row.finished_at is not None)


async def start_checkpoint(
    session: AsyncSession, target: Target, *, now: datetime, exists: bool
) -> None:
    """Begin a new pass of ``target`` from its first row: reset its checkpoint, or create it
    (``exists=False``; a run that creates it concurrently makes this raise IntegrityError)."""
    fresh = {"last_id": 0, "rows_done": 0, "started_at": now, "updated_at": now}
    where = BackfillCheckpoint.target == target.name
    if exists:
        statement = update(BackfillCheckpoint).where(where).values(finished_at=None, **fresh)
        await session.execute(statement)
    else:
        await session.execute(insert(BackfillCheckpoint).values(target=target.name, **fresh))


async def advance_checkpoint(
    session: AsyncSession,
    target: Target,
    *,
    last_id: int,
    rows: int,
    finished: bool,
    now: datetime,
) -> None:
    """Record a page of ``rows`` source rows up to ``last_id``; ``finished`` ends the pass."""
    await session.execute(
        update(BackfillCheckpoint)
        .where(BackfillCheckpoint.target == target.name)
        .values(
            last_id=last_id,
            rows_done=BackfillCheckpoint.rows_done + rows,
            updated_at=now,
            finished_at=now if finished else None,
        )
    )


# ---------------------------------------------------------------- state checksums


async def read_checksum_rows(
    session: AsyncSession, kinds: Sequence[str]
) -> dict[tuple[str, str], checksums.State]:
    """The (kind, scope) rows the relay keeps for ``kinds``, with live entries (a row whose
    entries all went is left out, as a recount leaves it out)."""
    c = FeedChecksum.__table__.c
    query = select(c.kind, c.scope, c.entries, c.sum_hi, c.sum_lo).where(c.kind.in_(kinds))
    rows = (await session.execute(query)).all()
    return {(kind, scope): checksums.State(n, hi, lo) for kind, scope, n, hi, lo in rows if n}


async def recount_checksums(
    session: AsyncSession, kinds: Sequence[str]
) -> dict[tuple[str, str], checksums.State]:
    """The same from a full count of the live published rows of ``kinds`` (``verify``)."""
    p = Published.__table__.c
    query = (
        select(
            p.kind,
            p.scope,
            func.count(),
            func.sum(checksums.hi_of(p.hash)),
            func.sum(checksums.lo_of(p.hash)),
        )
        .where(p.kind.in_(kinds), p.deleted.is_(False))
        .group_by(p.kind, p.scope)
    )
    rows = (await session.execute(query)).all()
    return {
        (kind, scope): checksums.State(int(n), int(hi), int(lo)) for kind, scope, n, hi, lo in rows
    }


async def recount_checksums_locked(session: AsyncSession, kinds: Sequence[str]) -> bool:
    """Set the rows of ``kinds`` to a full recount, if they differ; whether they did.

    In a write session: the head row is locked first (PostgreSQL: FOR UPDATE; SQLite: the
    BEGIN IMMEDIATE writer lock), and every relay locks it before it moves a checksum, so no
    apply transaction runs between the recount and the write."""
    head = (await store.lock_head(session)).last_seq
    recounted = await recount_checksums(session, kinds)
    if await read_checksum_rows(session, kinds) == recounted:
        return False
    await session.execute(delete(FeedChecksum).where(FeedChecksum.kind.in_(kinds)))
    if recounted:
        await session.execute(
            insert(FeedChecksum),
            [
                {
                    "kind": kind,
                    "scope": scope,
                    "entries": state.entries,
                    "sum_hi": state.sum_hi,
                    "sum_lo": state.sum_lo,
                    # Above every seq handed out: every follower (the feed tail reads
                    # the rows changed after its last read) reads these again.
                    "changed_seq": head + 1,
                }
                for (kind, scope), state in recounted.items()
            ],
        )
    return True
