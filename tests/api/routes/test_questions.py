"""``/v1/questions`` and the explanation endpoint over the real app on both databases."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.http import create_card, create_question, error_of
from tests.support.outbox import take_outbox


async def test_create_get_list(
    engine: AsyncEngine, client: httpx.AsyncClient, topic: dict[str, Any]
) -> None:
    body = {"topic_id": topic["id"], "stem": "2 + 2?", "choices": ["3", "4"], "answer": "4"}
    response = await client.post("/v1/questions", json=body)
    assert response.status_code == 201, response.text
    question = response.json()
    assert {k: question[k] for k in body} == body
    assert question["explanation_status"] == "pending" and question["explanation"] is None
    assert response.headers["Location"] == f"/v1/questions/{question['id']}"
    assert response.headers["ETag"] == '"1"'
    # A new question is published; its explanation is not ready, so a tombstone.
    assert await take_outbox(engine) == [
        ("question", question["id"], 1, False),
        ("explanation", question["id"], 1, True),
    ]
    assert (await client.get(f"/v1/questions/{question['id']}")).json() == question
    page = (await client.get("/v1/questions", params={"topic_id": topic["id"]})).json()
    assert [q["id"] for q in page["items"]] == [question["id"]]
    other = (await client.get("/v1/questions", params={"topic_id": topic["id"] + 1})).json()
    assert other["items"] == []


@pytest.mark.parametrize(
    ("changes", "status", "needle"),
    [
        ({"answer": "z"}, 422, "not one of the choices"),
        ({"choices": ["a"]}, 422, "too_short"),
        ({"choices": [str(i) for i in range(11)], "answer": "1"}, 422, "too_long"),
        ({"choices": ["a", "a"]}, 422, "choices must be unique"),
        ({"choices": ["a", "b" * 1001]}, 422, "string_too_long"),
        ({"choices": ["a", " "]}, 422, "string_pattern_mismatch"),
        ({"stem": "s" * 20_001}, 422, "string_too_long"),
        ({"topic_id": 0}, 422, "greater_than_equal"),
        ({"topic_id": "1"}, 422, "must be a JSON number"),
        ({"explanation": "sneaky"}, 422, "extra_forbidden"),
    ],
)
async def test_create_refuses_bad_input(
    engine: AsyncEngine,
    client: httpx.AsyncClient,
    topic: dict[str, Any],
    changes: dict[str, Any],
    status: int,
    needle: str,
) -> None:
    body = {"topic_id": topic["id"], "stem": "Which?", "choices": ["a", "b"], "answer": "a"}
    body.update(changes)
    detail = error_of(await client.post("/v1/questions", json=body), status, "invalid_input")
    assert needle in str(detail)
    assert await take_outbox(engine) == []


async def test_create_in_a_missing_topic_conflicts(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    body = {"topic_id": 999, "stem": "Which?", "choices": ["a", "b"], "answer": "a"}
    detail = error_of(await client.post("/v1/questions", json=body), 409, "missing_reference")
    assert detail == "topic_id: topic 999 does not exist or is deleted"
    assert await take_outbox(engine) == []


async def test_patch(engine: AsyncEngine, client: httpx.AsyncClient, topic: dict[str, Any]) -> None:
    question = await create_question(client, topic["id"])
    url = f"/v1/questions/{question['id']}"
    await take_outbox(engine)

    # Choices without the stored answer: the state refuses it. Both given, the body itself.
    detail = error_of(await client.patch(url, json={"choices": ["x", "y"]}), 409, "conflict")
    assert "'b' is not one of the question's choices" in detail
    body = {"choices": ["x", "y"], "answer": "z"}
    detail = error_of(await client.patch(url, json=body), 422, "invalid_input")
    assert "'z' is not one of the choices" in detail
    error_of(await client.patch(url, json={"answer": None}), 422, "invalid_input")
    error_of(
        await client.patch(url, json={"stem": "new"}, headers={"If-Match": "2"}),
        412,
        "stale_version",
    )
    assert await take_outbox(engine) == []

    response = await client.patch(
        url, json={"choices": ["x", "y"], "answer": "y"}, headers={"If-Match": '"1"'}
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"] == ["x", "y"] and response.json()["version"] == 2
    assert response.headers["ETag"] == '"2"'
    assert await take_outbox(engine) == [
        ("question", question["id"], 2, False),
        ("explanation", question["id"], 2, True),
    ]
    error_of(await client.patch("/v1/questions/99", json={"stem": "x"}), 404, "not_found")


async def test_explanation(
    engine: AsyncEngine, client: httpx.AsyncClient, topic: dict[str, Any]
) -> None:
    question = await create_question(client, topic["id"])
    url = f"/v1/questions/{question['id']}/explanation"
    await take_outbox(engine)

    ready = await client.put(url, json={"body": "Because b."}, headers={"If-Match": '"1"'})
    assert ready.status_code == 200, ready.text
    assert ready.json()["explanation_status"] == "ready"
    assert ready.json()["explanation"] == "Because b."
    assert ready.headers["ETag"] == '"2"'
    assert await take_outbox(engine) == [
        ("question", question["id"], 2, False),
        ("explanation", question["id"], 2, False),
    ]

    failed = await client.put(url, json={"status": "failed", "error": "model timed out"})
    assert failed.json()["explanation_status"] == "failed"
    assert failed.json()["explanation_error"] == "model timed out"
    assert await take_outbox(engine) == [
        ("question", question["id"], 3, False),
        ("explanation", question["id"], 3, True),
    ]
    pending = await client.put(url, json={"status": "pending"})
    assert pending.json()["explanation_status"] == "pending"
    await take_outbox(engine)

    for bad in (
        {},
        {"body": ""},
        {"body": "b" * 20_001},
        {"status": "failed"},
        {"status": "ready"},
        {"status": "done", "body": "x"},
        {"body": "x", "extra": 1},
        {"status": "pending", "body": "x"},
        {"body": "x", "error": "y"},
    ):
        error_of(await client.put(url, json=bad), 422, "invalid_input")
    detail = error_of(await client.put(url, json={"status": "failed"}), 422, "invalid_input")
    assert [e["msg"] for e in detail] == ["Value error, status 'failed' needs 'error'"]
    error_of(
        await client.put(url, json={"body": "x"}, headers={"If-Match": "1"}), 412, "stale_version"
    )
    error_of(await client.put("/v1/questions/99/explanation", json={"body": "x"}), 404, "not_found")
    assert await take_outbox(engine) == []


async def test_delete(
    engine: AsyncEngine, client: httpx.AsyncClient, topic: dict[str, Any]
) -> None:
    question = await create_question(client, topic["id"])
    url = f"/v1/questions/{question['id']}"
    card = await client.post(
        "/v1/cards",
        json={"topic_id": topic["id"], "front": "f", "back": "b", "question_id": question["id"]},
    )
    await take_outbox(engine)
    assert "1 live card(s)" in error_of(await client.delete(url), 409, "conflict")
    assert await take_outbox(engine) == []
    await client.delete(f"/v1/cards/{card.json()['id']}")
    await take_outbox(engine)

    assert (await client.delete(url)).status_code == 204
    assert await take_outbox(engine) == [
        ("question", question["id"], 2, True),
        ("explanation", question["id"], 2, True),
    ]
    error_of(await client.get(url), 404, "not_found")
    error_of(await client.delete(url), 404, "not_found")
    # A deleted question cannot be linked from a new card.
    response = await client.post(
        "/v1/cards",
        json={"topic_id": topic["id"], "front": "f", "back": "b", "question_id": question["id"]},
    )
    assert "does not exist or is deleted" in error_of(response, 409, "missing_reference")
    assert await create_card(client, topic["id"])  # the topic itself is still fine
