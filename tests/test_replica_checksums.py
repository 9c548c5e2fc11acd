"""Replicas that prove they are exact: at each catch-up the replica compares its own state
checksums with the feed's, reads again only the kinds that differ, never an exact replica,
and never in a loop. Against a live server, on SQLite and PostgreSQL."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine as create_sync_engine
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.models import FeedChecksum
from studypub.relay import Relay
from studypub.replica import Replica
from studypub.serving import running
from tests.support.cli import invoke_cli
from tests.support.content import write_content
from tests.support.http import make_app
from tests.support.state import live_view, replica_view

pytestmark = pytest.mark.timeout(90)


class CountingTransport(httpx.AsyncHTTPTransport):
    """Counts the feed pages asked for, per ``kinds`` parameter ("" for all)."""

    def __init__(self) -> None:
        super().__init__()
        self.pages: dict[str, int] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        kinds = request.url.params.get("kinds", "")
        self.pages[kinds] = self.pages.get(kinds, 0) + 1
        return await super().handle_async_request(request)


@pytest.fixture
async def server(engine: AsyncEngine) -> AsyncIterator[str]:
    await write_content(engine, topics=3, per_topic=4)
    await Relay(engine, listen=False).run_once()
    async with running(make_app(engine)) as url:
        yield url


def tamper(path: Path, sql: str) -> None:
    """Change the replica file behind the replica's back (a bug, a restored backup)."""
    engine = create_sync_engine(f"sqlite:///{path}")
    with engine.begin() as conn:
        conn.exec_driver_sql(sql)
    engine.dispose()


async def test_an_exact_replica_is_verified_and_never_read_again(
    engine: AsyncEngine, server: str, tmp_path: Path
) -> None:
    path = tmp_path / "r.db"
    async with Replica(path, server, limit=5) as replica:
        await replica.sync()
        assert (replica.stats.verified, replica.stats.repaired) == (1, [])
    transport = CountingTransport()
    async with Replica(path, server, limit=5, transport=transport) as replica:
        await replica.sync()
        assert (replica.stats.verified, replica.stats.repaired) == (1, [])
        assert replica.differences == []
    assert transport.pages == {"": 1}, "an exact replica at the head reads one page"


@pytest.mark.parametrize(
    ("change", "kind"),
    [
        # tampered: another hash (and payload) for one topic
        (
            "UPDATE replica_entries SET hash = 'ff' || substr(hash, 3) WHERE kind = 'topic' "
            "AND id = (SELECT min(id) FROM replica_entries WHERE kind = 'topic')",
            "topic",
        ),
        # missing: a card gone
        (
            "DELETE FROM replica_entries WHERE kind = 'card' "
            "AND id = (SELECT max(id) FROM replica_entries WHERE kind = 'card')",
            "card",
        ),
        # extra: a question the feed never had
        (
            "INSERT INTO replica_entries SELECT kind, id + 1000, version, schema_version, "
            "deleted, seq, hash, payload, published_at FROM replica_entries "
            "WHERE kind = 'question' LIMIT 1",
            "question",
        ),
    ],
    ids=["tampered", "missing", "extra"],
)
async def test_a_replica_that_differs_reads_that_kind_again_and_only_it(
    engine: AsyncEngine, server: str, tmp_path: Path, change: str, kind: str
) -> None:
    path = tmp_path / "r.db"
    async with Replica(path, server, limit=5) as replica:
        await replica.sync()
        cursor = await replica.cursor()
    tamper(path, change)
    transport = CountingTransport()
    async with Replica(path, server, limit=5, transport=transport) as replica:
        await replica.sync()
        assert replica.stats.repaired == [kind]
        assert [d.kind for d in replica.differences] == [kind]
        assert replica.unrepaired == []
        assert replica_view(await replica.state()) == await live_view(engine)
        assert await replica.cursor() == cursor
    assert set(transport.pages) == {"", kind}, "only the kind that differed is read again"
    assert transport.pages[""] == 2  # the page at the head, before and after the repair


async def test_a_difference_a_repair_cannot_cure_is_reported_not_looped(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    # The server's checksums are wrong (as if its relay had a bug): reading the kind again
    # cannot cure the difference. The replica says so, and does not read it again at once.
    await write_content(engine, topics=2, per_topic=2)
    await Relay(engine, listen=False).run_once()
    async with engine.begin() as conn:
        await conn.execute(
            update(FeedChecksum)
            .where(FeedChecksum.kind == "topic")
            .values(sum_hi=FeedChecksum.sum_hi + 1)
        )
    transport = CountingTransport()
    async with (
        running(make_app(engine)) as server,
        Replica(tmp_path / "r.db", server, transport=transport) as replica,
    ):
        await replica.sync()
        assert replica.stats.repaired == ["topic"]
        assert [d.kind for d in replica.unrepaired] == ["topic"]
        await replica.sync()
        await replica.sync()
        assert replica.stats.repaired == ["topic"], "no second repair inside the backoff"
    assert transport.pages["topic"] == 1


async def test_replicate_verify_exits_0_when_exact_and_1_with_what_differed(
    engine: AsyncEngine, server: str, tmp_path: Path
) -> None:
    path = tmp_path / "r.db"
    args = ("replicate", "--from", server, "--into", str(path), "--verify")
    code, output = await invoke_cli(*args)
    assert code == 0, output
    assert "verified: the replica equals the feed" in output
    tamper(path, "DELETE FROM replica_entries WHERE kind = 'explanation'")
    code, output = await invoke_cli(*args)
    assert code == 1, output
    assert "differed: explanation: 0 entries" in output
    code, output = await invoke_cli(*args)
    assert code == 0, output
    code, output = await invoke_cli(*args, "--follow")
    assert code == 1 and "leave out --follow" in output
