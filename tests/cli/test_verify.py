"""``studypub verify`` on both databases: its exit status says whether drift is left, and bad
input or an unmigrated database is a one-line error."""

from __future__ import annotations

import json

from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub.models import FeedChecksum, Topic
from studypub.relay import Relay
from tests.support.cli import invoke_cli
from tests.support.databases import url_of
from tests.support.writes import change_without_outbox, create_content, ids_of


async def test_exits_1_on_drift_and_0_once_repaired(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    url = url_of(engine)
    await create_content(sessions, 3)
    await Relay(engine).run_once()

    code, output = await invoke_cli("verify", "all", "--database-url", url)
    assert (code, "no drift in 15 keys checked" in output) == (0, True), output

    topic_id = (await ids_of(sessions, Topic))[1]
    await change_without_outbox(sessions, Topic, topic_id, title="quietly renamed")
    code, output = await invoke_cli("verify", "topics", "--page", "1", "--database-url", url)
    assert code == 1, output
    assert "drift in 1 of 3 keys checked (0 missing, 1 stale, 0 not eligible, 0 ahead)" in output

    code, output = await invoke_cli("verify", "all", "--repair", "--json", "--database-url", url)
    assert code == 0, output
    body = json.loads(output)
    assert (body["drift"], body["repaired"]) == (1, 1)
    assert body["kinds"][0]["examples"] == [{"id": 2, "drift": "stale"}]

    await Relay(engine).run_once()
    code, output = await invoke_cli("verify", "all", "--json", "--database-url", url)
    assert (code, json.loads(output)["drift"]) == (0, 0)


async def test_refuses_bad_input_and_an_unmigrated_database(fresh_url: str) -> None:
    code, output = await invoke_cli("verify", "quiz", "--database-url", fresh_url)
    assert code == 1
    assert "error: unknown verify target 'quiz'" in output
    code, output = await invoke_cli("verify", "all", "--page", "0", "--database-url", fresh_url)
    assert code == 1
    assert "error: page size 0 is out of range" in output
    code, output = await invoke_cli("verify", "all", "--database-url", fresh_url)
    assert code == 1
    assert "run `studypub db upgrade`" in output


async def test_checksums_that_drifted_exit_1_until_recounted(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    url = url_of(engine)
    await create_content(sessions, 2)
    await Relay(engine).run_once()
    async with engine.begin() as conn:
        await conn.execute(update(FeedChecksum).values(entries=FeedChecksum.entries + 1))
    code, output = await invoke_cli("verify", "questions", "--database-url", url)
    assert code == 1, output
    assert "state checksums of explanation, question differ from a recount" in output
    code, output = await invoke_cli("verify", "all", "--repair", "--json", "--database-url", url)
    body = json.loads(output)
    assert code == 0 and body["checksums_repaired"], output
    assert body["checksums_drifted"] == sorted(body["checksums_drifted"]) != []
    code, output = await invoke_cli("verify", "all", "--database-url", url)
    assert (code, "state checksums: equal to a recount" in output) == (0, True), output
