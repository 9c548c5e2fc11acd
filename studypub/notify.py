"""Wake-up hints between writers, the relay and feed readers.

Hints only: every waiter also polls, so a lost hint delays work but never loses it.

- PostgreSQL: a statement trigger on ``outbox`` runs ``pg_notify(OUTBOX_CHANNEL)`` inside the
  enqueueing transaction, so the relay hears of a row exactly when it commits (NOTIFY is
  transactional). The relay notifies ``FEED_CHANNEL`` in its apply transaction.
- SQLite (one process owns the file): in-process signals, fired after a session that
  enqueued (or published) commits.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event
from sqlalchemy.orm import Session

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
