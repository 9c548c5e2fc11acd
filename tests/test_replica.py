"""The replica client against a live server with a real relay, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import backfill, feed, replica_store
from studypub.db import create_engine, session_factory
from studypub.models import Published, Topic
from studypub.relay import Relay
from studypub.replica import Replica, ReplicaError
from studypub.serving import running
from studypub.targets import TOPICS
from studypub.verify import verify
from tests.support.apply_rule import CASES, applies, entry
from tests.support.content import churn, create_topic, delete_card, write_content
from tests.support.http import fast_relay, make_app
from tests.support.outbox import drained
from tests.support.state import LiveView, live_view, replica_cursor, replica_view

pytestmark = pytest.mark.timeout(90)


async def converge(replica: Replica, engine: AsyncEngine, timeout_s: float = 20.0) -> LiveView:
    """Wait until the replica holds exactly the published state (the relay may lag)."""
    deadline = time.monotonic() + timeout_s
    while True:
        expected = await live_view(engine)
        got = replica_view(await replica.state())
        if got == expected:
            return got
        assert time.monotonic() < deadline, (
            f"replica never converged: {len(got)} vs {len(expected)}"
        )
        await asyncio.sleep(0.1)


async def full_backfill(engine: AsyncEngine) -> None:
    """Every target in small pages, so that they interleave with the live writes."""
    sessions = session_factory(engine)
    for target in backfill.TARGETS:
        await backfill.backfill_target(sessions, target, page=5)


async def test_follower_converges_through_writes_deletes_and_a_backfill(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    await write_content(engine, topics=3, per_topic=4)  # already there before anyone publishes
    app = make_app(engine)
    path = tmp_path / "replica.db"
    async with running(app, relay=fast_relay(engine)) as url:
        async with Replica(path, url, wait_s=2, limit=7) as replica:
            follower = asyncio.create_task(replica.follow())
            try:
                # Live writes and a full backfill at the same time.
                await asyncio.gather(churn(engine, rounds=8), full_backfill(engine))
                await drained(engine)
                state = await converge(replica, engine)
            finally:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
        assert len(state) > 50
        assert replica.stats.resets == 0

        # Killed (cancelled mid-follow above) and restarted: it resumes from its cursor.
        stored = await replica_cursor(path, url)
        assert stored != "0"
        await churn(engine, rounds=2)
        await drained(engine)
        transport = ScriptedTransport([])
        async with Replica(path, url, limit=1000, transport=transport) as again:
            await again.sync()
            assert transport.requests[0].url.params["since"] == stored
            assert replica_view(await again.state()) == await live_view(engine)
            # Only what came after the cursor was read, not the whole feed again.
            assert 0 < again.stats.entries < len(state)


async def test_replica_rebuilds_after_reset(engine: AsyncEngine, tmp_path: Path) -> None:
    await write_content(engine, topics=2, per_topic=2)
    app = make_app(engine)
    path = tmp_path / "replica.db"
    async with running(app, relay=fast_relay(engine)) as url, Replica(path, url) as replica:
        await converge_by_sync(replica, engine)
        # A restore: new epoch, and a row the replica holds is gone from the feed.
        topic_id = await create_topic(engine, "Doomed")
        await converge_by_sync(replica, engine, until=("topic", topic_id))
        assert ("topic", topic_id) in await replica.state()
        async with engine.begin() as conn:
            await conn.execute(
                Published.__table__.delete().where(
                    (Published.kind == "topic") & (Published.id == topic_id)
                )
            )
        async with session_factory(engine)() as session:  # `studypub db new-epoch`
            epoch = await feed.start_new_epoch(session)
            await session.commit()
        await replica.sync()
        assert replica.stats.resets == 1
        assert replica_view(await replica.state()) == await live_view(engine)
        assert ("topic", topic_id) not in await replica.state()
        assert (await replica.cursor()).startswith(f"{epoch}:")


async def test_replica_refuses_with_a_clear_error(engine: AsyncEngine, tmp_path: Path) -> None:
    app = make_app(engine, viewer_token="secret")
    async with running(app) as url:
        async with Replica(tmp_path / "r.db", url) as replica:
            with pytest.raises(ReplicaError, match="HTTP 401"):
                await replica.sync()
        async with Replica(tmp_path / "r.db", url, token="secret") as replica:
            assert (await replica.sync()) == "0"


async def converge_by_sync(
    replica: Replica, engine: AsyncEngine, *, until: tuple[str, int] | None = None
) -> None:
    """Sync until the replica equals the published state (which holds ``until``, if given)."""
    deadline = time.monotonic() + 10
    while True:
        expected = await live_view(engine)
        got = replica_view(await replica.state())
        if (until is None or until in expected) and got == expected:
            return
        assert time.monotonic() < deadline, "relay did not publish in time"
        await replica.sync()
        await asyncio.sleep(0.05)


async def test_unusable_replica_file_is_a_clear_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("not a database")
    for path in (tmp_path / "missing" / "r.db", not_a_db):
        with pytest.raises(ReplicaError, match="cannot open the replica file"):
            async with Replica(path, "http://127.0.0.1:9"):
                pass


# ---------------------------------------------------------------- the apply rule


async def test_replica_applies_by_the_apply_rule(tmp_path: Path) -> None:
    """Every case of the apply rule through the replica's SQL upsert: one key per case holds
    the case's state (page 1), then gets the case's entry (page 2)."""
    keys = list(enumerate(CASES, start=1))
    pages = {
        "0": [entry(key, held, seq=key) for key, (_, held, _, _) in keys if held is not None],
        "e:1": [entry(key, new, seq=100 + key) for key, (_, _, new, _) in keys],
    }

    def serve(request: httpx.Request) -> httpx.Response:
        since = request.url.params["since"]
        after = {"0": "e:1", "e:1": "e:2"}[since]
        return httpx.Response(200, json={"results": pages[since], "last_seq": after, "pending": 0})

    path = tmp_path / "rule.db"
    transport = httpx.MockTransport(serve)
    async with Replica(path, "http://feed.test", transport=transport) as replica:
        assert await replica.sync() == "e:1"
        assert await replica.sync() == "e:2"
    stored = await _stored_rows(path)
    wrong = []
    for key, (name, held, new, expected) in keys:
        assert applies(held, new) is expected, f"the oracle disagrees with the table: {name}"
        assert held is not None or expected
        want = entry(key, new, seq=100 + key) if expected else entry(key, held or {}, seq=key)
        if stored[key] != {field: want[field] for field in stored[key]}:
            wrong.append(f"{name}: stored {stored[key]}, want {want}")
    assert wrong == []


async def _stored_rows(path: Path) -> dict[int, dict[str, Any]]:
    """The replica's rows, tombstones included, straight from the file."""
    engine = create_engine(f"sqlite+aiosqlite:///{path}")
    try:
        async with engine.connect() as conn:
            rows = (await conn.execute(select(replica_store.entries))).mappings().all()
    finally:
        await engine.dispose()
    return {
        row["id"]: {
            "version": row["version"],
            "schema_version": row["schema_version"],
            "hash": row["hash"],
            "deleted": row["deleted"],
            "seq": row["seq"],
            "payload": json.loads(row["payload"]),
        }
        for row in rows
    }


