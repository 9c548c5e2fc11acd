"""``/v1/learners/{learner}/cards/{card_id}``: decks and FSRS reviews, on both databases."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import httpx
import pytest
from api_helpers import client, create_card, create_topic, error_of
from authoring_helpers import take_outbox
from sqlalchemy.ext.asyncio import AsyncEngine

__all__ = ["client"]  # fixtures


@pytest.fixture
async def card(engine: AsyncEngine, client: httpx.AsyncClient) -> dict[str, Any]:
    topic = await create_topic(client)
    created = await create_card(client, topic["id"], approve=True)
    await take_outbox(engine)
    return created


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
        422,
        "invalid_input",
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
