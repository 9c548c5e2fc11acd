"""Helpers for the viewer-side tests: content writes, the published state, an SSE reader."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import authoring
from studypub.api import create_app
from studypub.db import session_factory
from studypub.models import Outbox, Published
from studypub.relay import Relay
from studypub.settings import Settings

AUTHOR_TOKEN = "author-secret"
VIEWER_TOKEN = "viewer-secret"

State = dict[tuple[str, int], tuple[int, str]]  # (kind, id) -> (version, hash)


def make_app(engine: AsyncEngine, *, viewer_token: str | None = None) -> Any:
    settings = Settings(
        database_url=engine.url.render_as_string(hide_password=False),
        author_token=AUTHOR_TOKEN,
        viewer_token=viewer_token,
    )
    return create_app(settings, engine)


def fast_relay(engine: AsyncEngine) -> Relay:
    return Relay(engine, poll_interval_s=0.2)


async def published_state(engine: AsyncEngine) -> State:
    """The live published rows, the state a consumer must end up with."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Published.kind, Published.id, Published.version, Published.hash).where(
                Published.deleted.is_(False)
            )
        )
        return {(r.kind, r.id): (r.version, r.hash) for r in rows}


async def drained(engine: AsyncEngine, timeout_s: float = 20.0) -> None:
    """Wait until the relay has processed every outbox row (the feed is up to date)."""
    deadline = time.monotonic() + timeout_s
    while True:
        async with engine.connect() as conn:
            left = (await conn.execute(select(func.count()).select_from(Outbox))).scalar_one()
        if left == 0:
            return
        assert time.monotonic() < deadline, f"the relay left {left} outbox rows"
        await asyncio.sleep(0.05)


def apply_entries(state: State, entries: list[dict[str, Any]]) -> None:
    """What any consumer does with a page: upsert live entries, drop tombstones."""
    for e in entries:
        key = (e["kind"], e["id"])
        if e["deleted"]:
            state.pop(key, None)
        else:
            state[key] = (e["version"], e["hash"])


@dataclass
class Content:
    topics: list[int]
    questions: list[int]
    cards: list[int]


async def write_content(engine: AsyncEngine, *, topics: int = 2, per_topic: int = 4) -> Content:
    """Topics with questions (half the explanations ready) and cards (all approved)."""
    made = Content([], [], [])
    async with session_factory(engine)() as session, session.begin():
        for t in range(topics):
            topic = await authoring.create_topic(session, title=f"Topic {t}", description="d")
            made.topics.append(topic.id)
            for q in range(per_topic):
                question = await authoring.create_question(
                    session,
                    topic_id=topic.id,
                    stem=f"Question {t}.{q}?",
                    choices=["yes", "no"],
                    answer="yes",
                )
                made.questions.append(question.id)
                if q % 2 == 0:
                    await authoring.complete_explanation(session, question.id, f"Because {q}.")
                card = await authoring.create_card(
                    session, topic_id=topic.id, front=f"Front {t}.{q}", back=f"Back {t}.{q}"
                )
                await authoring.approve_card(session, card.id)
                made.cards.append(card.id)
    return made


async def create_topic(engine: AsyncEngine, title: str) -> int:
    async with session_factory(engine)() as session, session.begin():
        return (await authoring.create_topic(session, title=title)).id


async def delete_card(engine: AsyncEngine, card_id: int) -> None:
    async with session_factory(engine)() as session, session.begin():
        await authoring.delete_card(session, card_id)


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
