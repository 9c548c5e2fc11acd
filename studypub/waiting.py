"""Waiting for the first of several things: a wake-up, a stop, a reply, or a timer.

The relay waits for "notified, poll timer, or stop"; the replica for "reply or stop" and for
"backoff over, or stop". One helper for all of them (procrastinate's ``utils.wait_any``), so
that each loop says what it waits for, and no waiter task is ever left behind.
"""

from __future__ import annotations

import asyncio
from typing import Any


async def wait_any(
    *waitables: asyncio.Event | asyncio.Future[Any], timeout_s: float | None = None
) -> bool:
    """Return when any of ``waitables`` is set (an event) or done (a future or task), or
    after ``timeout_s``; True unless the time ran out.

    Futures are left as they are: the caller owns them, and may cancel a request that lost
    the race. The waits on the events end with the call.
    """
    event_waits = [
        asyncio.ensure_future(waitable.wait())
        for waitable in waitables
        if isinstance(waitable, asyncio.Event)
    ]
    futures = [waitable for waitable in waitables if not isinstance(waitable, asyncio.Event)]
    try:
        done, _ = await asyncio.wait(
            [*event_waits, *futures], timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        for event_wait in event_waits:
            event_wait.cancel()
    return bool(done)
