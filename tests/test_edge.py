"""Edge feed servers, on both databases against a real NATS server: an origin (with its relay),
the bridge, and an edge server, each a real HTTP server. The edge serves the origin's feed
(pages, checksums, scopes, items), a client moves between them mid-feed and gets every entry
once, and an epoch change and a prune reach the edge's clients as a 410."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import feed
from studypub.api import create_edge_app
from studypub.db import session_factory
from studypub.models import utcnow
from studypub.relay import Relay
from studypub.replica import Replica
from studypub.serving import running
from studypub.settings import Settings
from tests.support.cli import cli, run_studypub
from tests.support.content import write_content
from tests.support.http import (
    AUTH,
    AUTHOR_TOKEN,
    TOKEN_SECRET,
    VIEWER_TOKEN,
    bearer,
    create_card,
    create_topic,
    fast_relay,
    make_app,
    sse_events,
)
from tests.support.nats import NATS_URL, bridging, nats_server, own_prefix
from tests.support.outbox import drained
from tests.support.state import replica_view, view_of

pytestmark = pytest.mark.timeout(120)

SERVICE = bearer(VIEWER_TOKEN)
LEARNERS = ("learner-1", "learner-2")


@dataclass
class Servers:
    engine: AsyncEngine
    author: httpx.AsyncClient  # the origin, with the author token
    origin: httpx.AsyncClient  # the origin, with the service token
    edge: httpx.AsyncClient  # the edge, with the service token
    prefix: str  # of the stream and bucket


def edge_settings() -> Settings:
    """The origin's tokens: the edge must accept what the origin issues."""
    return Settings(author_token=AUTHOR_TOKEN, viewer_token=VIEWER_TOKEN, token_secret=TOKEN_SECRET)


@contextlib.asynccontextmanager
async def edge_server(prefix: str, nats_url: str = NATS_URL) -> AsyncIterator[str]:
    async with running(create_edge_app(nats_url, edge_settings(), prefix=prefix)) as url:
        yield url


@contextlib.asynccontextmanager
async def origin_bridge_edge(
    engine: AsyncEngine, prefix: str, nats_url: str = NATS_URL
) -> AsyncIterator[Servers]:
    """Origin, bridge and edge running; content with two learners' progress published."""
    async with (
        running(make_app(engine, viewer_token=VIEWER_TOKEN), relay=fast_relay(engine)) as origin,
        bridging(engine, prefix, nats_url),
        edge_server(prefix, nats_url) as edge,
        httpx.AsyncClient(base_url=origin, headers=AUTH, timeout=10) as author,
        httpx.AsyncClient(base_url=origin, headers=SERVICE, timeout=10) as origin_client,
        httpx.AsyncClient(base_url=edge, headers=SERVICE, timeout=10) as edge_client,
    ):
        topic = await create_topic(author)
        for _ in range(3):
            card = await create_card(author, topic["id"], approve=True)
            for learner in LEARNERS:
                added = await author.post(f"/v1/learners/{learner}/cards/{card['id']}")
                assert added.status_code == 201, added.text
        servers = Servers(engine, author, origin_client, edge_client, prefix)
        await in_step(servers)
        yield servers


@pytest.fixture
async def servers(migrated: AsyncEngine) -> AsyncIterator[Servers]:
    async with own_prefix() as prefix, origin_bridge_edge(migrated, prefix) as servers:
        yield servers


async def read_all(
    client: httpx.AsyncClient, since: str = feed.START, **headers: str
) -> tuple[list[dict[str, Any]], str, Any]:
    """Page from ``since`` to the head: (entries, last cursor, the head page's checksums)."""
    entries: list[dict[str, Any]] = []
    while True:
        response = await client.get(
            "/v1/feed", params={"since": since, "limit": 4}, headers=headers
        )
        assert response.status_code == 200, response.text
        page = response.json()
        entries += page["results"]
        since = page["last_seq"]
        if not page["pending"]:
            return entries, since, page.get("checksums")


async def in_step(servers: Servers, timeout_s: float = 20) -> None:
    """Wait until everything written is published, and the edge serves the origin's feed."""
    await drained(servers.engine)
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        origin = await read_all(servers.origin)
        edge = await servers.edge.get("/v1/feed", params={"since": feed.START, "limit": 1000})
        if edge.status_code == 200 and (await read_all(servers.edge)) == origin:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"the edge did not catch up: {edge.status_code} {edge.text}")
        await asyncio.sleep(0.05)


