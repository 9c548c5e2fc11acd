"""The bridge to NATS JetStream, on both databases against a real NATS server: the stream holds
exactly one message per entity, its newest version, after writes, deletes, a SIGKILLed bridge
restarted, two bridges at once, a new epoch and a prune."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import nats
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import feed
from studypub.bridge import EPOCH_KEY, Bridge, floor_key, head_bucket
from studypub.db import read_session_factory, session_factory
from studypub.models import utcnow
from studypub.relay import Relay
from tests.support.cli import studypub_argv
from tests.support.content import churn, delete_card, write_content
from tests.support.databases import url_of
from tests.support.nats import NATS_URL, bridging, own_prefix

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
async def prefix() -> AsyncIterator[str]:
    async with own_prefix() as name:
        yield name


async def the_feed(engine: AsyncEngine) -> tuple[feed.Head, dict[str, tuple[int, Any]]]:
    """The head, and per entity subject suffix ``kind.id``: (seq, entry)."""
    entries: dict[str, tuple[int, Any]] = {}
    cursor = feed.START
    while True:
        async with read_session_factory(engine)() as session:
            page = await feed.read_feed(session, cursor, 1000)
        for e in page.entries:
            entries[f"{e['kind']}.{e['id']}"] = (e["seq"], e)
        cursor = page.last_seq
        if not page.pending:
            return page.head, entries


async def the_stream(prefix: str, epoch: str) -> dict[str, tuple[int, Any]]:
    """Per entity subject suffix: (seq header, entry) of every message the stream keeps."""
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        name = f"{prefix.upper()}_{epoch}"
        info = await js.stream_info(name)
        found: dict[str, tuple[int, Any]] = {}
        if not info.state.messages:
            return found
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            try:
                msg = await js.get_msg(name, seq=seq)
            except NotFoundError:
                continue  # replaced by a newer message of its subject, or purged
            key = msg.subject.removeprefix(f"{prefix}.{epoch}.")
            assert key not in found, f"two messages for {key}"
            headers = msg.headers or {}
            entry = json.loads(msg.data or b"{}")
            assert headers["Nats-Msg-Id"] == f"{epoch}:{entry['seq']}"
            assert headers["Studypub-Deleted"] == ("true" if entry["deleted"] else "false")
            found[key] = (int(headers["Studypub-Seq"]), entry)
        again = await js.stream_info(name)
        if (again.state.last_seq, again.state.messages) != (
            info.state.last_seq,
            info.state.messages,
        ):
            return await the_stream(prefix, epoch)  # it moved while we read: read it again
        assert info.state.messages == len(found)
        return found
    finally:
        await nc.close()


async def bridged(engine: AsyncEngine, prefix: str, timeout_s: float = 20) -> None:
    """Wait until the stream equals the feed (one message per entity, the newest)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        head, expected = await the_feed(engine)
        try:
            got = await the_stream(prefix, head.epoch)
        except NotFoundError:
            got = {}
        if got == expected:
            return
        if asyncio.get_running_loop().time() > deadline:
            missing = expected.keys() - got.keys()
            stale = [k for k in expected.keys() & got.keys() if got[k][0] != expected[k][0]]
            extra = got.keys() - expected.keys()
            raise AssertionError(f"stream != feed: missing {missing}, stale {stale}, extra {extra}")
        await asyncio.sleep(0.1)


@pytest.fixture
async def publishing(migrated: AsyncEngine) -> AsyncEngine:
    await write_content(migrated, topics=2, per_topic=3)
    await Relay(migrated, listen=False).run_once()
    return migrated


async def test_the_stream_is_the_compacted_feed(publishing: AsyncEngine, prefix: str) -> None:
    engine = publishing
    async with bridging(engine, prefix) as bridge:
        await bridged(engine, prefix)
        await churn(engine, rounds=3)  # updates move entities forward; deletes: tombstones
        await Relay(engine, listen=False).run_once()
        await bridged(engine, prefix)
    assert bridge.stats.published >= 1


