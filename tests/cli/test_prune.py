"""``studypub prune`` on both databases: old tombstones go, the feed floor rises."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import feed
from studypub.db import read_session_factory
from studypub.models import Published, Topic, utcnow
from studypub.outbox import enqueue_changed
from studypub.relay import Relay
from tests.support.cli import invoke_cli
from tests.support.databases import url_of


async def test_prune_deletes_old_tombstones_and_raises_the_floor(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as s:
        topics = [Topic(title=f"t{i}") for i in range(3)]
        s.add_all(topics)
        await enqueue_changed(s, *topics)
        await s.commit()
        await Relay(engine).run_once()  # published first, so that the deletes are feed entries
        for topic in topics[:2]:
            topic.deleted_at = utcnow()
        await enqueue_changed(s, *topics[:2])
        await s.commit()
    await Relay(engine).run_once()
    async with sessions() as s:  # the first tombstone is 40 days old, the second is new
        await s.execute(
            update(Published)
            .where(Published.id == topics[0].id)
            .values(published_at=utcnow() - timedelta(days=40))
        )
        await s.commit()

    code, output = await invoke_cli(
        "prune", "--older-than", "30d", "--database-url", url_of(engine)
    )

    assert code == 0, output
    async with read_session_factory(engine)() as r:
        head = await feed.head(r)
        page = await feed.read_feed(r, "0", 10)
    assert f"pruned 1 tombstones; feed floor {head.floor}" in output
    assert head.floor > 0
    assert {(e["id"], e["deleted"]) for e in page.entries} == {
        (topics[1].id, True),
        (topics[2].id, False),
    }


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("30m", "retention 30m is too short: at least 1h"),
        ("0d", "retention 0s is too short: at least 1h"),
        ("-1d", "invalid duration '-1d': a number and a unit, m, h, d or w"),
        ("30", "invalid duration '30': a number and a unit, m, h, d or w"),
        ("1 fortnight", "invalid duration '1 fortnight'"),
    ],
)
async def test_prune_refuses_a_retention_under_an_hour_or_malformed(
    engine: AsyncEngine, value: str, message: str
) -> None:
    code, output = await invoke_cli(
        "prune", "--older-than", value, "--database-url", url_of(engine)
    )
    assert code == 1
    assert output.startswith(f"error: {message}"), output
    assert "\n" not in output.strip()


async def test_prune_accepts_hours_days_and_weeks(engine: AsyncEngine) -> None:
    for value in ("1h", "12h", "30d", "2w", "90m"):
        code, output = await invoke_cli(
            "prune", "--older-than", value, "--database-url", url_of(engine)
        )
        assert code == 0, output
        assert "pruned 0 tombstones; feed floor 0" in output
