"""``studypub db``: ``upgrade``, ``current`` and ``check`` on an empty database, and
``new-epoch``, which sends every consumer back to 0; on both databases."""

from __future__ import annotations

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import feed, migrate
from studypub.db import read_session_factory
from studypub.errors import ResetRequired
from studypub.models import Topic
from studypub.outbox import enqueue_changed
from studypub.relay import Relay
from tests.support.cli import cli, invoke_cli
from tests.support.databases import url_of


def test_db_check_fails_on_empty_database_and_passes_after_upgrade(fresh_url: str):
    before = cli("db", "check", "--database-url", fresh_url)
    assert before.exit_code == 1
    assert before.stderr.strip() == (
        f"error: the database has no studypub schema, this studypub needs "
        f"{migrate.head_revision()}: run `studypub db upgrade`"
    )
    assert cli("db", "current", "--database-url", fresh_url).stdout.startswith("none")

    upgrade = cli("db", "upgrade", "--database-url", fresh_url)
    assert upgrade.exit_code == 0, upgrade.output
    after = cli("db", "check", "--database-url", fresh_url)
    assert after.exit_code == 0, after.output
    assert after.stdout.strip() == f"database is up to date ({migrate.head_revision()})"
    current = cli("db", "current", "--database-url", fresh_url)
    assert current.stdout.strip() == migrate.head_revision()


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

    code, output = await invoke_cli("db", "new-epoch", "--yes", "--database-url", url_of(engine))

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
    code, _ = await invoke_cli("db", "new-epoch", "--database-url", url_of(engine), stdin="n\n")
    assert code == 1
    async with read_session_factory(engine)() as r:
        assert (await feed.head(r)).epoch == epoch
