"""Wake-ups for long-polls and SSE streams: the feed moved, read it again.

One :class:`FeedWakeup` per app process. On PostgreSQL it holds ONE dedicated connection that
``LISTEN``\\s on the feed channel (the relay NOTIFYs it in its apply transaction, so the
notification arrives exactly when the new entries are visible) and turns every notification
into :data:`studypub.notify.feed_signal`. On SQLite a relay in the same process fires that
signal after each commit. Every waiter also polls (:data:`POLL_INTERVAL_S`): a notification is
a hint, and a lost one (a dropped listener, a relay in another process on SQLite) only delays
an answer, never loses an entry, because waiters re-query the feed on every wake-up.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.db import dialect_of
from studypub.notify import FEED_CHANNEL, feed_signal, pg_listen

POLL_INTERVAL_S = 1.0


class FeedWakeup:
    """The process's feed listener (PostgreSQL) and the waiters' entry point (both databases).

    ``start()`` and ``stop()`` belong to the app lifespan; ``stop()`` is idempotent. Waiting
    works without ``start()`` too (in-process signals and polling), only slower on PostgreSQL.
    """

    def __init__(self, engine: AsyncEngine, *, poll_interval_s: float = POLL_INTERVAL_S) -> None:
        self.poll_interval_s = poll_interval_s
        self._url = engine.url
        self._is_pg = dialect_of(engine) == "postgresql"
        self._task: asyncio.Task[None] | None = None
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        self.closing = asyncio.Event()  # set when the server shuts down: waiters answer now

    async def start(self) -> None:
        if self._is_pg and self._task is None:
            url = self._url.render_as_string(hide_password=False)
            self._task = asyncio.create_task(
                pg_listen(url, FEED_CHANNEL, feed_signal.fire, connected=self.listening),
                name="studypub-feed-listener",
            )

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.listening.clear()

    def close_waiters(self) -> None:
        """Answer every long-poll now and end every stream (the server is shutting down):
        open streams would otherwise hold the shutdown until its grace period ends, and
        clients reconnect faster to a server that is up."""
        self.closing.set()
        feed_signal.fire()

    @contextlib.asynccontextmanager
    async def waiter(self) -> AsyncIterator[Waiter]:
        """A subscription to feed wake-ups; subscribe BEFORE the first read (see Waiter)."""
        event = feed_signal.subscribe()
        try:
            yield Waiter(event, self.poll_interval_s)
        finally:
            feed_signal.unsubscribe(event)


class Waiter:
    """One long-poll's or stream's view of the wake-ups.

    Use: ``waiter.arm()``; read the feed; if it had nothing, ``await waiter.wait(timeout)``.
    Arming before the read means a publish that lands between the read and the wait still
    wakes the wait at once: nothing falls in the gap.
    """

    def __init__(self, event: asyncio.Event, poll_interval_s: float) -> None:
        self._event = event
        self._poll_interval_s = poll_interval_s

    def arm(self) -> None:
        self._event.clear()

    async def wait(self, timeout_s: float) -> bool:
        """Wait for a wake-up, at most ``timeout_s`` (and at most one poll interval).

        Returns True when woken by a signal, False on a timeout (time to poll anyway).
        """
        timeout_s = max(0.0, min(timeout_s, self._poll_interval_s))
        try:
            await asyncio.wait_for(self._event.wait(), timeout=timeout_s)
        except TimeoutError:
            return False
        return True
