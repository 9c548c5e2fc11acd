"""The app under test and its HTTP side: tokens, the app on a test engine, in-process clients,
common assertions, authoring calls, feed reads and an SSE parser."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.api import create_app
from studypub.relay import Relay
from studypub.settings import Settings

AUTHOR_TOKEN = "author-secret"
VIEWER_TOKEN = "viewer-secret"
TOKEN_SECRET = "a-test-secret-that-signs-viewer-tokens"
AUTH = {"Authorization": f"Bearer {AUTHOR_TOKEN}"}


def make_app(engine: AsyncEngine, *, viewer_token: str | None = None) -> FastAPI:
    """The full app (middleware, error mapping) on ``engine``. Without ``viewer_token`` the
    feed is open (tests of the feed itself read it without tokens); with one, closed."""
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        author_token=AUTHOR_TOKEN,
        viewer_token=viewer_token,
        open_feed=viewer_token is None,
        token_secret=TOKEN_SECRET,
    )
    return create_app(settings, engine)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def fast_relay(engine: AsyncEngine) -> Relay:
    """A relay to serve beside the app, polling often."""
    return Relay(engine, poll_interval_s=0.2)


@asynccontextmanager
async def app_client(
    engine: AsyncEngine, *, viewer_token: str | None = None, headers: dict[str, str] | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of the app on ``engine``, in process (no socket)."""
    transport = httpx.ASGITransport(app=make_app(engine, viewer_token=viewer_token))
    async with httpx.AsyncClient(transport=transport, base_url="http://test", headers=headers) as c:
        yield c


def api_client(engine: AsyncEngine) -> Any:
    """``app_client`` with the author token (context manager)."""
    return app_client(engine, headers=AUTH)


def error_of(response: httpx.Response, status: int, code: str) -> Any:
    """Assert an error response (status, JSON code) and return its detail."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert body["error"] == code, body
    return body["detail"]


# ---------------------------------------------------------------- authoring calls


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


# ---------------------------------------------------------------- the feed


async def read_all(
    client: httpx.AsyncClient, *, since: str = "0", limit: int = 1000
) -> tuple[list[dict[str, Any]], str]:
    """Page the feed from ``since`` until nothing is pending: (entries, last cursor)."""
    entries: list[dict[str, Any]] = []
    cursor = since
    while True:
        response = await client.get("/v1/feed", params={"since": cursor, "limit": limit})
        assert response.status_code == 200, response.text
        page = response.json()
        entries.extend(page["results"])
        cursor = page["last_seq"]
        if page["pending"] == 0 or not page["results"]:
            return entries, cursor


@dataclass
class SseEvent:
    event: str
    id: str | None
    data: str

    def json(self) -> Any:
        return json.loads(self.data)


async def sse_events(response: httpx.Response) -> AsyncIterator[SseEvent | str]:
    """Parse an SSE body: events, and comments as plain strings (e.g. ``"heartbeat"``)."""
    event, event_id, data = "message", None, []
    async for line in response.aiter_lines():
        if line == "":
            if data:
                yield SseEvent(event, event_id, "\n".join(data))
            event, event_id, data = "message", None, []
        elif line.startswith(":"):
            yield line[1:].strip()
        else:
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "event":
                event = value
            elif name == "id":
                event_id = value
            elif name == "data":
                data.append(value)
