"""Helpers of the API tests: the real app over the test engine, and common assertions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from authoring_helpers import take_outbox
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.api import create_app
from studypub.settings import Settings

TOKEN = "author-secret"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


@asynccontextmanager
async def api_client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the full app (middleware, error mapping) on ``engine``, with auth."""
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False), author_token=TOKEN
    )
    app = create_app(settings, engine=engine)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=AUTH) as c:
        yield c


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The app's client with the author token (a fixture: import it into a test module)."""
    async with api_client(engine) as c:
        yield c


@pytest.fixture
async def topic(engine: AsyncEngine, client: httpx.AsyncClient) -> dict[str, Any]:
    """One topic, its outbox rows already taken (so a test sees only its own)."""
    created = await create_topic(client)
    await take_outbox(engine)
    return created


def error_of(response: httpx.Response, status: int, code: str) -> Any:
    """Assert an error response (status, JSON code) and return its detail."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code, body
    return body["detail"]


async def create_topic(client: httpx.AsyncClient, title: str = "Cells") -> dict[str, Any]:
    response = await client.post("/v1/topics", json={"title": title})
    assert response.status_code == 201, response.text
    return dict(response.json())


async def create_question(client: httpx.AsyncClient, topic_id: int) -> dict[str, Any]:
    body = {"topic_id": topic_id, "stem": "Which?", "choices": ["a", "b", "c"], "answer": "b"}
    response = await client.post("/v1/questions", json=body)
    assert response.status_code == 201, response.text
    return dict(response.json())


async def create_card(
    client: httpx.AsyncClient, topic_id: int, *, approve: bool = False
) -> dict[str, Any]:
    response = await client.post(
        "/v1/cards", json={"topic_id": topic_id, "front": "front", "back": "back"}
    )
    assert response.status_code == 201, response.text
    card = dict(response.json())
    if approve:
        response = await client.post(f"/v1/cards/{card['id']}/approve")
        assert response.status_code == 200, response.text
        card = dict(response.json())
    return card
