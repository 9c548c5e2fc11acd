"""Helpers shared by the authoring and API tests: read and clear the outbox."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.models import Outbox

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
