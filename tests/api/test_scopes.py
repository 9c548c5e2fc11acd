"""Learner-scoped feeds: a learner's token reads the shared content and its own progress, never
another learner's, by any route; tokens that do not hold get a 401 JSON.

The content: one topic with two approved cards in the decks of three learners, each card
reviewed, so that every learner owns progress rows interleaved in seq order with the others'.
Each route is checked against the service token's view filtered by hand, on both databases,
through the window of a running server and through the database (a client behind it).
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import jwt
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import checksums, feed, tokens
from studypub.projection import SHARED
from studypub.serving import running
from tests.support.http import (
    AUTH,
    TOKEN_SECRET,
    VIEWER_TOKEN,
    SseEvent,
    bearer,
    create_card,
    create_topic,
    error_of,
    fast_relay,
    make_app,
    sse_events,
)
from tests.support.outbox import drained

pytestmark = pytest.mark.timeout(60)

LEARNERS = ("ana", "ben", "cleo")
SERVICE = bearer(VIEWER_TOKEN)

Entry = dict[str, Any]


def scope_of(entry: Entry) -> str:
    return str(entry["payload"]["learner"]) if entry["kind"] == "card_progress" else SHARED


def visible_to(learner: str, entries: list[Entry], kinds: tuple[str, ...] | None = None) -> list:
    """The service's entries filtered by hand: what ``learner`` must get."""
    return [
        e
        for e in entries
        if scope_of(e) in (SHARED, learner) and (kinds is None or e["kind"] in kinds)
    ]


async def read_feed(
    client: httpx.AsyncClient, headers: dict[str, str], *, since: str = "0", **params: Any
) -> tuple[list[Entry], str]:
    """Page the feed to its end with ``headers``: (entries, last cursor)."""
    entries: list[Entry] = []
    while True:
        response = await client.get("/v1/feed", params={"since": since, **params}, headers=headers)
        assert response.status_code == 200, response.text
        page = response.json()
        entries += page["results"]
        since = page["last_seq"]
        if not page["pending"]:
            # At the head: the page's checksums are those of what this reader now holds.
            held = {(e["kind"], e["id"]): e for e in entries}.values()
            mine = {kind: st.as_json() for kind, st in checksums.of_entries(held).items()}
            assert page["checksums"] == mine
            return entries, since


async def review(client: httpx.AsyncClient, learner: str, card_id: int) -> dict[str, Any]:
    response = await client.post(
        f"/v1/learners/{learner}/cards/{card_id}/reviews", json={"rating": "good"}
    )
    assert response.status_code == 200, response.text
    return dict(response.json())


async def learner_token(client: httpx.AsyncClient, learner: str, **body: Any) -> dict[str, str]:
    response = await client.post("/v1/viewer-tokens", json={"learner": learner, **body})
    assert response.status_code == 201, response.text
    return bearer(response.json()["token"])


@pytest.fixture
async def server(engine: AsyncEngine) -> AsyncIterator[tuple[httpx.AsyncClient, list[int]]]:
    """A running server with a relay, content published; (author client, card ids)."""
    app = make_app(engine, viewer_token=VIEWER_TOKEN)
    async with (
        running(app, relay=fast_relay(engine)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=10) as client,
    ):
        topic = await create_topic(client)
        cards = [(await create_card(client, topic["id"], approve=True))["id"] for _ in range(2)]
        for card in cards:
            for learner in LEARNERS:
                added = await client.post(f"/v1/learners/{learner}/cards/{card}")
                assert added.status_code == 201, added.text
                await review(client, learner, card)
        await settled(engine, client)
        yield client, cards


async def settled(engine: AsyncEngine, client: httpx.AsyncClient) -> list[Entry]:
    """Wait until everything written is published; the service's view of the feed."""
    await drained(engine)
    entries, _ = await read_feed(client, SERVICE)
    return entries


# ---------------------------------------------------------------- the feed


