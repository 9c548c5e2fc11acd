"""The outbox as the tests read it: its rows, emptying it, waiting for relays to drain it;
backfill pages and checkpoints."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from studypub import outbox as enqueue
from studypub.models import BackfillCheckpoint, Outbox
from studypub.targets import Target

OutboxKey = tuple[str, int, int, bool]


async def outbox_rows(engine: AsyncEngine) -> list[OutboxKey]:
    """(kind, source id, source version, deleted) of every outbox row, in insert order."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Outbox.kind, Outbox.source_id, Outbox.source_version, Outbox.deleted).order_by(
                Outbox.id
            )
        )
        return [(r.kind, r.source_id, r.source_version, bool(r.deleted)) for r in rows]


async def take_outbox(engine: AsyncEngine) -> list[OutboxKey]:
    """The outbox rows so far, then empty the outbox (so each step checks only its own)."""
    rows = await outbox_rows(engine)
    async with engine.begin() as conn:
        await conn.execute(delete(Outbox))
    return rows


async def read_outbox(engine: AsyncEngine) -> list[Any]:
    """Every outbox row, every column, in insert order."""
    async with engine.connect() as conn:
        return list((await conn.execute(select(Outbox.__table__).order_by(Outbox.id))).all())


async def outbox_counts(engine: AsyncEngine) -> Counter[tuple[str, int]]:
    """How many outbox rows each (kind, source id) has."""
    return Counter((row.kind, row.source_id) for row in await read_outbox(engine))


def exactly_once(ids: Iterable[int], kinds: Iterable[str]) -> Counter[tuple[str, int]]:
    """The ``outbox_counts`` of each of ``ids`` enqueued once for each of ``kinds``."""
    return Counter({(kind, i): 1 for i in ids for kind in kinds})


async def outbox_count(engine: AsyncEngine, *, dead: bool | None = None) -> int:
    """How many outbox rows there are (only the dead ones, or only the live ones)."""
    query = select(func.count()).select_from(Outbox)
    if dead is True:
        query = query.where(Outbox.dead_at.is_not(None))
    elif dead is False:
        query = query.where(Outbox.dead_at.is_(None))
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def drained(engine: AsyncEngine, timeout_s: float = 20.0) -> None:
    """Wait until the relay has processed every outbox row (the feed is up to date)."""
    deadline = time.monotonic() + timeout_s
    while (left := await outbox_count(engine)) != 0:
        assert time.monotonic() < deadline, f"the relay left {left} outbox rows"
        await asyncio.sleep(0.05)


# ---------------------------------------------------------------- backfill


async def backfill_page(session: AsyncSession, target: Target, **options: Any) -> tuple[int, int]:
    """Enqueue one keyset page of ``target`` without a checkpoint (the seed's
    ``backfill_publish_*``); returns (source rows read, last id read). The caller commits.
    ``options``: those of :func:`studypub.outbox.read_backfill_page`."""
    page = await enqueue.read_backfill_page(session, target, **options)
    await enqueue.insert_backfill_page(session, page)
    return page.rows, page.last_id


async def checkpoint(engine: AsyncEngine, target: str) -> Any:
    """The backfill checkpoint row of ``target``, or None."""
    async with engine.connect() as conn:
        return (
            await conn.execute(
                select(BackfillCheckpoint.__table__).where(BackfillCheckpoint.target == target)
            )
        ).one_or_none()


async def wait_for_rows_done(
    engine: AsyncEngine, target: str, rows: int, *, timeout_s: float = 60
) -> None:
    """Wait until a running backfill of ``target`` has committed ``rows`` rows."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        mark = await checkpoint(engine, target)
        if mark is not None and mark.rows_done >= rows:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the backfill of {target} did not reach {rows} rows in {timeout_s} s")
