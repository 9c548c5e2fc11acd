"""``/v1/learners/{learner}/cards/{card_id}``: decks and FSRS reviews, on both databases."""

from __future__ import annotations

import asyncio
import json
from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.models import IdempotencyKey
from tests.support.http import api_client, error_of
from tests.support.outbox import take_outbox


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


async def test_add_to_deck(
    engine: AsyncEngine, client: httpx.AsyncClient, card: dict[str, Any]
) -> None:
    url = f"/v1/learners/alice@example.org/cards/{card['id']}"
    response = await client.post(url)
    assert response.status_code == 201, response.text
    progress = response.json()
    assert progress["learner"] == "alice@example.org" and progress["card_id"] == card["id"]
    assert (progress["state"], progress["due_at"], progress["reps"]) == ("new", None, 0)
    assert response.headers["Location"] == url
    assert await take_outbox(engine) == [("card_progress", progress["id"], 1, False)]
    assert (await client.get(url)).json() == progress

    assert "already in learner" in error_of(await client.post(url), 409, "conflict")
    error_of(await client.post("/v1/learners/alice/cards/999"), 404, "not_found")
    error_of(await client.get("/v1/learners/bob/cards/1"), 404, "not_found")
    for bad in ("-dash-first", "x" * 129, "sp ace", "%C3%A9t%C3%A9"):
        error_of(await client.post(f"/v1/learners/{bad}/cards/{card['id']}"), 422, "invalid_input")
    assert await take_outbox(engine) == []


async def test_unapproved_card_cannot_be_added(
    engine: AsyncEngine, client: httpx.AsyncClient, card: dict[str, Any]
) -> None:
    await client.post(f"/v1/cards/{card['id']}/review")
    await take_outbox(engine)
    detail = error_of(await client.post(f"/v1/learners/alice/cards/{card['id']}"), 409, "conflict")
    assert "not approved" in detail
    assert await take_outbox(engine) == []


async def test_reviews_are_scheduled_with_fsrs(
    engine: AsyncEngine, client: httpx.AsyncClient, card: dict[str, Any]
) -> None:
    url = f"/v1/learners/alice/cards/{card['id']}"
    progress = (await client.post(url)).json()
    await take_outbox(engine)

    first = await client.post(
        f"{url}/reviews", json={"rating": "good", "reviewed_at": "2026-03-01T09:00:00Z"}
    )
    assert first.status_code == 200, first.text
    body = first.json()
    assert (body["state"], body["step"], body["reps"], body["lapses"]) == ("learning", 1, 1, 0)
    assert at(body["due_at"]) == at("2026-03-01T09:10:00Z")
    assert at(body["last_review_at"]) == at("2026-03-01T09:00:00Z")
    assert body["stability"] > 0 and 1 <= body["difficulty"] <= 10
    assert first.headers["ETag"] == '"2"'
    assert await take_outbox(engine) == [("card_progress", progress["id"], 2, False)]

    second = (
        await client.post(
            f"{url}/reviews", json={"rating": "easy", "reviewed_at": "2026-03-01T09:10:00+00:00"}
        )
    ).json()
    assert second["state"] == "review"
    assert at(second["due_at"]) - at("2026-03-01T09:10:00Z") >= timedelta(days=1)
    now = (await client.post(f"{url}/reviews", json={"rating": "again"})).json()
    assert (now["state"], now["reps"], now["lapses"]) == ("relearning", 3, 1)
    await take_outbox(engine)

    for bad in (
        {"rating": "great"},
        {"rating": "good", "reviewed_at": "2030-01-01T00:00:00"},
        {"rating": "good", "reviewed_at": "yesterday"},
        {"rating": "good", "extra": True},
        {},
    ):
        error_of(await client.post(f"{url}/reviews", json=bad), 422, "invalid_input")
    detail = error_of(
        await client.post(
            f"{url}/reviews", json={"rating": "good", "reviewed_at": "2026-03-01T09:00:00Z"}
        ),
        409,
        "conflict",
    )
    assert "before the last review" in detail
    error_of(
        await client.post("/v1/learners/bob/cards/1/reviews", json={"rating": "good"}),
        404,
        "not_found",
    )
    assert await take_outbox(engine) == []


async def test_suspend_is_terminal(
    engine: AsyncEngine, client: httpx.AsyncClient, card: dict[str, Any]
) -> None:
    url = f"/v1/learners/alice/cards/{card['id']}"
    progress = (await client.post(url)).json()
    await client.post(f"{url}/reviews", json={"rating": "good"})
    await take_outbox(engine)

    suspended = await client.post(f"{url}/suspend")
    assert suspended.status_code == 200
    assert (suspended.json()["state"], suspended.json()["due_at"]) == ("suspended", None)
    assert await take_outbox(engine) == [("card_progress", progress["id"], 3, False)]
    detail = error_of(await client.post(f"{url}/reviews", json={"rating": "good"}), 409, "conflict")
    assert "is suspended" in detail
    assert (await client.post(f"{url}/suspend")).json()["version"] == 3
    error_of(await client.post("/v1/learners/bob/cards/1/suspend"), 404, "not_found")
    assert await take_outbox(engine) == []