async def test_an_edge_bootstrap_equals_the_origins(servers: Servers) -> None:
    entries, _, checksums = await read_all(servers.edge)
    assert (entries, checksums) == (await read_all(servers.origin))[::2]
    kinds = {entry["kind"] for entry in entries}
    assert {"topic", "card", "card_progress"} <= kinds and set(checksums) == kinds
    # A learner reads the shared entries and its own progress, on the edge as on the origin.
    token = await servers.author.post("/v1/viewer-tokens", json={"learner": LEARNERS[0]})
    mine = bearer(token.json()["token"])
    on_edge = await read_all(servers.edge, **mine)
    assert on_edge == await read_all(servers.origin, **mine)
    progress = [e for e in on_edge[0] if e["kind"] == "card_progress"]
    assert len(progress) == 3 and all(e["payload"]["learner"] == LEARNERS[0] for e in progress)
    # Single items: the same entry and ETag; another learner's is unknown, like a deleted one.
    other = next(e for e in entries if e["kind"] == "card_progress" and e not in progress)
    for path in ("/v1/items/topic/1", f"/v1/items/card_progress/{other['id']}"):
        at_origin, at_edge = await servers.origin.get(path), await servers.edge.get(path)
        assert at_edge.status_code == at_origin.status_code == 200
        assert at_edge.json() == at_origin.json()
        assert at_edge.headers["etag"] == at_origin.headers["etag"]
    hidden = await servers.edge.get(f"/v1/items/card_progress/{other['id']}", headers=mine)
    assert hidden.status_code == 404, hidden.text
    deleted = await servers.author.delete("/v1/cards/3")
    assert deleted.status_code == 204, deleted.text
    await in_step(servers)
    for client in (servers.origin, servers.edge):
        assert (await client.get("/v1/items/card/3")).status_code == 404


async def test_a_client_switching_between_origin_and_edge_gets_every_entry_once(
    servers: Servers,
) -> None:
    seen: list[dict[str, Any]] = []
    cursor, clients = feed.START, (servers.origin, servers.edge)
    for turn in range(12):
        if turn % 3 == 1:  # written while the client reads
            await create_topic(servers.author, f"Written at {turn}")
        response = await clients[turn % 2].get(
            "/v1/feed", params={"since": cursor, "limit": 3, "wait": 1}
        )
        assert response.status_code == 200, response.text
        page = response.json()
        seen += page["results"]
        cursor = page["last_seq"]
    await in_step(servers)
    while True:  # the rest, alternating still
        page = (await clients[len(seen) % 2].get("/v1/feed", params={"since": cursor})).json()
        seen += page["results"]
        cursor = page["last_seq"]
        if not page["pending"]:
            break
    seqs = [entry["seq"] for entry in seen]
    assert seqs == sorted(set(seqs)), "an entry twice, or out of order"
    latest = {(e["kind"], e["id"]): e for e in seen}
    expected, _, _ = await read_all(servers.origin)
    assert {k: e for k, e in latest.items() if not e["deleted"]} == {
        (e["kind"], e["id"]): e for e in expected if not e["deleted"]
    }
    # Ahead of the edge: a client that read the origin to a write the edge has not received
    # yet waits on the edge for the next entry (no reset, no entry twice).
    await create_topic(servers.author, "Read first on the origin")
    await in_step(servers)
    _, head, _ = await read_all(servers.origin)
    waiting = asyncio.create_task(servers.edge.get("/v1/feed", params={"since": head, "wait": 10}))
    await create_topic(servers.author, "Then on the edge")
    page = (await waiting).json()
    assert [e["payload"]["title"] for e in page["results"]] == ["Then on the edge"]


async def edge_answers(client: httpx.AsyncClient, since: str, status: int) -> httpx.Response:
    """Poll the edge until a page after ``since`` has ``status``."""
    for _ in range(200):
        response = await client.get("/v1/feed", params={"since": since})
        if response.status_code == status:
            return response
        await asyncio.sleep(0.05)
    raise AssertionError(f"the edge kept answering {response.status_code}: {response.text}")


async def first_event(client: httpx.AsyncClient, since: str, event: str) -> Any:
    """Open a stream on ``client`` after ``since``; the first event named ``event``."""
    async with client.stream("GET", "/v1/feed/stream", params={"since": since}) as response:
        assert response.status_code == 200
        async for item in sse_events(response):
            if not isinstance(item, str) and item.event == event:
                return item
    raise AssertionError(f"the stream ended without an {event!r} event")


async def test_an_epoch_change_and_a_prune_reach_edge_clients_as_a_reset(
    servers: Servers,
) -> None:
    engine, edge = servers.engine, servers.edge
    _, before, _ = await read_all(edge)
    deleted = await servers.author.delete("/v1/cards/2")
    assert deleted.status_code == 204, deleted.text
    await in_step(servers)
    # The tombstone pruned: the floor rises above `before`, which now needs a reset.
    async with session_factory(engine)() as session, session.begin():
        pruned = await feed.prune_tombstones(
            session, older_than=timedelta(hours=1), now=utcnow() + timedelta(hours=2)
        )
    assert pruned >= 1
    refused = await edge_answers(edge, before, 410)
    assert refused.json()["error"] == "reset_required"
    reset = await asyncio.wait_for(first_event(edge, before, "reset"), 10)
    assert reset.json()["error"] == "reset_required"
    await in_step(servers)  # and the bootstrap after the reset is the origin's again
    # A new epoch (a restored database): a stream following on the edge is told to reset.
    _, head, _ = await read_all(edge)
    following = asyncio.create_task(first_event(edge, head, "reset"))
    await asyncio.sleep(0.3)
    async with session_factory(engine)() as session, session.begin():
        await feed.start_new_epoch(session)
    reset = await asyncio.wait_for(following, 20)
    assert "epoch" in reset.json()["detail"]
    assert (await edge_answers(edge, head, 410)).json()["error"] == "reset_required"
    await in_step(servers)