async def test_replica_takes_a_repair_at_the_same_version(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A source row changed without a version bump (a restore, a hand edit) is republished by
    ``verify --repair`` at the same version with another hash: the replica must take it."""
    made = await write_content(engine, topics=2, per_topic=1)
    await Relay(engine, listen=False).run_once()
    async with running(make_app(engine)) as url, Replica(tmp_path / "r.db", url) as replica:
        await replica.sync()
        assert replica_view(await replica.state()) == await live_view(engine)
        key = ("topic", made.topics[0])
        before = (await replica.state())[key]

        async with engine.begin() as conn:  # Core: the version stays as it is
            await conn.execute(
                update(Topic).where(Topic.id == made.topics[0]).values(title="Hand edited")
            )
        summaries = await verify(engine, [TOPICS], repair=True)
        assert sum(s.repaired for s in summaries) == 1
        assert (await Relay(engine, listen=False).run_once()).applied == 1
        await replica.sync()

        after = (await replica.state())[key]
        assert after["version"] == before["version"]
        assert after["schema_version"] == before["schema_version"]
        assert after["hash"] != before["hash"]
        assert after["payload"]["title"] == "Hand edited"
        assert after["seq"] > before["seq"]
        assert replica_view(await replica.state()) == await live_view(engine)


# ---------------------------------------------------------------- errors during a rebuild

# A scripted step: "pass" (the real server answers), "connect" (a ConnectError), "hold" (wait
# until released, then pass), or an HTTP status to answer instead of the server.
Step = str | int


class ScriptedTransport(httpx.AsyncBaseTransport):
    """The real transport, until it passes on a ``410``; the requests after it (the rebuild's)
    follow ``script`` in order, then the real transport again. ``on_fail`` runs before each
    scripted failure, while the failing rebuild still holds its transaction. ``requests``
    keeps every request, in order."""

    def __init__(
        self, script: list[Step], on_fail: Callable[[], Awaitable[None]] | None = None
    ) -> None:
        self.real = httpx.AsyncHTTPTransport()
        self.script = list(script)
        self.on_fail = on_fail
        self.armed = False
        self.holding = asyncio.Event()
        self.release = asyncio.Event()
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        step = self.script.pop(0) if self.armed and self.script else "pass"
        if step == "hold":
            self.holding.set()
            await self.release.wait()
        elif step != "pass":
            if self.on_fail is not None:
                await self.on_fail()
            if step == "connect":
                raise httpx.ConnectError("connection refused (scripted)", request=request)
            return httpx.Response(int(step), json={"error": "scripted", "detail": "scripted"})
        response = await self.real.handle_async_request(request)
        self.armed = self.armed or response.status_code == 410
        return response

    async def aclose(self) -> None:
        await self.real.aclose()


async def new_epoch_and_changes(engine: AsyncEngine, made_card: int) -> str:
    """A restore: a new epoch (every cursor gets 410), and changes the rebuild must bring."""
    async with session_factory(engine)() as session, session.begin():
        epoch = await feed.start_new_epoch(session)
    await create_topic(engine, "After the restore")
    await delete_card(engine, made_card)
    await Relay(engine, listen=False).run_once()
    return epoch


async def converge_following(
    replica: Replica, engine: AsyncEngine, follower: asyncio.Task[None], epoch: str
) -> None:
    """Wait until the follower holds the published state of ``epoch``; fail at once if
    ``follow()`` ended (with its error)."""
    deadline = time.monotonic() + 20
    while True:
        if follower.done():
            follower.result()
            raise AssertionError("follow() ended by itself")
        cursor = await replica.cursor()
        got = replica_view(await replica.state())
        if cursor.startswith(f"{epoch}:") and got == await live_view(engine):
            return
        assert time.monotonic() < deadline, "the follower never rebuilt"
        await asyncio.sleep(0.05)


@pytest.mark.usefixtures("fast_retries")
async def test_follow_retries_errors_during_a_rebuild(engine: AsyncEngine, tmp_path: Path) -> None:
    """After a 410, the rebuild fails mid-way (a ConnectError after one page), then on its
    first page (a ConnectError, then a 503): ``follow()`` retries until it completes, and
    readers see the old state all along."""
    made = await write_content(engine, topics=2, per_topic=2)  # 12 entries: 3 pages of 5
    await Relay(engine, listen=False).run_once()
    path = tmp_path / "follow.db"
    seen: list[LiveView] = []
    async with running(make_app(engine)) as url, Replica(path, url) as reader:

        async def snapshot() -> None:
            seen.append(replica_view(await asyncio.wait_for(reader.state(), 1)))

        transport = ScriptedTransport(["pass", "connect", "connect", 503], on_fail=snapshot)
        async with Replica(path, url, limit=5, wait_s=1, transport=transport) as follower_replica:
            await follower_replica.sync()
            old = replica_view(await follower_replica.state())
            assert old == await live_view(engine)
            stop = asyncio.Event()
            follower = asyncio.create_task(follower_replica.follow(stop))
            try:
                epoch = await new_epoch_and_changes(engine, made.cards[0])
                await converge_following(follower_replica, engine, follower, epoch)
            finally:
                stop.set()
                await asyncio.wait_for(follower, 10)
            assert transport.script == []  # every scripted failure happened
            assert follower_replica.stats.resets == 1
    assert seen == [old, old, old]


@pytest.mark.usefixtures("fast_retries")
async def test_follow_ends_on_a_refusal_during_a_rebuild(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """A refusal retrying cannot fix still ends ``follow()``, during a rebuild too."""
    made = await write_content(engine, topics=1, per_topic=1)
    await Relay(engine, listen=False).run_once()
    path = tmp_path / "refused.db"
    transport = ScriptedTransport(["connect", 401])
    async with running(make_app(engine)) as url, Replica(path, url, transport=transport) as r:
        await r.sync()
        old = replica_view(await r.state())
        await new_epoch_and_changes(engine, made.cards[0])
        with pytest.raises(ReplicaError, match="HTTP 401"):
            await asyncio.wait_for(r.follow(), 10)
        assert replica_view(await r.state()) == old  # the failed rebuild left nothing behind


# ---------------------------------------------------------------- readers and the writer lock

READ_TIMEOUT_S = 1.0


async def test_readers_do_not_wait_for_a_rebuild(engine: AsyncEngine, tmp_path: Path) -> None:
    """While a rebuild holds the replica's write lock (paused between two pages), another
    Replica object on the file reads the old cursor and state at once, and opens."""
    made = await write_content(engine, topics=2, per_topic=2)
    await Relay(engine, listen=False).run_once()
    path = tmp_path / "locked.db"
    transport = ScriptedTransport(["pass", "hold"])
    async with (
        running(make_app(engine)) as url,
        Replica(path, url, limit=5, transport=transport) as writer,
        Replica(path, url) as reader,
    ):
        await writer.sync()
        old_cursor, old_state = await reader.cursor(), await reader.state()
        assert replica_view(old_state) == await live_view(engine)
        epoch = await new_epoch_and_changes(engine, made.cards[0])

        rebuild = asyncio.create_task(writer.sync())
        try:
            await asyncio.wait_for(transport.holding.wait(), 10)  # one page in, lock held
            assert await asyncio.wait_for(reader.cursor(), READ_TIMEOUT_S) == old_cursor
            assert await asyncio.wait_for(reader.state(), READ_TIMEOUT_S) == old_state
            late = Replica(path, url)
            try:
                await asyncio.wait_for(late.open(), READ_TIMEOUT_S)
                assert await asyncio.wait_for(late.state(), READ_TIMEOUT_S) == old_state
            finally:
                await late.close()
        finally:
            transport.release.set()
            await asyncio.wait_for(rebuild, 10)
        assert (await reader.cursor()).startswith(f"{epoch}:")
        assert replica_view(await reader.state()) == await live_view(engine)
