"""Every query the relay and the feed run, and the one seam where PostgreSQL and SQLite differ.

Callers (``relay.py``, ``feed.py``, the CLI) call verb-first functions and never build SQL.
Hot paths are set-based: a relay batch is a handful of statements whatever its size, and a
feed page is one indexed range scan on ``published.seq``. Lists are passed to PostgreSQL as
arrays (``unnest``) and to SQLite as one JSON text (``json_each``), so each statement keeps
the same text, and its cached plan, whatever the batch size.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from studypub.db import dialect_of
from studypub.models import FeedHead, Published

PG = "postgresql"


def _is_pg(session: AsyncSession) -> bool:
    return dialect_of(session) == PG


# ---------------------------------------------------------------- feed head


@dataclass(frozen=True, slots=True)
class Head:
    """The feed's counter row: its ``epoch``, the highest ``seq`` given, and the ``floor``.

    ``floor``: every seq <= floor may be gone (pruned tombstones); a consumer whose cursor is
    below the floor may have missed a deletion and must start again from 0.
    """

    epoch: str
    last_seq: int
    floor: int


async def read_head(session: AsyncSession) -> Head:
    row = (
        await session.execute(
            select(FeedHead.epoch, FeedHead.last_seq, FeedHead.floor).where(FeedHead.id == 1)
        )
    ).one_or_none()
    if row is None:
        raise LookupError("the feed_head row is missing: the database was not migrated")
    return Head(epoch=row.epoch, last_seq=row.last_seq, floor=row.floor)


# ---------------------------------------------------------------- feed reads

_published = Published.__table__

_FEED_COLUMNS = (
    _published.c.seq,
    _published.c.kind,
    _published.c.id,
    _published.c.version,
    _published.c.schema_version,
    _published.c.deleted,
    _published.c.hash,
    _published.c.payload,
    _published.c.published_at,
)


async def read_entries(
    session: AsyncSession, *, after_seq: int, limit: int, kinds: Sequence[str] | None
) -> Sequence[Any]:
    """Published rows with ``seq > after_seq`` in seq order: a range scan of the seq index.

    Rows with a NULL seq (silent tombstones) never match ``seq > n``.
    """
    query = select(*_FEED_COLUMNS).where(_published.c.seq > after_seq)
    if kinds is not None:
        query = query.where(_published.c.kind.in_(kinds))
    query = query.order_by(_published.c.seq).limit(limit)
    return (await session.execute(query)).all()


async def read_entry(session: AsyncSession, *, kind: str, id: int) -> Any | None:
    """The feed entry of one (kind, id), tombstones included; None if never published."""
    query = select(*_FEED_COLUMNS).where(_published.c.kind == kind, _published.c.id == id)
    return (await session.execute(query)).one_or_none()


async def count_entries(
    session: AsyncSession, *, after_seq: int, kinds: Sequence[str] | None
) -> int:
    """How many feed entries have ``seq > after_seq`` (an index-only count)."""
    query = select(func.count()).select_from(_published).where(_published.c.seq > after_seq)
    if kinds is not None:
        query = query.where(_published.c.kind.in_(kinds))
    return int((await session.execute(query)).scalar_one())


async def prune_tombstones(
    session: AsyncSession, *, published_before: datetime | None, up_to_seq: int | None
) -> tuple[int, int]:
    """Delete tombstones published before a time and/or up to a seq; raise the floor.

    Returns (tombstones deleted, new floor). The floor becomes the highest pruned seq, so
    that every seq <= floor may be gone and a cursor below it is refused.
    """
    # Lock the head row first. A relay writes published rows only after it has locked the
    # head, so holding it here means no relay holds a published row we are about to delete
    # (no lock cycle), and no new tombstone can appear under our condition meanwhile.
    # (SQLite: the write session's BEGIN IMMEDIATE already excludes every other writer.)
    head_query = select(FeedHead.floor).where(FeedHead.id == 1)
    if _is_pg(session):
        head_query = head_query.with_for_update()
    floor = int((await session.execute(head_query)).scalar_one())
    condition: ColumnElement[bool] = _published.c.deleted.is_(True)
    if published_before is not None:
        condition &= _published.c.published_at < published_before
    if up_to_seq is not None:
        condition &= _published.c.seq <= up_to_seq
    count, top = (
        await session.execute(select(func.count(), func.max(_published.c.seq)).where(condition))
    ).one()
    if not count:
        return 0, floor
    await session.execute(delete(Published).where(condition))
    if top is not None and top > floor:
        floor = int(top)
        await session.execute(update(FeedHead).where(FeedHead.id == 1).values(floor=floor))
    return int(count), floor
