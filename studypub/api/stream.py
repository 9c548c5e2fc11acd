"""The body of ``GET /v1/feed/stream``: the feed as Server-Sent Events.

``retry: 2000`` first; then, after the cursor, one ``event: entry`` per entry (framed by
:func:`studypub.feed.entry_event`), a ``: heartbeat`` comment after :data:`HEARTBEAT_S` of
silence so that proxies keep an idle stream open, and every new entry as it is published.
The stream ends with ``event: reset`` when the cursor needs a reset, with a longer ``retry:``
hint when the database goes away (the client reconnects from its last id, to this server or
another), and at once when the server shuts down.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from studypub import feed
from studypub.api.wakeup import FeedWakeup
from studypub.errors import ResetRequired, StudypubError, TransientError

HEARTBEAT_S = 15.0
RETRY_MS = 2000
PAGE = feed.MAX_LIMIT


async def events(
    sessions: async_sessionmaker[AsyncSession],
    wakeup: FeedWakeup,
    cursor: str,
    kinds: tuple[str, ...] | None,
) -> AsyncIterator[str]:
    """The SSE body after ``cursor`` (already validated). Each read runs in its own read
    session, so each wake-up sees the newest commits. Starlette cancels this generator when
    the client goes away."""
    loop = asyncio.get_running_loop()
    yield f"retry: {RETRY_MS}\n\n"
    last_beat = loop.time()
    async with wakeup.waiter() as waiter:
        while not wakeup.closing.is_set():  # shutting down: end; the client reconnects
            waiter.arm()  # before the read: a publish during the read wakes the wait below
            try:
                async with sessions() as session:
                    page = await feed.read_feed(session, cursor, PAGE, kinds, raw_payload=True)
            except ResetRequired as exc:
                yield f"event: reset\ndata: {_error_json(exc)}\n\n"
                return
            except TransientError as exc:
                # The database is away (logged once per outage by the engine): end the
                # stream with a retry hint; the client reconnects after it, from its last
                # id, to this server or another.
                yield f"retry: {exc.retry_after_s * 1000}\n\n"
                return
            if page.entries:
                epoch, _ = feed.decode_cursor(page.last_seq)
                assert epoch is not None
                yield "".join(feed.entry_event(epoch, entry) for entry in page.entries)
                cursor = page.last_seq
                last_beat = loop.time()
                if page.pending:
                    continue
            until_beat = last_beat + HEARTBEAT_S - loop.time()
            if until_beat <= 0:
                yield ": heartbeat\n\n"
                last_beat = loop.time()
                continue
            await waiter.wait(until_beat)


def _error_json(exc: StudypubError) -> str:
    body = {"error": exc.code, "detail": str(exc)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)
