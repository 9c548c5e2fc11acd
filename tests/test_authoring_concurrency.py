"""Concurrent authoring writes on both databases: writers released together by a barrier.

The row locks of the service layer (PostgreSQL) and ``BEGIN IMMEDIATE`` (SQLite) must make
optimistic concurrency exact: of N writers holding the same version, one wins, every other
gets ``StaleVersion``, and only the winner's outbox rows exist.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import authoring, outbox, scheduling
from studypub.errors import Conflict, StaleVersion
from tests.support.outbox import take_outbox

Sessions = async_sessionmaker[AsyncSession]
WRITERS = 5


async def together(
    sessions: Sessions, work: Callable[[AsyncSession, int], Awaitable[Any]], n: int = WRITERS
) -> list[Any]:
    """Run ``work`` in ``n`` transactions released at once; results or exceptions."""
    barrier = asyncio.Event()

    async def one(i: int) -> Any:
        await barrier.wait()
        async with sessions() as session, session.begin():
            return await work(session, i)

    tasks = [asyncio.create_task(one(i)) for i in range(n)]
    await asyncio.sleep(0)
    barrier.set()
    return await asyncio.gather(*tasks, return_exceptions=True)


async def make_topic(sessions: Sessions) -> int:
    async with sessions() as session, session.begin():
        return (await authoring.create_topic(session, title="Cells")).id


async def test_one_of_many_writers_with_the_same_version_wins(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic_id = await make_topic(sessions)
    await take_outbox(engine)
    results = await together(
        sessions,
        lambda s, i: authoring.update_topic(s, topic_id, expected_version=1, title=f"t{i}"),
    )
    winners = [r for r in results if not isinstance(r, BaseException)]
    losers = [r for r in results if isinstance(r, BaseException)]
    assert len(winners) == 1, results
    assert all(isinstance(r, StaleVersion) and r.current_version == 2 for r in losers), losers
    assert await take_outbox(engine) == [("topic", topic_id, 2, False)]


async def test_writers_without_a_version_all_apply_in_turn(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic_id = await make_topic(sessions)
    await take_outbox(engine)
    results = await together(
        sessions, lambda s, i: authoring.update_topic(s, topic_id, title=f"t{i}")
    )
    assert not [r for r in results if isinstance(r, BaseException)], results
    rows = await take_outbox(engine)
    assert sorted(version for _, _, version, _ in rows) == list(range(2, 2 + WRITERS))


async def test_adding_the_same_card_at_once_adds_it_once(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic_id = await make_topic(sessions)
    async with sessions() as session, session.begin():
        card = await authoring.create_card(session, topic_id=topic_id, front="f", back="b")
        await authoring.approve_card(session, card.id)
    await take_outbox(engine)
    results = await together(sessions, lambda s, i: scheduling.add_card_to_deck(s, card.id, "al"))
    assert len([r for r in results if not isinstance(r, BaseException)]) == 1, results
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException))
    assert len(await take_outbox(engine)) == 1


async def test_retire_racing_reviews_and_adds_leaves_no_live_progress(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    """Lock order card -> progress everywhere: no deadlock, and every progress row of a
    retired card ends retired, whichever transaction came first."""
    topic_id = await make_topic(sessions)
    async with sessions() as session, session.begin():
        card = await authoring.create_card(session, topic_id=topic_id, front="f", back="b")
        await authoring.approve_card(session, card.id)
        for learner in ("a", "b"):
            await scheduling.add_card_to_deck(session, card.id, learner)

    async def work(session: AsyncSession, i: int) -> Any:
        if i == 0:
            return await authoring.retire_card(session, card.id)
        if i < 3:
            return await scheduling.rate_card(session, card.id, "ab"[i - 1], "good")
        return await scheduling.add_card_to_deck(session, card.id, f"new{i}")

    results = await together(sessions, work)
    assert not isinstance(results[0], BaseException), results
    assert all(isinstance(r, Conflict) for r in results if isinstance(r, BaseException)), results
    async with sessions() as session:
        for learner in ["a", "b"] + [f"new{i}" for i in range(3, WRITERS)]:
            try:
                progress = await scheduling.get_progress(session, card.id, learner)
            except Exception:
                continue  # an add that lost to the retire
            assert (progress.state, progress.due_at) == ("retired", None)


async def test_a_failed_enqueue_rolls_back_the_source_write(
    engine: AsyncEngine, sessions: Sessions, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic_id = await make_topic(sessions)
    await take_outbox(engine)

    async def broken(*_args: Any) -> None:
        raise RuntimeError("outbox unavailable")

    monkeypatch.setattr(outbox, "insert_outbox", broken)
    with pytest.raises(RuntimeError):
        async with sessions() as session, session.begin():
            await authoring.update_topic(session, topic_id, title="never")
    monkeypatch.undo()
    async with sessions() as session:
        topic = await authoring.get_topic(session, topic_id)
    assert (topic.title, topic.version) == ("Cells", 1)
    assert await take_outbox(engine) == []