async def test_a_learners_bootstrap_is_the_full_one_filtered(
    server: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, _ = server
    full, _ = await read_feed(client, SERVICE)
    assert {scope_of(e) for e in full} == {SHARED, *LEARNERS}
    for learner in LEARNERS:
        mine = await learner_token(client, learner)
        for limit in (1, 3, 1000):  # cursors and pending across pages, window or database
            scoped, _ = await read_feed(client, mine, limit=limit)
            assert scoped == visible_to(learner, full), (learner, limit)
        progress, _ = await read_feed(client, mine, kinds="card_progress")
        assert progress == visible_to(learner, full, ("card_progress",))
        assert len(progress) == 2


async def test_a_learner_behind_the_window_reads_the_same_from_the_database(
    engine: AsyncEngine,
) -> None:
    # A window of 100 entries and more than 100 published since the server started: a
    # bootstrap from 0 is behind the window, and reads the database.
    app = make_app(engine, viewer_token=VIEWER_TOKEN)
    app.state.tail.window_size = 100
    async with (
        running(app, relay=fast_relay(engine)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH, timeout=10) as client,
    ):
        topic = await create_topic(client)
        card = (await create_card(client, topic["id"], approve=True))["id"]
        for n in range(60):
            learner = LEARNERS[n % 2]
            if n < 2:
                await client.post(f"/v1/learners/{learner}/cards/{card}")
            await review(client, learner, card)
            await client.patch(f"/v1/topics/{topic['id']}", json={"title": f"t{n}"})
        full = await settled(engine, client)
        assert len(full) == 4, "compacted: the topic, the card, two progress rows"
        assert full[-1]["seq"] > 100
        for learner in LEARNERS[:2]:
            scoped, _ = await read_feed(client, await learner_token(client, learner), limit=7)
            assert scoped == visible_to(learner, full)


async def test_the_service_and_the_author_token_see_everything_and_no_token_nothing(
    server: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, _ = server
    full, _ = await read_feed(client, SERVICE)
    as_author, _ = await read_feed(client, AUTH)
    assert as_author == full
    for path in ("/v1/feed", "/v1/feed/stream", "/v1/items/topic/1"):
        response = await client.get(path, headers={"Authorization": ""})
        assert "missing bearer token" in error_of(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"


async def test_a_token_limited_to_kinds_reads_those_and_is_refused_the_others(
    server: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, _ = server
    full, _ = await read_feed(client, SERVICE)
    cards_only = await learner_token(client, "ana", kinds=["card", "card_progress"])
    entries, _ = await read_feed(client, cards_only)
    assert entries == visible_to("ana", full, ("card", "card_progress"))
    response = await client.get("/v1/feed", params={"kinds": "topic"}, headers=cards_only)
    assert "does not allow kind 'topic'" in error_of(response, 403, "forbidden")
    response = await client.get("/v1/items/topic/1", headers=cards_only)
    error_of(response, 403, "forbidden")


# ---------------------------------------------------------------- items


async def test_another_learners_progress_is_404_like_an_unknown_id(
    server: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, _ = server
    full, _ = await read_feed(client, SERVICE)
    ana = await learner_token(client, "ana")
    for entry in full:
        if entry["kind"] != "card_progress":
            continue
        response = await client.get(f"/v1/items/card_progress/{entry['id']}", headers=ana)
        if entry["payload"]["learner"] == "ana":
            assert response.status_code == 200 and response.json() == entry
        else:
            other = error_of(response, 404, "not_found")
            unknown = error_of(
                await client.get("/v1/items/card_progress/999999", headers=ana), 404, "not_found"
            )
            assert other == unknown.replace("999999", str(entry["id"]))
    topic = next(e for e in full if e["kind"] == "topic")
    assert (await client.get(f"/v1/items/topic/{topic['id']}", headers=ana)).status_code == 200


# ---------------------------------------------------------------- the stream


async def events_until(
    response: httpx.Response, done: Any, timeout_s: float = 10
) -> list[SseEvent]:
    """The stream's events until ``done(events)`` holds."""
    got: list[SseEvent] = []

    async def read() -> None:
        async for item in sse_events(response):
            if isinstance(item, SseEvent):
                got.append(item)
                if done(got):
                    return

    await asyncio.wait_for(read(), timeout_s)
    return got


async def test_a_learners_stream_never_carries_another_learners_progress(
    server: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, cards = server
    full, head = await read_feed(client, SERVICE)
    ana = await learner_token(client, "ana")
    expected = visible_to("ana", full)
    # From the start, and from Last-Event-ID cursors just before each of the others' entries:
    # a cursor names a position in the one seq order, whoever it came from.
    epoch = head.split(":")[0]
    starts = ["0"] + [f"{epoch}:{e['seq'] - 1}" for e in full if scope_of(e) not in (SHARED, "ana")]
    for start in starts:
        after = 0 if start == "0" else int(start.rsplit(":", 1)[1])
        want = [e for e in expected if e["seq"] > after]
        headers = {**ana, "Last-Event-ID": start}
        async with client.stream("GET", "/v1/feed/stream", headers=headers) as response:
            assert response.status_code == 200
            if not want:
                continue
            events = await events_until(response, lambda got, n=len(want): len(got) == n)
        assert [e.json() for e in events] == want, start

    # Live: ben's review never reaches ana's stream; ana's own does, right after it.
    async with client.stream(
        "GET", "/v1/feed/stream", headers={**ana, "Last-Event-ID": head}
    ) as response:
        await review(client, "ben", cards[0])
        await review(client, "cleo", cards[1])
        await review(client, "ana", cards[1])
        [event] = await events_until(response, lambda got: len(got) == 1)
    assert event.json()["kind"] == "card_progress"
    assert event.json()["payload"]["learner"] == "ana"
    assert event.json()["payload"]["card_id"] == cards[1]


async def test_a_learners_long_poll_waits_through_the_others_entries(
    server: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, cards = server
    ben = await learner_token(client, "ben")
    _, cursor = await read_feed(client, ben)
    poll = asyncio.create_task(
        client.get("/v1/feed", params={"since": cursor, "wait": 10}, headers=ben)
    )
    await review(client, "ana", cards[0])
    await asyncio.sleep(0.5)  # ana's entry is published, and ben's poll still waits
    assert not poll.done()
    await review(client, "ben", cards[0])
    page = (await poll).json()
    assert [e["payload"]["learner"] for e in page["results"]] == ["ben"]


async def test_after_a_reset_a_learner_bootstraps_its_own_scope_again(
    server: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, _ = server
    full, _ = await read_feed(client, SERVICE)
    cleo = await learner_token(client, "cleo")
    stale = feed.encode_cursor("an-old-epoch", full[-1]["seq"])
    response = await client.get("/v1/feed", params={"since": stale}, headers=cleo)
    error_of(response, 410, "reset_required")
    async with client.stream(
        "GET", "/v1/feed/stream", headers={**cleo, "Last-Event-ID": stale}
    ) as stream:
        [reset] = await events_until(stream, lambda got: len(got) == 1)
    assert reset.event == "reset"
    again, _ = await read_feed(client, cleo)
    assert again == visible_to("cleo", full)


# ---------------------------------------------------------------- tokens


async def test_tokens_that_do_not_hold_get_a_401_saying_why(
    server: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, _ = server
    now = datetime.now(UTC)
    expired, _ = tokens.issue(TOKEN_SECRET, "ana", now=now - timedelta(days=2))
    other_key, _ = tokens.issue("another-secret-of-at-least-32-characters", "ana")
    good, _ = tokens.issue(TOKEN_SECRET, "ana")
    header, claims, signature = good.split(".")
    # The same signature on claims that name another learner: forged.
    claims_ben = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
    claims_ben["sub"] = "ben"
    forged_claims = base64.urlsafe_b64encode(json.dumps(claims_ben).encode()).rstrip(b"=")
    forged = f"{header}.{forged_claims.decode()}.{signature}"
    unsigned = jwt.encode({"sub": "ana", "iss": "studypub"}, key=None, algorithm="none")
    no_expiry = jwt.encode({"sub": "ana", "iss": "studypub", "iat": now}, TOKEN_SECRET)
    cases = {
        expired: "expired",
        other_key: "signature",
        forged: "signature",
        unsigned: "invalid viewer token",
        no_expiry: "exp",
        "not-a-token": "neither the service token nor a viewer token",
    }
    for token, reason in cases.items():
        for path in ("/v1/feed", "/v1/feed/stream", "/v1/items/topic/1"):
            response = await client.get(path, headers=bearer(token))
            assert reason in error_of(response, 401, "unauthorized"), (token, path)
            assert response.headers["WWW-Authenticate"] == "Bearer"
    assert (await client.get("/v1/feed", headers=bearer(good))).status_code == 200


async def test_metrics_need_the_service_token(
    server: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, _ = server
    ana = await learner_token(client, "ana")
    error_of(await client.get("/metrics", headers=ana), 403, "forbidden")
    error_of(await client.get("/metrics", headers={"Authorization": ""}), 401, "unauthorized")
    assert (await client.get("/metrics", headers=SERVICE)).status_code == 200


async def test_issuing_a_token_needs_the_author_and_valid_claims(
    server: tuple[httpx.AsyncClient, list[int]],
) -> None:
    client, _ = server
    body = {"learner": "ana"}
    error_of(
        await client.post("/v1/viewer-tokens", json=body, headers=SERVICE), 401, "unauthorized"
    )
    response = await client.post(
        "/v1/viewer-tokens", json={"learner": "ana", "ttl_s": 3600, "kinds": ["card"]}
    )
    assert response.status_code == 201, response.text
    issued = response.json()
    assert set(issued) == {"token", "learner", "kinds", "expires_at"}
    assert (issued["learner"], issued["kinds"]) == ("ana", ["card"])
    expires = datetime.fromisoformat(issued["expires_at"])
    assert timedelta(minutes=59) < expires - datetime.now(UTC) <= timedelta(hours=1)
    assert tokens.verify(TOKEN_SECRET, issued["token"]) == tokens.Viewer("ana", ("card",))
    for bad in (
        {"learner": ""},
        {"learner": "a b"},
        {"learner": "ana", "ttl_s": 10},
        {"learner": "ana", "ttl_s": 400 * 86400},
        {"learner": "ana", "kinds": ["secrets"]},
        {"learner": "ana", "kinds": []},
        {"learner": "ana", "admin": True},
    ):
        error_of(await client.post("/v1/viewer-tokens", json=bad), 422, "invalid_input")


async def test_a_server_without_tokens_configured_is_closed_and_says_how_to_open(
    engine: AsyncEngine,
) -> None:
    """No viewer token set: one is generated, the feed is closed; open only on purpose."""
    from studypub.api import create_app
    from studypub.settings import Settings

    url = engine.url.render_as_string(hide_password=False)
    closed = create_app(Settings(database_url=url), engine)
    assert closed.state.settings.viewer_token and closed.state.settings.token_secret
    opened = create_app(Settings(database_url=url, open_feed=True), engine)
    assert opened.state.settings.viewer_token is None
    for app, status in ((closed, 401), (opened, 200)):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            assert (await c.get("/v1/feed")).status_code == status
