"""Idempotency keys in the service layer, on both databases: claim, replay, expiry, prune.

The duplicate tests hold the first transaction open while the second claims the same key,
so that the second must wait for it (SQLite: at ``BEGIN IMMEDIATE``; PostgreSQL: at the
primary key of its insert) and then follow whatever the first did.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import func, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import idempotency
from studypub.errors import Conflict
from studypub.idempotency import KEY_TTL, StoredResponse, claim, delete_expired, save
from studypub.models import IdempotencyKey

Sessions = async_sessionmaker[AsyncSession]
T0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
FIRST = StoredResponse(200, {"reps": 1}, '"2"')
SECOND = StoredResponse(200, {"reps": 1, "by": "duplicate"}, '"2"')
WAIT_S = 0.3  # long enough for the duplicate to reach its wait


def fingerprint(rating: str = "good") -> str:
    return idempotency.request_fingerprint("POST", "/v1/x/reviews", {"rating": rating})


async def count(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int(await conn.scalar(select(func.count()).select_from(IdempotencyKey)) or 0)


async def stored(sessions: Sessions, key: str) -> StoredResponse | None:
    async with sessions() as session, session.begin():
        return await claim(session, key, fingerprint(), now=T0)


async def duplicate(sessions: Sessions, key: str) -> StoredResponse | None:
    """A duplicate request: replays what it gets, or runs itself (stores SECOND)."""
    async with sessions() as session, session.begin():
        replay = await claim(session, key, fingerprint(), now=T0)
        if replay is None:
            await save(session, key, SECOND)
        return replay


@pytest.mark.parametrize("first_commits", [True, False], ids=["commits", "rolls-back"])
async def test_a_duplicate_waits_for_the_first_request_and_follows_it(
    engine: AsyncEngine, sessions: Sessions, first_commits: bool
) -> None:
    async with sessions() as first:
        await first.begin()
        assert await claim(first, "k", fingerprint(), now=T0) is None
        second = asyncio.create_task(duplicate(sessions, "k"))
        await asyncio.sleep(WAIT_S)
        assert not second.done()  # held back by the first transaction
        await save(first, "k", FIRST)
        await (first.commit() if first_commits else first.rollback())
    # Committed: the duplicate replays it. Rolled back: the key is free, the duplicate runs.
    assert await asyncio.wait_for(second, 10) == (FIRST if first_commits else None)
    assert await stored(sessions, "k") == (FIRST if first_commits else SECOND)
    assert await count(engine) == 1


async def test_a_claim_replays_or_refuses_by_fingerprint(sessions: Sessions) -> None:
    async with sessions() as session, session.begin():
        assert await claim(session, "k", fingerprint(), now=T0) is None
        await save(session, "k", FIRST)
    async with sessions() as session, session.begin():
        assert await claim(session, "k", fingerprint(), now=T0 + timedelta(hours=1)) == FIRST
        with pytest.raises(Conflict, match="'k' was already used for another request"):
            await claim(session, "k", fingerprint("easy"), now=T0)


async def test_an_expired_key_is_free_again_and_pruned(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    for key, at in (("old", T0), ("new", T0 + timedelta(hours=1))):
        async with sessions() as session, session.begin():
            await claim(session, key, fingerprint(), now=at)
            await save(session, key, FIRST)

    later = T0 + KEY_TTL + timedelta(seconds=1)
    async with sessions() as session, session.begin():
        # Not yet pruned, but past its time: another request may take the key.
        assert await claim(session, "old", fingerprint("easy"), now=later) is None
        await save(session, "old", StoredResponse(200, {"reps": 2}))
    async with sessions() as session, session.begin():
        assert await delete_expired(session, now=T0 + KEY_TTL) == 0  # kept 24 h, not less
        assert await delete_expired(session, now=later + KEY_TTL) == 1  # "new" only
    assert await count(engine) == 1
    async with sessions() as session, session.begin():
        assert await claim(session, "old", fingerprint("easy"), now=later) == StoredResponse(
            200, {"reps": 2}, None
        )


def test_the_fingerprint_is_of_the_request_not_its_spelling() -> None:
    same = idempotency.request_fingerprint("post", "/p", {"b": [1, 2], "a": "é"})
    assert same == idempotency.request_fingerprint("POST", "/p", {"a": "é", "b": [1, 2]})
    assert len(same) == 64 and int(same, 16) >= 0
    for other in (
        ("PUT", "/p", {"a": "é", "b": [1, 2]}),
        ("POST", "/q", {"a": "é", "b": [1, 2]}),
        ("POST", "/p", {"a": "é", "b": [2, 1]}),
        ("POST", "/p", None),
    ):
        assert idempotency.request_fingerprint(*other) != same
