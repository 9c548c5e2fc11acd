"""Scopes on published rows: set by the projection on every path that enqueues (authoring,
backfill, a repair's tombstone), and a scoped read is the full read filtered, in seq order."""

from __future__ import annotations

from sqlalchemy import delete, select
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import feed
from studypub.backfill import run_backfill
from studypub.db import read_session_factory
from studypub.models import CardProgress, Published
from studypub.projection import SHARED
from studypub.relay import Relay
from studypub.targets import TARGETS
from studypub.verify import verify
from tests.support.seed import seed_cards, seed_progress, seed_topics


async def scopes(engine: AsyncEngine) -> dict[tuple[str, int], str]:
    async with engine.connect() as conn:
        rows = await conn.execute(select(Published.kind, Published.id, Published.scope))
        return {(row.kind, row.id): row.scope for row in rows}


async def read_all(engine: AsyncEngine, scope: str | None) -> list[dict]:
    entries: list[dict] = []
    cursor = feed.START
    while True:
        async with read_session_factory(engine)() as session:
            page = await feed.read_feed(session, cursor, 3, scope=scope)
        entries += page.entries
        cursor = page.last_seq
        if not page.pending:
            return entries


async def test_backfill_and_repair_set_the_scope_and_scoped_reads_filter(
    migrated: AsyncEngine,
) -> None:
    engine = migrated
    await seed_topics(engine, [1])
    await seed_cards(engine, [1, 2])
    await seed_progress(engine, [1, 2, 3, 4])  # learner-1 .. learner-4
    await run_backfill(engine, TARGETS)
    relay = Relay(engine, listen=False)
    await relay.run_once()
    expected = {("card_progress", i): f"learner-{i}" for i in range(1, 5)}
    assert {k: s for k, s in (await scopes(engine)).items() if s != SHARED} == expected

    # A progress row deleted behind studypub's back: the repair's tombstone keeps its scope.
    async with engine.begin() as conn:
        await conn.execute(delete(CardProgress).where(CardProgress.id == 2))
    await verify(engine, TARGETS, repair=True)
    await relay.run_once()
    assert (await scopes(engine))[("card_progress", 2)] == "learner-2"

    everything = await read_all(engine, None)
    assert any(e["deleted"] for e in everything)
    for learner, own in (("learner-2", {2}), ("learner-3", {3}), ("nobody", set())):
        mine = await read_all(engine, learner)
        assert mine == [e for e in everything if e["kind"] != "card_progress" or e["id"] in own]
