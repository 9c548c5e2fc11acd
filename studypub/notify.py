"""Wake-up hints between writers, the relay and feed readers.

Hints only: every waiter also polls, so a lost hint delays work but never loses it.

- PostgreSQL: a statement trigger on ``outbox`` runs ``pg_notify(OUTBOX_CHANNEL)`` inside the
  enqueueing transaction, so the relay hears of a row exactly when it commits (NOTIFY is
  transactional). The relay notifies ``FEED_CHANNEL`` in its apply transaction.
- SQLite (one process owns the file): in-process signals, fired after a session that
  enqueued (or published) commits.

:func:`pg_listen` keeps a dedicated PostgreSQL connection LISTENing (the relay on
``OUTBOX_CHANNEL``, feed long-polls on ``FEED_CHANNEL``) and reconnects when it is lost.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import asyncpg  # type: ignore[import-untyped]
from sqlalchemy import event, make_url
from sqlalchemy.orm import Session

from studypub.db import application_name
from studypub.errors import one_line

OUTBOX_CHANNEL = "studypub_outbox"
FEED_CHANNEL = "studypub_feed"

_PENDING_SIGNALS = "studypub_signals"


class LocalSignal:
    """A broadcast wake-up inside one process: every subscribed event is set on ``fire()``."""

    def __init__(self) -> None:
        self._events: set[asyncio.Event] = set()

    def subscribe(self) -> asyncio.Event:
        ev = asyncio.Event()
        self._events.add(ev)
        return ev

    def unsubscribe(self, ev: asyncio.Event) -> None:
        self._events.discard(ev)

    def fire(self) -> None:
        for ev in list(self._events):
            ev.set()


outbox_signal = LocalSignal()
feed_signal = LocalSignal()


def fire_after_commit(session: Any, signal: LocalSignal) -> None:
    """Fire ``signal`` once ``session`` (sync or async) commits; dropped on rollback."""
    sync_session: Session = getattr(session, "sync_session", session)
    sync_session.info.setdefault(_PENDING_SIGNALS, set()).add(signal)


@event.listens_for(Session, "after_commit")
def _fire_pending(session: Session) -> None:
    for signal in session.info.pop(_PENDING_SIGNALS, ()):
        signal.fire()


@event.listens_for(Session, "after_rollback")
def _drop_pending(session: Session) -> None:
    session.info.pop(_PENDING_SIGNALS, None)


# ---------------------------------------------------------------- PostgreSQL LISTEN

LISTEN_RECONNECT_S = 1.0
LISTEN_HEALTH_CHECK_S = 10.0

log = logging.getLogger("studypub.notify")


def asyncpg_dsn(url: str) -> str:
    """A plain ``postgresql://`` DSN for asyncpg from a SQLAlchemy URL."""
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


async def pg_listen(
    url: str,
    channel: str,
    on_notify: Callable[[], None],
    *,
    reconnect_s: float = LISTEN_RECONNECT_S,
    health_check_s: float = LISTEN_HEALTH_CHECK_S,
    connected: asyncio.Event | None = None,
) -> None:
    """LISTEN on ``channel`` on a dedicated connection and call ``on_notify`` per notification.

    Runs until cancelled, reconnecting after a lost connection. ``on_notify`` is also called
    on every (re)connect, since whatever was notified while nobody listened would be lost, and
    when the connection is lost, since the database may be away: either way the waiter must
    look. ``connected`` (if given) is set while listening.
    """
    dsn = asyncpg_dsn(url)
    name = application_name("listen")
    failing = False  # one warning per outage, not one per reconnect attempt
    while True:
        try:
            conn = await asyncpg.connect(
                dsn, timeout=10, server_settings={"application_name": name}
            )
        except Exception as exc:  # whatever the reason, the answer is to retry
            if not failing:
                log.warning(
                    "cannot LISTEN on %s, retrying every %.0f s: %s",
                    channel,
                    reconnect_s,
                    one_line(exc),
                    extra={"channel": channel},
                )
                failing = True
            await asyncio.sleep(reconnect_s)
            continue
        lost = asyncio.Event()
        conn.add_termination_listener(lambda _conn, lost=lost: lost.set())
        try:
            await conn.add_listener(channel, lambda *_args: on_notify())
            if connected is not None:
                connected.set()
            if failing:
                log.warning("LISTEN on %s again", channel, extra={"channel": channel})
                failing = False
            on_notify()
            await _until_lost(conn, lost, health_check_s)
            log.warning("LISTEN connection on %s lost, reconnecting", channel)
            on_notify()  # the waiter looks now: the database may be away (it says so)
        except Exception as exc:
            # A connection killed mid-operation can surface as any asyncpg error (even an
            # internal state error): the listener must outlive all of them.
            log.warning("LISTEN on %s failed, reconnecting: %s", channel, one_line(exc))
        finally:
            if connected is not None:
                connected.clear()
            conn.terminate()
        failing = True  # the next successful connect says so
        await asyncio.sleep(reconnect_s)


async def _until_lost(conn: Any, lost: asyncio.Event, health_check_s: float) -> None:
    # asyncpg hears of a closed socket at once, but a silently dead peer (a cut network) only
    # on I/O: probe now and then.
    while not lost.is_set():
        try:
            await asyncio.wait_for(lost.wait(), timeout=health_check_s)
        except TimeoutError:
            try:
                await conn.fetchval("SELECT 1", timeout=health_check_s)
            except Exception:
                return
