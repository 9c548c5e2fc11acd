"""``/v1/topics`` over the real app on both databases; auth and the shared HTTP rules too."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.http import create_question, create_topic, error_of
from tests.support.outbox import take_outbox

AUTHORING_ROUTES = [
    ("POST", "/v1/topics"),
    ("GET", "/v1/topics"),
    ("GET", "/v1/topics/1"),
    ("PATCH", "/v1/topics/1"),
    ("DELETE", "/v1/topics/1"),
    ("POST", "/v1/questions"),
    ("GET", "/v1/questions"),
    ("GET", "/v1/questions/1"),
    ("PATCH", "/v1/questions/1"),
    ("DELETE", "/v1/questions/1"),
    ("PUT", "/v1/questions/1/explanation"),
    ("POST", "/v1/cards"),
    ("GET", "/v1/cards"),
    ("GET", "/v1/cards/1"),
    ("PATCH", "/v1/cards/1"),
    ("DELETE", "/v1/cards/1"),
    ("POST", "/v1/cards/1/approve"),
    ("POST", "/v1/cards/1/review"),
    ("POST", "/v1/cards/1/retire"),
    ("POST", "/v1/learners/alice/cards/1"),
    ("GET", "/v1/learners/alice/cards/1"),
    ("POST", "/v1/learners/alice/cards/1/reviews"),
    ("POST", "/v1/learners/alice/cards/1/suspend"),
]


@pytest.mark.parametrize(
    "authorization", [None, "Bearer wrong-token", "Basic YTpi", "Bearer"], ids=str
)
async def test_every_authoring_route_needs_the_author_token(
    engine: AsyncEngine, client: httpx.AsyncClient, authorization: str | None
) -> None:
    await create_topic(client)
    await take_outbox(engine)
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path in AUTHORING_ROUTES:
        client.headers.pop("Authorization", None)
        response = await client.request(method, path, json={"title": "x"}, headers=headers)
        error_of(response, 401, "unauthorized")
        assert response.headers["WWW-Authenticate"] == "Bearer"
    assert await take_outbox(engine) == []


async def test_create_and_get(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/topics", json={"title": "Cells", "description": "life"})
    assert response.status_code == 201
    topic = response.json()
    assert topic["title"] == "Cells" and topic["description"] == "life"
    assert topic["version"] == 1
    assert response.headers["Location"] == f"/v1/topics/{topic['id']}"
    assert response.headers["ETag"] == '"1"'
    assert await take_outbox(engine) == [("topic", topic["id"], 1, False)]

    got = await client.get(response.headers["Location"])
    assert got.status_code == 200 and got.json() == topic
    assert got.headers["ETag"] == '"1"'


@pytest.mark.parametrize(
    ("body", "where"),
    [
        ({"title": "x" * 201}, ["body", "title"]),
        ({"title": "   "}, ["body", "title"]),
        ({"title": ""}, ["body", "title"]),
        ({}, ["body", "title"]),
        ({"title": "ok", "colour": "red"}, ["body", "colour"]),
        ({"title": "ok", "description": "d" * 20_001}, ["body", "description"]),
        ({"title": 5}, ["body", "title"]),
        ({"title": "a\u0000b"}, ["body", "title"]),  # PostgreSQL cannot store it
        ({"title": "ok", "description": "\u0000"}, ["body", "description"]),
        ({"title": "\u3000\u2028"}, ["body", "title"]),  # Unicode spaces are blank too
    ],
)
async def test_create_refuses_bad_input(
    engine: AsyncEngine, client: httpx.AsyncClient, body: dict[str, object], where: list[str]
) -> None:
    detail = error_of(await client.post("/v1/topics", json=body), 422, "invalid_input")
    assert [e["loc"] for e in detail] == [where]
    assert await take_outbox(engine) == []


async def test_a_lone_surrogate_is_invalid_input(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    """JSON can spell half a UTF-16 pair; it is not text, and no database can store it."""
    body = b'{"title": "a\\ud800b"}'
    response = await client.post(
        "/v1/topics", content=body, headers={"Content-Type": "application/json"}
    )
    [error] = error_of(response, 422, "invalid_input")
    assert (error["loc"], error["type"]) == (["body", "title"], "string_unicode")
    assert await take_outbox(engine) == []


async def test_malformed_json_is_invalid_input(client: httpx.AsyncClient) -> None:
    response = await client.post(
        "/v1/topics", content=b'{"title": ', headers={"Content-Type": "application/json"}
    )
    error_of(response, 422, "invalid_input")


async def test_body_over_one_mebibyte_is_refused(
    engine: AsyncEngine, client: httpx.AsyncClient
) -> None:
    big = b'{"title": "x", "description": "' + b"d" * (1024 * 1024) + b'"}'
    response = await client.post(
        "/v1/topics", content=big, headers={"Content-Type": "application/json"}
    )
    error_of(response, 413, "payload_too_large")

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(20):
            yield b"d" * 60_000

    streamed = await client.post(
        "/v1/topics", content=chunks(), headers={"Content-Type": "application/json"}
    )
    error_of(streamed, 413, "payload_too_large")
    assert await take_outbox(engine) == []


async def test_get_unknown_and_bad_ids(client: httpx.AsyncClient) -> None:
    assert error_of(await client.get("/v1/topics/99"), 404, "not_found") == "topic 99 not found"
    error_of(await client.get("/v1/topics/0"), 422, "invalid_input")
    error_of(await client.get("/v1/topics/abc"), 422, "invalid_input")
    error_of(await client.get(f"/v1/topics/{2**63}"), 422, "invalid_input")


async def test_list_pages(client: httpx.AsyncClient) -> None:
    ids = [(await create_topic(client, f"t{i}"))["id"] for i in range(3)]
    first = (await client.get("/v1/topics", params={"limit": 2})).json()
    assert [t["id"] for t in first["items"]] == ids[:2]
    assert first["next_after_id"] == ids[1]
    rest = (await client.get("/v1/topics", params={"after_id": ids[1], "limit": 2})).json()
    assert [t["id"] for t in rest["items"]] == ids[2:]
    assert rest["next_after_id"] is None
    for params in ({"limit": 0}, {"limit": 201}, {"after_id": -1}):
        error_of(await client.get("/v1/topics", params=params), 422, "invalid_input")


@pytest.mark.parametrize("if_match", ['"1"', "1", 'W/"1"', "*"])
async def test_patch_with_if_match(
    engine: AsyncEngine, client: httpx.AsyncClient, if_match: str
) -> None:
    topic = await create_topic(client)
    await take_outbox(engine)
    response = await client.patch(
        f"/v1/topics/{topic['id']}", json={"description": "new"}, headers={"If-Match": if_match}
    )
    assert response.status_code == 200, response.text
    assert response.json()["description"] == "new" and response.json()["title"] == "Cells"
    assert response.headers["ETag"] == '"2"'
    assert await take_outbox(engine) == [("topic", topic["id"], 2, False)]


async def test_patch_refusals(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    topic = await create_topic(client)
    url = f"/v1/topics/{topic['id']}"
    await client.patch(url, json={"title": "v2"})
    await take_outbox(engine)

    stale = await client.patch(url, json={"title": "x"}, headers={"If-Match": '"1"'})
    detail = error_of(stale, 412, "stale_version")
    assert detail["current_version"] == 2
    assert stale.headers["ETag"] == '"2"'
    for bad in ("abc", '"1', "W/1x", "-1"):
        detail = error_of(
            await client.patch(url, json={"title": "x"}, headers={"If-Match": bad}),
            422,
            "invalid_input",
        )
        assert "If-Match must be a version" in detail
    error_of(await client.patch(url, json={"title": None}), 422, "invalid_input")
    error_of(await client.patch(url, json={"id": 3}), 422, "invalid_input")
    error_of(await client.patch("/v1/topics/99", json={"title": "x"}), 404, "not_found")
    assert (await client.get(url)).json()["title"] == "v2"
    assert await take_outbox(engine) == []


async def test_delete(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    topic = await create_topic(client)
    url = f"/v1/topics/{topic['id']}"
    question = await create_question(client, topic["id"])
    await take_outbox(engine)

    detail = error_of(await client.delete(url), 409, "conflict")
    assert "1 live question(s)" in detail
    await client.delete(f"/v1/questions/{question['id']}")
    await take_outbox(engine)

    error_of(await client.delete(url, headers={"If-Match": '"7"'}), 412, "stale_version")
    response = await client.delete(url, headers={"If-Match": '"1"'})
    assert response.status_code == 204 and response.content == b""
    assert await take_outbox(engine) == [("topic", topic["id"], 2, True)]
    error_of(await client.get(url), 404, "not_found")
    error_of(await client.delete(url), 404, "not_found")
    assert await take_outbox(engine) == []


async def test_openapi_and_docs_are_served(client: httpx.AsyncClient) -> None:
    client.headers.clear()
    schema = (await client.get("/openapi.json")).json()
    assert "/v1/topics/{topic_id}" in schema["paths"]
    patch = schema["paths"]["/v1/topics/{topic_id}"]["patch"]
    assert {"401", "404", "412", "413", "422"} <= set(patch["responses"])
    assert (await client.get("/docs")).status_code == 200


async def test_unknown_query_parameters_are_refused(client: httpx.AsyncClient) -> None:
    detail = error_of(await client.get("/v1/topics", params={"limt": 5}), 422, "invalid_input")
    assert detail == "unknown query parameter 'limt'; allowed: after_id, limit"
    detail = error_of(await client.get("/v1/topics/1", params={"x": 1}), 422, "invalid_input")
    assert detail == "unknown query parameter 'x'; allowed: none"


async def test_method_not_allowed_lists_every_method_of_the_path(
    client: httpx.AsyncClient,
) -> None:
    response = await client.put("/v1/topics")
    error_of(response, 405, "method_not_allowed")
    assert set(response.headers["Allow"].split(", ")) >= {"GET", "POST"}


@pytest.mark.parametrize(
    ("method", "path"), [r for r in AUTHORING_ROUTES if r[0] in ("POST", "PATCH", "PUT")]
)
async def test_every_write_route_refuses_a_body_over_one_mebibyte(
    engine: AsyncEngine, client: httpx.AsyncClient, method: str, path: str
) -> None:
    big = b'{"title": "' + b"t" * (1024 * 1024) + b'"}'
    response = await client.request(
        method, path, content=big, headers={"Content-Type": "application/json"}
    )
    error_of(response, 413, "payload_too_large")
    assert await take_outbox(engine) == []
