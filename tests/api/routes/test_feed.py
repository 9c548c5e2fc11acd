"""The feed over HTTP, on SQLite and PostgreSQL: pages, long-poll, SSE, items, resets."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import feed, metrics
from studypub import tail as tail_module
from studypub.db import session_factory
from studypub.models import FeedHead, utcnow
from studypub.relay import Relay
from studypub.serving import running
from tests.support.content import create_topic, delete_card, write_content
from tests.support.http import (
    VIEWER_TOKEN,
    SseEvent,
    app_client,
    error_of,
    fast_relay,
    make_app,
    read_all,
    sse_events,
)
from tests.support.state import live_view, view_of, wait_for_head

pytestmark = pytest.mark.timeout(60)


async def publish(engine: AsyncEngine) -> None:
    await Relay(engine, listen=False).run_once()


# ---------------------------------------------------------------- pages


async def test_paging_from_zero_to_head_equals_published_state(
    engine: AsyncEngine, viewer_client: httpx.AsyncClient
) -> None:
    made = await write_content(engine, topics=3, per_topic=5)
    await publish(engine)
    await delete_card(engine, made.cards[0])  # a tombstone in the feed
    await publish(engine)

    entries, cursor = await read_all(viewer_client, limit=7)

    seqs = [e["seq"] for e in entries]
    assert seqs == sorted(set(seqs)), "seqs strictly increasing, no repeat"
    state = view_of(entries)
    expected = await live_view(engine)
    assert state == expected
    assert ("card", made.cards[0]) not in state
    assert len(expected) == 3 + 15 + 9 + 14  # topics, questions, ready explanations, cards
    assert cursor.endswith(f":{seqs[-1]}")
    # The feed copies payload and published_at as stored; an item is built from parsed
    # values: both must spell every entry the same.
    for entry in entries[-3:]:
        if not entry["deleted"]:
            item = await viewer_client.get(f"/v1/items/{entry['kind']}/{entry['id']}")
            assert item.json() == entry
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entries[0]["published_at"])
    entry = entries[0]
    assert set(entry) == {
        "seq",
        "kind",
        "id",
        "version",
        "schema_version",
        "deleted",
        "hash",
        "payload",
        "published_at",
    }


async def test_since_resumes_exactly(engine: AsyncEngine, viewer_client: httpx.AsyncClient) -> None:
    await write_content(engine, topics=1, per_topic=3)
    await publish(engine)
    before, cursor = await read_all(viewer_client)

    new_ids = [await create_topic(engine, f"Later {n}") for n in range(3)]
    await publish(engine)
    response = await viewer_client.get("/v1/feed", params={"since": cursor, "limit": 2})
    page = response.json()
    assert [e["id"] for e in page["results"]] == new_ids[:2]
    assert page["pending"] == 1
    assert page["results"][0]["seq"] == before[-1]["seq"] + 1

    rest = (await viewer_client.get("/v1/feed", params={"since": page["last_seq"]})).json()
    assert [e["id"] for e in rest["results"]] == new_ids[2:]
    assert rest["pending"] == 0
    again = (await viewer_client.get("/v1/feed", params={"since": rest["last_seq"]})).json()
    # At the head, the page carries the state checksums (the same as the page before).
    assert again["checksums"] == rest["checksums"] and again["checksums"]["topic"]["count"]
    assert again == {
        "results": [],
        "last_seq": rest["last_seq"],
        "pending": 0,
        "checksums": rest["checksums"],
    }


async def test_kinds_filter(engine: AsyncEngine, viewer_client: httpx.AsyncClient) -> None:
    await write_content(engine, topics=2, per_topic=2)
    await publish(engine)
    page = (await viewer_client.get("/v1/feed", params={"kinds": "topic,card"})).json()
    assert {e["kind"] for e in page["results"]} == {"topic", "card"}
    assert len(page["results"]) == 2 + 4


@pytest.mark.parametrize(
    ("params", "needle"),
    [
        ({"since": "garbage"}, "invalid cursor"),
        ({"since": "abc:-1"}, "invalid cursor"),
        ({"since": "x" * 200}, "since"),
        ({"limit": "0"}, "limit"),
        ({"limit": "1001"}, "limit"),
        ({"limit": "many"}, "limit"),
        ({"wait": "61"}, "wait"),
        ({"kinds": "topic,bogus"}, "'question', 'explanation', 'card' or 'card_progress'"),
        ({"kinds": ""}, "'question', 'explanation', 'card' or 'card_progress'"),
    ],
)
async def test_bad_input_is_a_clear_422(
    viewer_client: httpx.AsyncClient, params: dict[str, str], needle: str
) -> None:
    response = await viewer_client.get("/v1/feed", params=params)
    assert response.status_code == 422
    body = response.json()
    assert body["error"] == "invalid_input"
    assert needle in str(body["detail"])


async def test_bad_stream_cursor_is_422_not_a_broken_stream(
    viewer_client: httpx.AsyncClient,
) -> None:
    response = await viewer_client.get("/v1/feed/stream", headers={"Last-Event-ID": "nope"})
    assert response.status_code == 422
    assert "invalid cursor" in response.json()["detail"]


# ---------------------------------------------------------------- resets


async def test_reset_required_after_floor_raise(
    engine: AsyncEngine, viewer_client: httpx.AsyncClient
) -> None:
    made = await write_content(engine, topics=1, per_topic=2)
    await publish(engine)
    early = (await viewer_client.get("/v1/feed", params={"limit": 1})).json()["last_seq"]
    await delete_card(engine, made.cards[0])
    await publish(engine)
    async with session_factory(engine)() as session, session.begin():
        assert (
            await feed.prune_tombstones(
                session, older_than=feed.MIN_RETENTION, now=utcnow() + 2 * feed.MIN_RETENTION
            )
            >= 1
        )

    response = await viewer_client.get("/v1/feed", params={"since": early})
    assert response.status_code == 410
    assert response.json()["error"] == "reset_required"
    assert "floor" in response.json()["detail"]
    # Starting over from 0 works and gives the current state.
    entries, _ = await read_all(viewer_client)
    assert view_of(entries) == await live_view(engine)


async def test_reset_required_after_epoch_change(
    engine: AsyncEngine, viewer_client: httpx.AsyncClient
) -> None:
    await write_content(engine, topics=1, per_topic=1)
    await publish(engine)
    _, cursor = await read_all(viewer_client)
    async with engine.begin() as conn:  # what a restore into a rebuilt feed looks like
        await conn.execute(update(FeedHead).values(epoch="restored01"))
    response = await viewer_client.get("/v1/feed", params={"since": cursor})
    assert response.status_code == 410
    assert response.json()["error"] == "reset_required"
    assert "epoch" in response.json()["detail"]

    # The stream says so with an `event: reset`, then ends.
    async with viewer_client.stream("GET", "/v1/feed/stream", params={"since": cursor}) as stream:
        assert stream.status_code == 200
        events = [e async for e in sse_events(stream) if isinstance(e, SseEvent)]
    assert [e.event for e in events] == ["reset"]
    assert events[0].json()["error"] == "reset_required"


# ---------------------------------------------------------------- items


async def test_item_etag_304_and_404(engine: AsyncEngine, viewer_client: httpx.AsyncClient) -> None:
    made = await write_content(engine, topics=1, per_topic=1)
    await publish(engine)
    card_id = made.cards[0]

    response = await viewer_client.get(f"/v1/items/card/{card_id}")
    assert response.status_code == 200
    entry = response.json()
    assert entry["payload"]["front"] == "Front 0.0"
    assert response.headers["etag"] == f'"{entry["hash"]}"'

    cached = await viewer_client.get(
        f"/v1/items/card/{card_id}", headers={"If-None-Match": response.headers["etag"]}
    )
    assert cached.status_code == 304
    assert cached.content == b""
    stale = await viewer_client.get(
        f"/v1/items/card/{card_id}", headers={"If-None-Match": '"other"'}
    )
    assert stale.status_code == 200

    assert (await viewer_client.get("/v1/items/card/999999")).status_code == 404
    assert (await viewer_client.get("/v1/items/spaceship/1")).status_code == 422
    for bad_id in ("0", "-1", str(2**63), "x"):
        assert (await viewer_client.get(f"/v1/items/card/{bad_id}")).status_code == 422
    await delete_card(engine, card_id)
    await publish(engine)
    gone = await viewer_client.get(f"/v1/items/card/{card_id}")
    assert gone.status_code == 404
    assert gone.json()["error"] == "not_found"


# ---------------------------------------------------------------- auth


async def test_viewer_token_guards_the_feed(engine: AsyncEngine) -> None:
    async with app_client(engine, viewer_token=VIEWER_TOKEN) as c:
        assert (await c.get("/v1/feed")).status_code == 401
        assert (await c.get("/v1/items/topic/1")).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await c.get("/v1/feed", headers=wrong)).status_code == 401
        assert (await c.get("/v1/feed/stream")).status_code == 401
        assert (await c.get("/v1/feed/stream", params={"token": "nope"})).status_code == 401
        right = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
        assert (await c.get("/v1/feed", headers=right)).status_code == 200
        # Never a token in a URL (access logs keep URLs): ?token= is refused, saying why.
        response = await c.get("/v1/feed/stream", params={"token": VIEWER_TOKEN})
        assert "Authorization" in error_of(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        async with c.stream(
            "GET", "/v1/feed/stream", params={"since": "bad"}, headers=right
        ) as stream:
            assert stream.status_code == 422


# ---------------------------------------------------------------- long-poll (real server)


async def test_long_poll_wakes_within_100ms_of_a_publish(engine: AsyncEngine) -> None:
    """Publish -> response, measured from the relay's commit, with a real server."""
    app = make_app(engine)
    relay = Relay(engine, listen=False)  # driven by hand: we time its commit
    async with running(app) as url, httpx.AsyncClient(base_url=url) as c:
        if engine.dialect.name == "postgresql":
            await asyncio.wait_for(app.state.tail.listening.wait(), 5)
        _, cursor = await read_all(c)
        latencies = []
        for n in range(5):
            poll = asyncio.create_task(c.get("/v1/feed", params={"since": cursor, "wait": 10}))
            await asyncio.sleep(0.3)  # the long-poll is waiting
            assert not poll.done()
            topic_id = await create_topic(engine, f"Live {n}")
            await relay.run_once()
            published = time.perf_counter()
            page = (await poll).json()
            latencies.append(time.perf_counter() - published)
            assert [e["id"] for e in page["results"]] == [topic_id]
            cursor = page["last_seq"]
    latencies.sort()
    # The median of five, so one scheduling hiccup on a loaded machine does not decide.
    assert latencies[2] < 0.100, f"wake-up latencies {latencies}"


