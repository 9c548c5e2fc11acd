"""From the authoring API through the relay to the feed, on both databases.

Each step writes through HTTP, runs the relay until the outbox is drained, and reads the
feed from 0 as a new consumer would: the compacted feed must be exactly the current state.
"""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import feed
from studypub.db import read_session_factory
from studypub.relay import Relay
from tests.support.outbox import outbox_rows

Key = tuple[str, int]


async def publish(engine: AsyncEngine) -> dict[Key, dict[str, Any]]:
    """Relay everything enqueued, then the whole feed from 0 by (kind, id)."""
    await Relay(engine, listen=False).run_once()
    assert await outbox_rows(engine) == []
    async with read_session_factory(engine)() as session:
        page = await feed.read_feed(session, feed.START, feed.MAX_LIMIT)
    seqs = [entry["seq"] for entry in page.entries]
    assert seqs == sorted(set(seqs))  # in seq order, each once
    entries = {(entry["kind"], entry["id"]): entry for entry in page.entries}
    assert len(entries) == len(page.entries)  # compacted: one entry per entity
    return entries


async def ok(response: httpx.Response, status: int = 200) -> dict[str, Any]:
    assert response.status_code == status, response.text
    return dict(response.json()) if response.content else {}


async def test_authoring_reaches_the_feed(engine: AsyncEngine, client: httpx.AsyncClient) -> None:
    # Create: the topic and question are published; the unready explanation and the
    # card in review are tombstones of entities never published, so not in the feed.
    topic = await ok(await client.post("/v1/topics", json={"title": "Cells"}), 201)
    question = await ok(
        await client.post(
            "/v1/questions",
            json={
                "topic_id": topic["id"],
                "stem": "Powerhouse?",
                "choices": ["ER", "Mito"],
                "answer": "Mito",
            },
        ),
        201,
    )
    card = await ok(
        await client.post(
            "/v1/cards",
            json={
                "topic_id": topic["id"],
                "question_id": question["id"],
                "front": "Mito",
                "back": "Makes ATP",
            },
        ),
        201,
    )
    state = await publish(engine)
    assert set(state) == {("topic", topic["id"]), ("question", question["id"])}
    assert state[("topic", topic["id"])]["payload"] == {
        "id": topic["id"],
        "title": "Cells",
        "description": "",
    }

    # Update: the entry moves forward to the new version with a new seq.
    before = state[("question", question["id"])]["seq"]
    await ok(await client.patch(f"/v1/questions/{question['id']}", json={"stem": "Which?"}))
    state = await publish(engine)
    entry = state[("question", question["id"])]
    assert (entry["version"], entry["payload"]["stem"]) == (2, "Which?")
    assert entry["seq"] > before

    # Explanation ready: now in the feed.
    await ok(await client.put(f"/v1/questions/{question['id']}/explanation", json={"body": "ATP."}))
    state = await publish(engine)
    explanation = state[("explanation", question["id"])]
    assert explanation["deleted"] is False
    assert explanation["payload"] == {
        "id": question["id"],
        "question_id": question["id"],
        "body": "ATP.",
    }

    # Card approved: published. Sent back to review: a tombstone replaces it.
    await ok(await client.post(f"/v1/cards/{card['id']}/approve"))
    state = await publish(engine)
    assert state[("card", card["id"])]["deleted"] is False
    assert state[("card", card["id"])]["payload"]["back"] == "Makes ATP"
    await ok(await client.post(f"/v1/cards/{card['id']}/review"))
    state = await publish(engine)
    assert state[("card", card["id"])]["deleted"] is True
    assert state[("card", card["id"])]["payload"] == {}
    assert state[("card", card["id"])]["version"] == 3

    # Reviews: progress entries carry the FSRS schedule, new rows unscheduled (due_at null).
    await ok(await client.post(f"/v1/cards/{card['id']}/approve"))
    learners = ["alice", "bob"]
    progress = {
        who: await ok(await client.post(f"/v1/learners/{who}/cards/{card['id']}"), 201)
        for who in learners
    }
    rated = await ok(
        await client.post(
            f"/v1/learners/alice/cards/{card['id']}/reviews",
            json={"rating": "good", "reviewed_at": "2026-05-01T10:00:00Z"},
        )
    )
    state = await publish(engine)
    alice = state[("card_progress", progress["alice"]["id"])]["payload"]
    bob = state[("card_progress", progress["bob"]["id"])]["payload"]
    assert (alice["state"], alice["reps"]) == ("learning", 1)
    assert alice["due_at"] == "2026-05-01T10:10:00.000000Z"
    assert alice["last_review_at"] == "2026-05-01T10:00:00.000000Z"
    assert alice["stability"] == pytest.approx(rated["stability"])
    assert (bob["state"], bob["due_at"]) == ("new", None)
    assert state[("card", card["id"])]["deleted"] is False

    # Retire: a tombstone for the card, every learner's progress entry terminal.
    await ok(await client.post(f"/v1/cards/{card['id']}/retire"))
    state = await publish(engine)
    assert state[("card", card["id"])]["deleted"] is True
    for who in learners:
        entry = state[("card_progress", progress[who]["id"])]
        assert entry["deleted"] is False
        assert (entry["payload"]["state"], entry["payload"]["due_at"]) == ("retired", None)

    # The feed is exactly the current state: every published entity, each once.
    assert set(state) == {
        ("topic", topic["id"]),
        ("question", question["id"]),
        ("explanation", question["id"]),
        ("card", card["id"]),
        ("card_progress", progress["alice"]["id"]),
        ("card_progress", progress["bob"]["id"]),
    }
