"""Prune racing feed reads and relays: forced interleavings that used to lose deletions.

Each test runs a step of another transaction at a chosen point *between two statements* of
the transaction under test (an :class:`Interleaved` session), so the bad interleaving happens
every run instead of once in a while under load.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import feed
from studypub.db import read_only, read_session_factory
from studypub.errors import ResetRequired
from studypub.models import Outbox, Published, utcnow
from studypub.outbox import enqueue_publish
from studypub.relay import Outcomes
from tests.support.databases import PG_ONLY
from tests.support.state import head_of
from tests.support.writes import delete_topic, published_topics, update_topic

Sessions = async_sessionmaker[AsyncSession]
Step = Callable[[], Awaitable[None]]


class Interleaved(AsyncSession):
    """A session that runs ``step`` once, right before the first statement ``when`` picks."""

    step: Step | None = None
    when: Callable[[int, Any], bool] = staticmethod(lambda _n, _statement: False)
    statements = 0

    async def execute(self, statement: Any, *args: Any, **kwargs: Any) -> Any:
        self.statements += 1
        if self.step is not None and self.when(self.statements, statement):
            step, self.step = self.step, None
            await step()
        return await super().execute(statement, *args, **kwargs)


def interleaved(bind: AsyncEngine, step: Step, when: Callable[[int, Any], bool]) -> Interleaved:
    session = Interleaved(bind=bind, expire_on_commit=False)
    session.step, session.when = step, when
    return session


async def prune_everything(sessions: Sessions) -> None:
    """A prune that deletes every tombstone (as one run an hour from now would)."""
    async with sessions() as s:
        later = utcnow() + 2 * feed.MIN_RETENTION
        await feed.prune_tombstones(s, older_than=feed.MIN_RETENTION, now=later)
        await s.commit()


async def test_a_feed_page_sees_the_floor_and_its_entries_in_one_snapshot(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    (gone, kept), relay = await published_topics(engine, sessions, ["gone", "kept"], listen=False)
    reads = read_session_factory(engine)
    async with reads() as r:
        cursor = (await feed.read_feed(r, "0", 10)).last_seq
    await delete_topic(sessions, gone)  # a tombstone after the consumer's cursor
    await update_topic(sessions, kept, title="kept, edited")
    await relay.run_once()

    # The prune commits after the page has checked its cursor against the floor and before
    # it reads the entries: the tombstone must still be in the page, or the cursor refused.
    # (In two snapshots the page skipped it and moved past the new floor: lost deletion.)
    def after_the_floor_check(n: int, _statement: Any) -> bool:
        return n == 2

    session = interleaved(
        read_only(engine), lambda: prune_everything(sessions), after_the_floor_check
    )
    async with session:
        try:
            page = await feed.read_feed(session, cursor, 10)
        except ResetRequired:
            page = None
    assert session.statements >= 2 and session.step is None, "the prune did not run in between"
    assert (await head_of(engine)).floor > 0, "the prune deleted nothing"
    if page is not None:
        assert ("topic", gone, True) in {(e["kind"], e["id"], e["deleted"]) for e in page.entries}
        # ...and the next read from where it left off is allowed: it missed nothing.
        async with reads() as r:
            await feed.read_feed(r, page.last_seq, 10)


# SQLite serializes writers (BEGIN IMMEDIATE): no relay commits while a prune runs.
@PG_ONLY
async def test_prune_raises_the_floor_to_every_tombstone_it_deleted(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    # Two tombstones; the newer one is protected by a late snapshot of its entity waiting in
    # the outbox (older than the tombstone: the relay will drop it as stale).
    (first, second), relay = await published_topics(
        engine, sessions, ["first", "second"], listen=False
    )
    await delete_topic(sessions, first)
    version = await delete_topic(sessions, second)
    await relay.run_once()
    async with sessions() as s:
        await enqueue_publish(
            s, kind="topic", source_id=second, source_version=version - 1, payload={"id": second}
        )
        await s.commit()
    async with sessions() as s:
        seqs = {i: seq for i, seq in (await s.execute(select(Published.id, Published.seq))).all()}

    # The relay drops the stale row (never touching the feed head, so the prune's head lock
    # does not hold it back) and commits right before the prune deletes.
    async def relay_drops_the_stale_row() -> None:
        assert await relay.run_once() == Outcomes(stale=1)

    def before_the_delete(_n: int, statement: Any) -> bool:
        return str(statement).lstrip().upper().startswith("DELETE FROM PUBLISHED")

    async with interleaved(engine, relay_drops_the_stale_row, before_the_delete) as s:
        later = utcnow() + 2 * feed.MIN_RETENTION
        pruned = await feed.prune_tombstones(s, older_than=feed.MIN_RETENTION, now=later)
        await s.commit()
        assert s.step is None, "the relay did not run in between"

    async with sessions() as s:
        left = (await s.execute(select(Published.id))).scalars().all()
        waiting = (await s.execute(select(Outbox.id))).scalars().all()
    assert waiting == []
    # Whatever it deleted, the floor covers: a cursor between the two seqs must be refused.
    deleted = {first, second} - set(left)
    assert len(deleted) == pruned
    assert (await head_of(engine)).floor >= max(seqs[i] for i in deleted)