async def test_rating_a_retired_or_unapproved_card_conflicts(
    engine: AsyncEngine, client: httpx.AsyncClient, card: dict[str, Any]
) -> None:
    url = f"/v1/learners/alice/cards/{card['id']}"
    await client.post(url)
    await client.post(f"/v1/cards/{card['id']}/review")
    await take_outbox(engine)
    detail = error_of(await client.post(f"{url}/reviews", json={"rating": "good"}), 409, "conflict")
    assert "not approved" in detail
    await client.post(f"/v1/cards/{card['id']}/retire")
    await take_outbox(engine)
    detail = error_of(await client.post(f"{url}/reviews", json={"rating": "good"}), 409, "conflict")
    assert "is retired" in detail
    error_of(await client.post(f"{url}/suspend"), 409, "conflict")
    assert await take_outbox(engine) == []


# ---------------------------------------------------------------- Idempotency-Key, If-Match

REVIEW = {"rating": "good", "reviewed_at": "2026-03-01T09:00:00Z"}


def keyed(key: str, **headers: str) -> dict[str, str]:
    return {"Idempotency-Key": key, **headers}


async def stored_keys(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(IdempotencyKey)) or 0)


async def test_a_retried_review_replays_the_first_result(
    engine: AsyncEngine, client: httpx.AsyncClient, deck: str
) -> None:
    # If-Match 1 on both: the retry must replay, not find the version moved on (412).
    headers = keyed("review-1", **{"If-Match": '"1"'})
    first = await client.post(f"{deck}/reviews", json=REVIEW, headers=headers)
    assert first.status_code == 200, first.text
    assert first.json()["reps"] == 1 and first.headers["ETag"] == '"2"'
    assert "Idempotent-Replayed" not in first.headers
    progress_id = first.json()["id"]
    assert await take_outbox(engine) == [("card_progress", progress_id, 2, False)]

    # The same request, bytes spelled differently: keys reordered, spaces.
    respelled = json.dumps(dict(reversed(REVIEW.items())), indent=2)
    for content in (json.dumps(REVIEW), respelled):
        again = await client.post(
            f"{deck}/reviews",
            content=content,
            headers={**headers, "Content-Type": "application/json"},
        )
        assert again.status_code == 200, again.text
        assert again.json() == first.json()
        assert again.headers["ETag"] == '"2"'
        assert again.headers["Idempotent-Replayed"] == "true"
    current = (await client.get(deck)).json()
    assert (current["reps"], current["version"]) == (1, 2)
    assert await take_outbox(engine) == []
    assert await stored_keys(engine) == 1


async def test_a_key_reused_for_another_request_conflicts(
    engine: AsyncEngine, client: httpx.AsyncClient, deck: str, card: dict[str, Any]
) -> None:
    await client.post(f"{deck}/reviews", json=REVIEW, headers=keyed("k"))
    await take_outbox(engine)
    bob = f"/v1/learners/bob/cards/{card['id']}"
    await client.post(bob)
    await take_outbox(engine)

    for url, body in (
        (f"{deck}/reviews", {**REVIEW, "rating": "easy"}),
        (f"{deck}/reviews", {"rating": "good"}),
        (f"{bob}/reviews", REVIEW),
    ):
        detail = error_of(await client.post(url, json=body, headers=keyed("k")), 409, "conflict")
        assert "'k' was already used for another request" in detail
    assert ((await client.get(deck)).json()["reps"], (await client.get(bob)).json()["reps"]) == (
        1,
        0,
    )
    assert await take_outbox(engine) == []


async def test_another_key_applies_another_review(
    engine: AsyncEngine, client: httpx.AsyncClient, deck: str
) -> None:
    first = await client.post(f"{deck}/reviews", json=REVIEW, headers=keyed("k1"))
    second = await client.post(f"{deck}/reviews", json=REVIEW, headers=keyed("k2"))
    assert (first.json()["reps"], second.json()["reps"]) == (1, 2)
    assert "Idempotent-Replayed" not in second.headers
    progress_id = first.json()["id"]
    assert await take_outbox(engine) == [
        ("card_progress", progress_id, 2, False),
        ("card_progress", progress_id, 3, False),
    ]