async def test_long_poll_times_out_empty_with_unchanged_cursor(engine: AsyncEngine) -> None:
    app = make_app(engine)
    await write_content(engine, topics=1, per_topic=1)
    await publish(engine)
    async with running(app) as url, httpx.AsyncClient(base_url=url) as c:
        _, cursor = await read_all(c)
        started = time.perf_counter()
        response = await c.get("/v1/feed", params={"since": cursor, "wait": 1.5})
        elapsed = time.perf_counter() - started
    assert response.status_code == 200
    body = response.json()
    assert body.pop("checksums")  # at the head
    assert body == {"results": [], "last_seq": cursor, "pending": 0}
    assert 1.4 <= elapsed < 3.0


# ---------------------------------------------------------------- SSE (real server, real relay)


async def _take(events: AsyncIterator[SseEvent | str], n: int) -> list[SseEvent]:
    """The next ``n`` events of a stream (comments skipped)."""
    got: list[SseEvent] = []
    async for item in events:
        if isinstance(item, SseEvent):
            got.append(item)
            if len(got) == n:
                break
    return got


async def test_sse_resumes_from_last_event_id_without_loss_or_repeat(
    engine: AsyncEngine,
) -> None:
    app = make_app(engine)
    await write_content(engine, topics=2, per_topic=3)  # 2 + 6 + 4 + 6 = 18 entries
    async with (
        running(app, relay=fast_relay(engine)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
    ):
        await wait_for_head(engine, 18)
        async with c.stream("GET", "/v1/feed/stream", params={"since": "0"}) as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            first = await _take(sse_events(stream), 10)

        # While disconnected: new entries.
        new_topics = [await create_topic(engine, f"Meanwhile {n}") for n in range(3)]
        await wait_for_head(engine, 21)

        last_id = first[-1].id
        assert last_id is not None
        headers = {"Last-Event-ID": last_id}
        # `since` is stale on purpose: Last-Event-ID (what EventSource sends) wins.
        async with c.stream(
            "GET", "/v1/feed/stream", params={"since": "0"}, headers=headers
        ) as stream:
            resumed = sse_events(stream)
            second = await _take(resumed, 11)
            live_id = await create_topic(engine, "Live")
            third = await _take(resumed, 1)

    events = [*first, *second, *third]
    assert all(e.event == "entry" for e in events)
    seqs = [e.json()["seq"] for e in events]
    assert seqs == list(range(1, 23)), "every entry once, in order, across the reconnect"
    epoch = feed.decode_cursor(str(events[0].id))[0]
    assert [e.id for e in events] == [f"{epoch}:{s}" for s in seqs]
    ids = [e.json()["id"] for e in events if e.json()["kind"] == "topic"]
    assert ids[-4:] == [*new_topics, live_id]
    assert view_of(e.json() for e in events) == await live_view(engine)


async def test_sse_sends_heartbeats(engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tail_module, "HEARTBEAT_S", 0.3)
    app = make_app(engine)
    comments = []
    written = metrics.FEED_TAIL_WRITES._value.get()
    async with (
        running(app) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as c,
        c.stream("GET", "/v1/feed/stream") as stream,
    ):
        async for item in sse_events(stream):
            if isinstance(item, str):
                comments.append(item)
                if len(comments) == 2:
                    break
    assert comments == ["heartbeat", "heartbeat"]
    # Written by the tail to the parked stream's socket (a live server): no wake-up.
    assert metrics.FEED_TAIL_WRITES._value.get() - written >= 2
