"""Many viewers on one server, on both databases: served from the tail, not the database.

Streams and long-polls at the head cost no database statement when a write arrives (the
tail reads it once for all); a client that reads nothing never delays the others, and is
cut off once a send of its stays stuck longer than the tail's send timeout.
"""

from __future__ import annotations

import asyncio
import socket
import time
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import authoring, metrics
from studypub.db import session_factory
from studypub.serving import running
from studypub.tail import Tail
from tests.support.content import create_topic, write_content
from tests.support.http import fast_relay, make_app, sse_events

pytestmark = pytest.mark.timeout(90)

STREAMS = 20
POLLS = 10
BIG_ENTRIES = 400  # of 20 kB: 8 MB, past any socket buffer


def statements(reader: str) -> float:
    value: float = metrics.FEED_DB_STATEMENTS.labels(reader=reader)._value.get()
    return value


def tail_writes() -> float:
    value: float = metrics.FEED_TAIL_WRITES._value.get()
    return value


def stuck_stream(url: str) -> socket.socket:
    """A stream whose client never reads: its small receive buffer fills at once."""
    host, port = url.removeprefix("http://").split(":")
    stuck = socket.socket()
    stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stuck.connect((host, int(port)))
    stuck.sendall(b"GET /v1/feed/stream HTTP/1.1\r\nHost: x\r\n\r\n")
    return stuck


async def every_stream_ended(tail: Tail, within_s: float = 10) -> None:
    deadline = time.monotonic() + within_s
    while tail.streams and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    assert not tail.streams, "the stuck stream is still open"


async def follow(url: str, topic_titles: set[str], got: dict[str, float]) -> None:
    """One SSE client: note when each of ``topic_titles`` arrives."""
    async with (
        httpx.AsyncClient(base_url=url, timeout=30) as client,
        client.stream("GET", "/v1/feed/stream") as stream,
    ):
        async for item in sse_events(stream):
            if isinstance(item, str) or item.event != "entry":
                continue
            title = item.json()["payload"].get("title")
            if title in topic_titles and title not in got:
                got[title] = time.monotonic()
                if len(got) == len(topic_titles):
                    return


async def poll(url: str, cursor: str, wanted: str) -> list[dict[str, Any]]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as client:
        while True:
            page = (await client.get("/v1/feed", params={"since": cursor, "wait": 20})).json()
            if any(e["payload"].get("title") == wanted for e in page["results"]):
                return list(page["results"])
            cursor = page["last_seq"]


async def test_a_write_reaches_every_viewer_with_one_read_of_the_database(
    engine: AsyncEngine,
) -> None:
    await write_content(engine, topics=2, per_topic=2)
    app = make_app(engine)
    async with running(app, relay=fast_relay(engine)) as url:
        async with httpx.AsyncClient(base_url=url) as client:
            head = (await client.get("/v1/feed", params={"limit": 1000})).json()["last_seq"]
        got: list[dict[str, float]] = [{} for _ in range(STREAMS)]
        streams = [asyncio.create_task(follow(url, {"live"}, g)) for g in got]
        polls = [asyncio.create_task(poll(url, head, "live")) for _ in range(POLLS)]
        while sum(s.ended is None for s in app.state.tail.streams) < STREAMS:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)  # the long-polls are parked too
        before, writes = statements("page"), tail_writes()
        await create_topic(engine, "live")
        await asyncio.wait_for(asyncio.gather(*streams, *polls), 20)
    assert all("live" in g for g in got)
    # Every client was served from the tail's window: no page was read for any of them.
    assert statements("page") == before
    # Every stream got the entry from the tail's own write to its socket, no stream woken.
    assert tail_writes() - writes >= STREAMS


async def test_a_client_that_reads_nothing_holds_no_one_up_and_is_cut_off(
    engine: AsyncEngine,
) -> None:
    await write_content(engine, topics=1, per_topic=1)
    app = make_app(engine)
    tail = app.state.tail
    # A reader held up by the stuck stream would wait for this cut-off at least once.
    tail.send_timeout_s = 4.0
    async with running(app, relay=fast_relay(engine)) as url:
        stuck = stuck_stream(url)
        titles = {f"big {n}" for n in range(BIG_ENTRIES)}
        got: dict[str, float] = {}
        reader = asyncio.create_task(follow(url, titles, got))
        while len(tail.streams) < 2:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        written: dict[str, float] = {}
        for title in sorted(titles):  # far more than the socket buffers of the stuck client
            await create_topic(engine, title, description="x" * 20_000)
            written[title] = time.monotonic()
        await asyncio.wait_for(reader, 30)
        # Every entry reached the reader well before the stuck stream could be cut off.
        assert max(got[title] - written[title] for title in titles) < 2.0
        await every_stream_ended(tail)
        stuck.close()


async def test_a_client_whose_buffer_the_tails_last_write_filled_is_cut_off(
    engine: AsyncEngine,
) -> None:
    await write_content(engine, topics=1, per_topic=1)
    app = make_app(engine)
    tail = app.state.tail
    tail.send_timeout_s = 2.0
    async with running(app, relay=fast_relay(engine)) as url:
        stuck = stuck_stream(url)
        while not tail._parked:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        # One commit, one page, one write of 8 MB by the tail: it fills the buffers, and
        # nothing is written after it that could find them full.
        async with session_factory(engine)() as session, session.begin():
            for n in range(BIG_ENTRIES):
                await authoring.create_topic(session, title=f"big {n}", description="x" * 20_000)
        started = time.monotonic()
        await every_stream_ended(tail)
        # Cut off by the send timeout, not by a later heartbeat.
        assert time.monotonic() - started < tail.send_timeout_s + 3
        stuck.close()