async def test_a_failed_request_stores_no_key_and_its_retry_runs(
    engine: AsyncEngine, client: httpx.AsyncClient, card: dict[str, Any]
) -> None:
    url = f"/v1/learners/alice/cards/{card['id']}"
    missing = await client.post(f"{url}/reviews", json=REVIEW, headers=keyed("k"))
    error_of(missing, 404, "not_found")
    assert await stored_keys(engine) == 0

    await client.post(url)  # fix the state: the card is now in the deck
    stale = await client.post(
        f"{url}/reviews", json=REVIEW, headers=keyed("k", **{"If-Match": "7"})
    )
    error_of(stale, 412, "stale_version")
    await take_outbox(engine)
    assert await stored_keys(engine) == 0

    retry = await client.post(
        f"{url}/reviews", json=REVIEW, headers=keyed("k", **{"If-Match": "1"})
    )
    assert retry.status_code == 200, retry.text
    assert "Idempotent-Replayed" not in retry.headers
    assert retry.json()["reps"] == 1
    assert await take_outbox(engine) == [("card_progress", retry.json()["id"], 2, False)]
    assert await stored_keys(engine) == 1


async def test_concurrent_duplicates_apply_once(
    engine: AsyncEngine, client: httpx.AsyncClient, deck: str
) -> None:
    release = asyncio.Event()

    async def send(c: httpx.AsyncClient) -> httpx.Response:
        await release.wait()
        return await c.post(f"{deck}/reviews", json=REVIEW, headers=keyed("same"))

    # One app per request, as if each landed on another server process.
    async with api_client(engine) as a, api_client(engine) as b, api_client(engine) as c:
        tasks = [asyncio.create_task(send(x)) for x in (client, a, b, c)]
        await asyncio.sleep(0)
        release.set()
        responses = await asyncio.gather(*tasks)

    assert [r.status_code for r in responses] == [200] * len(tasks), [r.text for r in responses]
    assert len({json.dumps(r.json(), sort_keys=True) for r in responses}) == 1
    assert responses[0].json()["reps"] == 1
    replayed = sorted("Idempotent-Replayed" in r.headers for r in responses)
    assert replayed == [False] + [True] * (len(tasks) - 1)
    assert (await client.get(deck)).json()["reps"] == 1
    assert await take_outbox(engine) == [("card_progress", responses[0].json()["id"], 2, False)]


@pytest.mark.parametrize(
    "key",
    ["", " ", "two words", "tab\there", "x" * 256, "caf\u00e9", "new\nline", "\x7f"],
    ids=["empty", "space", "inner-space", "tab", "too-long", "non-ascii", "newline", "del"],
)
async def test_a_malformed_key_is_refused(
    engine: AsyncEngine, client: httpx.AsyncClient, deck: str, key: str
) -> None:
    headers = {"Idempotency-Key": key.encode("utf-8")}
    response = await client.post(f"{deck}/reviews", json=REVIEW, headers=headers)
    detail = error_of(response, 422, "invalid_input")
    assert "1 to 255 visible ASCII characters" in detail
    assert (await client.get(deck)).json()["reps"] == 0
    assert await take_outbox(engine) == []
    assert await stored_keys(engine) == 0


async def test_the_longest_and_oddest_keys_are_accepted(
    client: httpx.AsyncClient, deck: str
) -> None:
    for key in ("!", "~" * 255, 'a"b\\c{}'):
        response = await client.post(f"{deck}/reviews", json={"rating": "good"}, headers=keyed(key))
        assert response.status_code == 200, response.text


async def test_if_match_on_reviews(
    engine: AsyncEngine, client: httpx.AsyncClient, deck: str
) -> None:
    assert (await client.post(f"{deck}/reviews", json=REVIEW)).json()["version"] == 2  # absent
    await take_outbox(engine)

    stale = await client.post(
        f"{deck}/reviews", json={"rating": "good"}, headers={"If-Match": '"1"'}
    )
    detail = error_of(stale, 412, "stale_version")
    assert stale.headers["ETag"] == '"2"'
    assert detail["current_version"] == 2 and "at version 2, not 1" in detail["message"]
    assert await take_outbox(engine) == []

    current = await client.post(
        f"{deck}/reviews", json={"rating": "good"}, headers={"If-Match": 'W/"2"'}
    )
    assert current.status_code == 200, current.text
    assert (current.json()["reps"], current.headers["ETag"]) == (2, '"3"')
    error_of(
        await client.post(f"{deck}/reviews", json={"rating": "good"}, headers={"If-Match": "v3"}),
        422,
        "invalid_input",
    )
    assert [version for *_, version, _ in await take_outbox(engine)] == [3]


async def test_reviews_declare_their_headers_and_errors(client: httpx.AsyncClient) -> None:
    schema = (await client.get("/openapi.json")).json()
    operation = schema["paths"]["/v1/learners/{learner}/cards/{card_id}/reviews"]["post"]
    headers = {p["name"]: p for p in operation["parameters"] if p["in"] == "header"}
    assert set(headers) == {"If-Match", "Idempotency-Key"}
    assert not any(p["required"] for p in headers.values())
    assert {"404", "409", "412", "422"} <= set(operation["responses"])
    assert "Idempotency-Key" in operation["responses"]["409"]["description"]
    assert "Idempotent-Replayed" in operation["responses"]["200"]["headers"]
