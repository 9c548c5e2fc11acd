"""The replica client against a live server with a real relay, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import time
from pathlib import Path

import httpx
import pytest
from feed_helpers import (
    State,
    create_topic,
    delete_card,
    drained,
    fast_relay,
    make_app,
    published_state,
    write_content,
)
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import authoring, backfill
from studypub.db import session_factory
from studypub.models import FeedHead, Published
from studypub.replica import Replica, ReplicaError
from studypub.serving import running

pytestmark = pytest.mark.timeout(90)


def replica_state(raw: dict[tuple[str, int], dict[str, object]]) -> State:
    return {key: (int(str(e["version"])), str(e["hash"])) for key, e in raw.items()}


async def converge(replica: Replica, engine: AsyncEngine, timeout_s: float = 20.0) -> State:
    """Wait until the replica holds exactly the published state (the relay may lag)."""
    deadline = time.monotonic() + timeout_s
    while True:
        expected = await published_state(engine)
        got = replica_state(await replica.state())
        if got == expected:
            return got
        assert time.monotonic() < deadline, (
            f"replica never converged: {len(got)} vs {len(expected)}"
        )
        await asyncio.sleep(0.1)


async def churn(engine: AsyncEngine, rounds: int) -> None:
    """Writes, updates and deletes, in many small transactions."""
    for n in range(rounds):
        made = await write_content(engine, topics=1, per_topic=2)
        async with session_factory(engine)() as session, session.begin():
            await authoring.update_topic(session, made.topics[0], title=f"Renamed {n}")
        await delete_card(engine, made.cards[0])
        await asyncio.sleep(0.01)


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
        stored = await _stored_cursor(path, url)
        assert stored != "0"
        await churn(engine, rounds=2)
        await drained(engine)
        async with Replica(path, url, limit=1000) as again:
            await again.sync()
            assert again.stats.first_since == stored
            assert replica_state(await again.state()) == await published_state(engine)
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
            await conn.execute(update(FeedHead).values(epoch="restored02"))
            await conn.execute(
                Published.__table__.delete().where(
                    (Published.kind == "topic") & (Published.id == topic_id)
                )
            )
        await replica.sync()
        assert replica.stats.resets == 1
        assert replica_state(await replica.state()) == await published_state(engine)
        assert ("topic", topic_id) not in await replica.state()
        assert (await replica.cursor()).startswith("restored02:")


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
        expected = await published_state(engine)
        got = replica_state(await replica.state())
        if (until is None or until in expected) and got == expected:
            return
        assert time.monotonic() < deadline, "relay did not publish in time"
        await replica.sync()
        await asyncio.sleep(0.05)


async def _stored_cursor(path: Path, url: str) -> str:
    async with Replica(path, url) as peek:
        return await peek.cursor()


async def test_cli_replicate_once(engine: AsyncEngine, tmp_path: Path) -> None:
    """`studypub replicate` as a user runs it: a subprocess against a live server."""
    await write_content(engine, topics=1, per_topic=2)
    app = make_app(engine)
    path = tmp_path / "cli.db"
    async with running(app, relay=fast_relay(engine)) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            deadline = time.monotonic() + 10
            while not (await c.get("/v1/feed")).json()["results"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        await drained(engine)
        proc = await asyncio.create_subprocess_exec(
            "studypub",
            "replicate",
            "--from",
            url,
            "--into",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(),
        )
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "cursor 0 ->" in out.decode()
        async with Replica(path, url) as replica:
            assert replica_state(await replica.state()) == await published_state(engine)

        bad = await asyncio.create_subprocess_exec(
            "studypub",
            "replicate",
            "--from",
            "ftp://nowhere",
            "--into",
            str(path),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_env(),
        )
        _, err = await bad.communicate()
        assert bad.returncode != 0
        assert "is not an http(s) URL" in err.decode()
        assert "Traceback" not in err.decode()


async def test_cli_follower_killed_then_restarted_resumes(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """`replicate --follow` killed with SIGKILL mid-follow; the next run starts at its cursor;
    Ctrl-C stops a follower cleanly."""
    await write_content(engine, topics=1, per_topic=2)
    app = make_app(engine)
    path = tmp_path / "follow.db"
    async with running(app, relay=fast_relay(engine)) as url:
        await drained(engine)
        follower = await _spawn("replicate", "--from", url, "--into", str(path), "--follow")
        await _until_replica(path, url, engine)
        await create_topic(engine, "While following")
        await drained(engine)
        await _until_replica(path, url, engine)  # picked up by the long-poll
        follower.kill()
        await follower.wait()

        stored = await _stored_cursor(path, url)
        assert stored != "0"
        await churn(engine, rounds=1)
        await drained(engine)
        again = await _spawn("replicate", "--from", url, "--into", str(path))
        out, err = await again.communicate()
        assert again.returncode == 0, err.decode()
        assert f"cursor {stored} ->" in out.decode()
        async with Replica(path, url) as replica:
            assert replica_state(await replica.state()) == await published_state(engine)

        stopping = await _spawn("replicate", "--from", url, "--into", str(path), "--follow")
        assert stopping.stdout is not None
        while b"following" not in await stopping.stdout.readline():
            pass
        stopping.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(stopping.communicate(), 20)
        assert stopping.returncode == 0, err.decode()
        assert "stopped at cursor" in out.decode()
        assert b"Traceback" not in err


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        "studypub",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=_env(),
    )


async def _until_replica(path: Path, url: str, engine: AsyncEngine) -> None:
    deadline = time.monotonic() + 20
    while True:
        async with Replica(path, url) as peek:
            if replica_state(await peek.state()) == await published_state(engine):
                return
        assert time.monotonic() < deadline, "the CLI replica did not catch up"
        await asyncio.sleep(0.1)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
    env["COLUMNS"] = "200"
    return env


async def test_unusable_replica_file_is_a_clear_error(tmp_path: Path) -> None:
    not_a_db = tmp_path / "notes.txt"
    not_a_db.write_text("not a database")
    for path in (tmp_path / "missing" / "r.db", not_a_db):
        with pytest.raises(ReplicaError, match="cannot open the replica file"):
            async with Replica(path, "http://127.0.0.1:9"):
                pass
