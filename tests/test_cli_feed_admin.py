"""Feed administration commands on both databases: `prune` and `db new-epoch`."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from backfill_helpers import fresh_url, invoke_cli, migrated
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from studypub import feed
from studypub.cli import app
from studypub.db import read_session_factory, session_factory
from studypub.errors import ResetRequired
from studypub.models import Published, Topic, utcnow
from studypub.outbox import enqueue_changed
from studypub.relay import Relay

__all__ = ["fresh_url", "migrated"]


@pytest.fixture
def engine(migrated: AsyncEngine) -> AsyncEngine:
    return migrated


@pytest.fixture
def sessions(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return session_factory(engine)


def _url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=False)


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

    code, output = await invoke_cli("prune", "--older-than", "30d", "--database-url", _url(engine))

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
    code, output = await invoke_cli("prune", "--older-than", value, "--database-url", _url(engine))
    assert code == 1
    assert output.startswith(f"error: {message}"), output
    assert "\n" not in output.strip()


async def test_prune_accepts_hours_days_and_weeks(engine: AsyncEngine) -> None:
    for value in ("1h", "12h", "30d", "2w", "90m"):
        code, output = await invoke_cli(
            "prune", "--older-than", value, "--database-url", _url(engine)
        )
        assert code == 0, output
        assert "pruned 0 tombstones; feed floor 0" in output


async def test_new_epoch_sends_every_consumer_back_to_zero(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with sessions() as s:
        topic = Topic(title="kept")
        s.add(topic)
        await enqueue_changed(s, topic)
        await s.commit()
    await Relay(engine).run_once()
    async with read_session_factory(engine)() as r:
        before = await feed.read_feed(r, "0", 10)

    code, output = await invoke_cli("db", "new-epoch", "--yes", "--database-url", _url(engine))

    assert code == 0, output
    async with read_session_factory(engine)() as r:
        epoch = (await feed.head(r)).epoch
        assert f"feed epoch is now {epoch}" in output
        with pytest.raises(ResetRequired, match="reset required"):
            await feed.read_feed(r, before.last_seq, 10)
        again = await feed.read_feed(r, "0", 10)
    assert [e["id"] for e in again.entries] == [topic.id]
    assert again.last_seq == f"{epoch}:{before.entries[-1]['seq']}"


async def test_new_epoch_asks_first(engine: AsyncEngine) -> None:
    async with read_session_factory(engine)() as r:
        epoch = (await feed.head(r)).epoch
    result = await asyncio.to_thread(
        CliRunner().invoke, app, ["db", "new-epoch", "--database-url", _url(engine)], input="n\n"
    )
    assert result.exit_code == 1
    async with read_session_factory(engine)() as r:
        assert (await feed.head(r)).epoch == epoch
