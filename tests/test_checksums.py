"""State checksums: the relay's counts and checksums always equal a full recount of the live
published rows, after random writes, reviews, deletes, backfills, repairs, prunes and a new
epoch; and they equal what a consumer computes from the feed."""

from __future__ import annotations

import contextlib
import random
from datetime import timedelta

import pytest
from sqlalchemy import delete, select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import checksums, feed, scheduling, store, target_store
from studypub.backfill import run_backfill
from studypub.db import read_session_factory, session_factory
from studypub.errors import Conflict, NotFound
from studypub.models import CardProgress, FeedChecksum, Topic, utcnow
from studypub.projection import KINDS, SHARED
from studypub.relay import Relay
from studypub.scheduling import ReviewRating
from studypub.targets import TARGETS
from studypub.verify import verify, verify_checksums
from tests.support.content import churn, delete_card, write_content

pytestmark = pytest.mark.timeout(120)


async def kept_and_recounted(
    engine: AsyncEngine,
) -> tuple[dict[tuple[str, str], checksums.State], dict[tuple[str, str], checksums.State]]:
    async with read_session_factory(engine)() as session:
        kept = await target_store.read_checksum_rows(session, KINDS)
        recounted = await target_store.recount_checksums(session, KINDS)
        rows = (await session.execute(select(FeedChecksum))).scalars().all()
    for row in rows:
        if not row.entries:  # a (kind, scope) whose entries all went: back to zero sums
            assert (row.sum_hi, row.sum_lo) == (0, 0), (row.kind, row.scope)
    return kept, recounted


async def assert_exact(engine: AsyncEngine) -> None:
    kept, recounted = await kept_and_recounted(engine)
    assert kept == recounted
    assert {kind for kind, _ in kept} >= {"topic", "question", "card"}, "nothing published?"
    # ... and what a consumer computes from the whole feed, per kind.
    entries: list[dict] = []
    cursor = feed.START
    while True:
        async with read_session_factory(engine)() as session:
            page = await feed.read_feed(session, cursor, 1000)
        entries += page.entries
        cursor = page.last_seq
        if not page.pending:
            break
    per_kind: dict[str, checksums.State] = {}
    for (kind, _scope), state in recounted.items():
        total = per_kind.setdefault(kind, checksums.State())
        total.entries += state.entries
        total.sum_hi += state.sum_hi
        total.sum_lo += state.sum_lo
    consumer = checksums.of_entries(entries)
    assert {k: s.as_json() for k, s in consumer.items()} == {
        k: s.as_json() for k, s in per_kind.items()
    }


async def review_some(engine: AsyncEngine, cards: list[int], rng: random.Random) -> None:
    async with session_factory(engine)() as session, session.begin():
        for card in rng.sample(cards, k=min(4, len(cards))):
            learner = rng.choice(["ana", "ben", "cleo"])
            with contextlib.suppress(Conflict):  # already in the deck
                await scheduling.add_card_to_deck(session, card, learner)
    async with session_factory(engine)() as session, session.begin():
        for card in rng.sample(cards, k=min(4, len(cards))):
            for learner in ("ana", "ben"):
                with contextlib.suppress(NotFound):  # not in this learner's deck
                    await scheduling.rate_card(session, card, learner, ReviewRating.GOOD)


async def test_the_checksums_equal_a_recount_through_every_kind_of_change(
    migrated: AsyncEngine,
) -> None:
    engine = migrated
    rng = random.Random(7)
    relay = Relay(engine, listen=False)
    made = await write_content(engine, topics=3, per_topic=4)
    await relay.run_once()
    await assert_exact(engine)

    for _ in range(3):  # writes, updates, deletes and reviews, in small transactions
        await churn(engine, rounds=2)
        await review_some(engine, made.cards, rng)
        await delete_card(engine, made.cards.pop())
        await relay.run_once()
        await assert_exact(engine)

    # A backfill republishes everything (unchanged rows change nothing) ...
    await run_backfill(engine, TARGETS, restart=True)
    await relay.run_once()
    await assert_exact(engine)

    # ... a change behind studypub's back, repaired by verify (at the same version) ...
    async with engine.begin() as conn:
        await conn.execute(update(Topic).where(Topic.id == made.topics[0]).values(title="edit"))
        await conn.execute(delete(CardProgress).where(CardProgress.learner == "ben"))
    await verify(engine, TARGETS, repair=True)
    await relay.run_once()
    await assert_exact(engine)
    async with read_session_factory(engine)() as session:
        ben = await store.read_checksums(session, kinds=["card_progress"], scope="ben")
    assert ben == {}, "ben's progress rows are gone: his scope holds nothing live"

    # ... a prune (tombstones only: the live state does not move) and a new epoch.
    async with session_factory(engine)() as session, session.begin():
        await feed.prune_tombstones(
            session, older_than=timedelta(hours=1), now=utcnow() + timedelta(hours=2)
        )
        await feed.start_new_epoch(session)
    await assert_exact(engine)


async def test_a_learners_checksums_are_the_shared_ones_and_its_own(engine: AsyncEngine) -> None:
    made = await write_content(engine, topics=1, per_topic=3)
    async with session_factory(engine)() as session, session.begin():
        for learner in ("ana", "ben"):
            for card in made.cards:
                await scheduling.add_card_to_deck(session, card, learner)
    await Relay(engine, listen=False).run_once()
    async with read_session_factory(engine)() as session:
        rows = await target_store.read_checksum_rows(session, KINDS)
        ana = await store.read_checksums(session, kinds=None, scope="ana")
        everyone = await store.read_checksums(session, kinds=None, scope=None)
        cards = await store.read_checksums(session, kinds=["card"], scope="ana")
    assert ana["card_progress"] == rows[("card_progress", "ana")]
    assert ana["topic"] == rows[("topic", SHARED)] == everyone["topic"]
    assert everyone["card_progress"].entries == 2 * len(made.cards)
    assert set(cards) == {"card"}


async def test_verify_finds_checksums_that_drifted_and_repair_recounts(
    engine: AsyncEngine,
) -> None:
    await write_content(engine, topics=1, per_topic=2)
    await Relay(engine, listen=False).run_once()
    async with engine.begin() as conn:
        await conn.execute(
            update(FeedChecksum)
            .where(FeedChecksum.kind == "topic")
            .values(sum_lo=FeedChecksum.sum_lo + 1)
        )
    assert (await verify_checksums(engine, TARGETS)).drifted == ["topic"]
    assert (await verify_checksums(engine, TARGETS[1:])).drifted == []  # not topics: not asked
    check = await verify_checksums(engine, TARGETS, repair=True)
    assert check.drifted == ["topic"] and check.repaired
    kept, recounted = await kept_and_recounted(engine)
    assert kept == recounted
    assert (await verify_checksums(engine, TARGETS)).drifted == []