async def test_an_edge_with_nothing_published_answers_503_with_a_retry_hint(
    migrated: AsyncEngine,
) -> None:
    async with (
        own_prefix() as prefix,
        edge_server(prefix) as url,
        httpx.AsyncClient(base_url=url, headers=SERVICE, timeout=10) as client,
    ):
        response = await client.get("/v1/feed")
        assert response.status_code == 503, response.text
        assert response.json()["error"] == "feed_unavailable"
        assert response.headers["retry-after"] == "2"
        assert response.headers["cache-control"] == "no-store"
        stream = await client.get("/v1/feed/stream")
        assert stream.status_code == 200 and "retry: 2000" in stream.text
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["detail"] == {"feed": "nothing published to NATS yet"}
        # Then a bridge publishes, and the same edge serves the feed (it waited for it).
        await create_feed_and_bridge(migrated, prefix, client)


async def create_feed_and_bridge(
    engine: AsyncEngine, prefix: str, client: httpx.AsyncClient
) -> None:
    await write_content(engine, topics=1, per_topic=1)
    await Relay(engine, listen=False).run_once()
    async with bridging(engine, prefix):
        response = await edge_answers(client, feed.START, 200)
        assert response.json()["results"]
        assert (await client.get("/readyz")).json() == {"status": "ready", "checks": {"feed": "ok"}}


async def test_a_replica_reads_the_stream_directly_and_resumes(
    servers: Servers, tmp_path: Path
) -> None:
    """``studypub replicate --from nats://``: the origin's state, checksums verified; then a
    write, and the replica resumes from its cursor."""
    prefix = servers.prefix
    into = tmp_path / "replica.db"
    args = ("replicate", "--from", NATS_URL, "--prefix", prefix, "--into", str(into))
    done = await asyncio.to_thread(run_studypub, *args, "--verify")
    assert done.returncode == 0, done.stderr + done.stdout
    assert "verified: the replica equals the feed" in done.stdout
    expected = view_of(e for e in (await read_all(servers.origin))[0] if not e["deleted"])
    async with Replica(into, NATS_URL, prefix=prefix) as replica:
        assert replica_view(await replica.state()) == expected
        cursor = await replica.cursor()
    await create_topic(servers.author, "After the first copy")
    await in_step(servers)
    async with Replica(into, NATS_URL, prefix=prefix) as replica:
        await replica.sync()
        assert replica.stats.entries == 1, "only what follows the stored cursor"
        assert await replica.cursor() != cursor
        _, _, checksums = await read_all(servers.origin)
        assert replica.stats.verified == 1 and not replica.differences
        assert set(checksums) == {kind for kind, _ in await replica.state()}


def test_replicate_and_serve_refuse_unusable_nats_options() -> None:
    refused = cli("replicate", "--from", "ftp://x", "--into", "r.db")
    assert refused.exit_code == 1 and "neither an http(s) nor a nats:// URL" in refused.output
    refused = cli("serve", "--edge")
    assert refused.exit_code == 1 and "--nats is required" in refused.output
    refused = cli("bridge", "--nats", f"{NATS_URL},http://127.0.0.1:4223")
    assert refused.exit_code == 1 and "is not a nats:// URL" in refused.output
    refused = cli("serve", "--edge", "--nats", NATS_URL, "--prefix", "a.b")
    assert refused.exit_code == 1 and "--prefix 'a.b'" in refused.output


async def test_an_edge_answers_503_while_nats_is_away_and_catches_up_after(
    migrated: AsyncEngine, tmp_path: Path
) -> None:
    with nats_server(tmp_path) as nats_process:
        async with origin_bridge_edge(migrated, "away", nats_process.url) as servers:
            nats_process.stop()
            refused = await edge_answers(servers.edge, feed.START, 503)
            assert refused.json()["error"] == "feed_unavailable"
            await create_topic(servers.author, "Written while NATS was away")
            nats_process.start()  # the same port and store: the stream is still there
            await in_step(servers, timeout_s=30)
            entries, _, _ = await read_all(servers.edge)
            assert "Written while NATS was away" in {e["payload"].get("title") for e in entries}