async def test_a_bridge_killed_mid_run_resumes_with_no_gap_duplicate_or_older_version(
    publishing: AsyncEngine, prefix: str
) -> None:
    engine = publishing
    argv = studypub_argv("bridge", "--nats", NATS_URL, "--prefix", prefix)
    env = os.environ | {"STUDYPUB_DATABASE_URL": url_of(engine)}

    async def start() -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE
        )

    first = await start()
    relay = Relay(engine, listen=False)
    try:
        await bridged(engine, prefix, timeout_s=30)  # it publishes...
        for _ in range(3):  # ... and keeps publishing while it is killed
            await churn(engine, rounds=1)
            await relay.run_once()
        first.send_signal(signal.SIGKILL)
        assert await first.wait() == -signal.SIGKILL
        for _ in range(3):
            await churn(engine, rounds=1)
            await relay.run_once()
        second = await start()
        try:
            await bridged(engine, prefix, timeout_s=30)
        finally:
            second.send_signal(signal.SIGTERM)
            assert await asyncio.wait_for(second.wait(), 20) == 0
    finally:
        if first.returncode is None:
            first.kill()


async def test_two_bridges_one_publishes_the_other_takes_over(
    publishing: AsyncEngine, prefix: str
) -> None:
    engine = publishing
    stops = [asyncio.Event(), asyncio.Event()]
    bridges = [Bridge(engine, NATS_URL, prefix=prefix, poll_interval_s=0.1) for _ in stops]
    tasks = [asyncio.create_task(b.run(s)) for b, s in zip(bridges, stops, strict=True)]
    try:
        await bridged(engine, prefix)
        active = [b.stats.active for b in bridges]
        assert sorted(active) == [False, True], "exactly one bridge publishes"
        leader = active.index(True)
        standby = bridges[1 - leader]
        assert standby.stats.published == 0, "the standby published nothing"
        stops[leader].set()
        await tasks[leader]
        await delete_card(engine, 1)
        await Relay(engine, listen=False).run_once()
        await bridged(engine, prefix, timeout_s=30)  # the standby took over
        assert standby.stats.active and standby.stats.published > 0
    finally:
        for stop in stops:
            stop.set()
        await asyncio.gather(*tasks)


async def test_a_new_epoch_starts_a_new_stream_and_a_prune_reaches_the_head_bucket(
    publishing: AsyncEngine, prefix: str
) -> None:
    engine = publishing
    async with bridging(engine, prefix) as bridge:
        await bridged(engine, prefix)
        old_epoch = bridge.stats.epoch
        # A tombstone, then a prune that removes it from the feed and raises the floor.
        await delete_card(engine, 2)
        await Relay(engine, listen=False).run_once()
        await bridged(engine, prefix)
        head, before = await the_feed(engine)
        assert before["card.2"][1]["deleted"]
        async with session_factory(engine)() as session, session.begin():
            pruned = await feed.prune_tombstones(
                session, older_than=timedelta(hours=1), now=utcnow() + timedelta(hours=2)
            )
        assert pruned >= 1
        head, _ = await the_feed(engine)
        await bridged(engine, prefix)  # the tombstone's subject was purged
        nc = await nats.connect(NATS_URL)
        kv = await nc.jetstream().key_value(head_bucket(prefix))
        assert (await kv.get(EPOCH_KEY)).value == head.epoch.encode()
        for _ in range(50):
            entry = await kv.get(floor_key(head.epoch))
            if int(entry.value or b"0") == head.floor:
                break
            await asyncio.sleep(0.1)
        assert int(entry.value or b"0") == head.floor > 0
        await nc.close()
        # A new epoch (a restore): a new stream, the whole feed in it again.
        async with session_factory(engine)() as session, session.begin():
            await feed.start_new_epoch(session)
        await bridged(engine, prefix)
        assert bridge.stats.epoch != old_epoch
