"""``/v1/cards`` and its review cycle over the real app on both databases."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.http import create_card, create_question, create_topic, error_of
from tests.support.outbox import take_outbox


async def test_create_starts_in_review(
    engine: AsyncEngine, client: httpx.AsyncClient, topic: dict[str, Any]
) -> None:
    response = await client.post(
        "/v1/cards", json={"topic_id": topic["id"], "front": "Mitochondria", "back": "Power"}
    )
    assert response.status_code == 201, response.text
    card = response.json()
    assert card["needs_review"] is True and card["retired_at"] is None
    assert response.headers["Location"] == f"/v1/cards/{card['id']}"
    # Not approved yet: the card kind gets a tombstone (invisible to consumers).
    assert await take_outbox(engine) == [("card", card["id"], 1, True)]
    assert (await client.get(f"/v1/cards/{card['id']}")).json() == card
    listed = (await client.get("/v1/cards", params={"topic_id": topic["id"]})).json()
    assert [c["id"] for c in listed["items"]] == [card["id"]]


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"front": ""}, "string_too_short"),
        ({"back": "b" * 20_001}, "string_too_long"),
        ({"topic_id": "1"}, "must be a JSON number"),
        ({"needs_review": False}, "extra_forbidden"),
    ],
)
async def test_create_refuses_bad_input(
    engine: AsyncEngine,
    client: httpx.AsyncClient,
    topic: dict[str, Any],
    changes: dict[str, Any],
    needle: str,
) -> None:
    body = {"topic_id": topic["id"], "front": "f", "back": "b", **changes}
    assert needle in str(error_of(await client.post("/v1/cards", json=body), 422, "invalid_input"))
    assert await take_outbox(engine) == []


@pytest.mark.parametrize(("field", "name"), [("topic_id", "topic"), ("question_id", "question")])
async def test_create_refers_to_missing_rows(
    engine: AsyncEngine, client: httpx.AsyncClient, topic: dict[str, Any], field: str, name: str
) -> None:
    """Well-formed, but the state refuses it: 409, not 422 (and not 404: the URL is right)."""
    body = {"topic_id": topic["id"], "front": "f", "back": "b", field: 999}
    response = await client.post("/v1/cards", json=body)
    assert error_of(response, 409, "missing_reference") == (
        f"{field}: {name} 999 does not exist or is deleted"
    )
    assert await take_outbox(engine) == []


async def test_card_of_another_topics_question(
    engine: AsyncEngine, client: httpx.AsyncClient, topic: dict[str, Any]
) -> None:
    other = await create_topic(client, "Other")
    question = await create_question(client, other["id"])
    await take_outbox(engine)
    body = {"topic_id": topic["id"], "front": "f", "back": "b", "question_id": question["id"]}
    detail = error_of(await client.post("/v1/cards", json=body), 409, "conflict")
    assert f"belongs to topic {other['id']}" in detail
    assert await take_outbox(engine) == []


async def test_approve_review_retire(
    engine: AsyncEngine, client: httpx.AsyncClient, topic: dict[str, Any]
) -> None:
    card = await create_card(client, topic["id"])
    url = f"/v1/cards/{card['id']}"
    await take_outbox(engine)

    error_of(await client.post(f"{url}/approve", headers={"If-Match": "5"}), 412, "stale_version")
    approved = await client.post(f"{url}/approve", headers={"If-Match": '"1"'})
    assert approved.status_code == 200 and approved.json()["needs_review"] is False
    assert approved.headers["ETag"] == '"2"'
    assert await take_outbox(engine) == [("card", card["id"], 2, False)]

    again = await client.post(f"{url}/approve")
    assert again.json()["version"] == 2  # already approved: nothing changes
    assert await take_outbox(engine) == []

    back = await client.post(f"{url}/review")
    assert back.json()["needs_review"] is True
    assert await take_outbox(engine) == [("card", card["id"], 3, True)]
    await client.post(f"{url}/approve")
    await client.post(f"/v1/learners/alice/cards/{card['id']}")
    await take_outbox(engine)

    retired = await client.post(f"{url}/retire")
    assert retired.status_code == 200 and retired.json()["retired_at"] is not None
    progress = (await client.get(f"/v1/learners/alice/cards/{card['id']}")).json()
    assert (progress["state"], progress["due_at"], progress["version"]) == ("retired", None, 2)
    assert await take_outbox(engine) == [
        ("card", card["id"], 5, True),
        ("card_progress", progress["id"], 2, False),
    ]

    for action in ("approve", "review"):
        assert "is retired" in error_of(await client.post(f"{url}/{action}"), 409, "conflict")
    error_of(await client.patch(url, json={"front": "x"}), 409, "conflict")
    assert (await client.post(f"{url}/retire")).json()["version"] == 5
    for action in ("approve", "review", "retire"):
        error_of(await client.post(f"/v1/cards/99/{action}"), 404, "not_found")
    assert await take_outbox(engine) == []


async def test_patch_and_unlink(
    engine: AsyncEngine, client: httpx.AsyncClient, topic: dict[str, Any]
) -> None:
    question = await create_question(client, topic["id"])
    card = await client.post(
        "/v1/cards",
        json={"topic_id": topic["id"], "front": "f", "back": "b", "question_id": question["id"]},
    )
    url = f"/v1/cards/{card.json()['id']}"
    await take_outbox(engine)

    error_of(await client.patch(url, json={"front": None}), 422, "invalid_input")
    error_of(
        await client.patch(url, json={"front": "x"}, headers={"If-Match": "9"}),
        412,
        "stale_version",
    )
    assert await take_outbox(engine) == []
    kept = await client.patch(url, json={"back": "new back"})
    assert kept.json()["question_id"] == question["id"] and kept.json()["back"] == "new back"
    unlinked = await client.patch(url, json={"question_id": None}, headers={"If-Match": '"2"'})
    assert unlinked.status_code == 200, unlinked.text
    assert unlinked.json()["question_id"] is None and unlinked.json()["version"] == 3
    assert await take_outbox(engine) == [
        ("card", card.json()["id"], 2, True),
        ("card", card.json()["id"], 3, True),
    ]


async def test_delete(
    engine: AsyncEngine, client: httpx.AsyncClient, topic: dict[str, Any]
) -> None:
    card = await create_card(client, topic["id"], approve=True)
    url = f"/v1/cards/{card['id']}"
    progress = (await client.post(f"/v1/learners/bob/cards/{card['id']}")).json()
    await take_outbox(engine)

    error_of(await client.delete(url, headers={"If-Match": '"1"'}), 412, "stale_version")
    assert (await client.delete(url, headers={"If-Match": '"2"'})).status_code == 204
    assert await take_outbox(engine) == [
        ("card", card["id"], 3, True),
        ("card_progress", progress["id"], 2, True),
    ]
    error_of(await client.get(url), 404, "not_found")
    error_of(await client.get(f"/v1/learners/bob/cards/{card['id']}"), 404, "not_found")
    error_of(await client.delete(url), 404, "not_found")
