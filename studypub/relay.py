"""The relay: moves outbox rows into the published store (the feed), batch by batch.

One batch is the apply transaction of DESIGN: claim due rows, coalesce per (kind, id),
decide apply / unchanged / stale against the published rows, take seqs from the feed head
as late as possible, upsert, delete every claimed row, commit. A crash anywhere rolls the
whole batch back; the row locks die with the connection, so there are no leases to expire.

A batch that fails is split in halves, each retried in a fresh transaction, down to the
single rows that fail on their own: those get attempts + 1, a backoff with jitter and their
error, and are dead-lettered after ``max_attempts``; every other row publishes in the same
pass. Rows are independent: a dead row never blocks a newer version of its entity.

What can fail is a row the relay refuses (a kind it does not publish: a writer newer than
the relay, during a rolling upgrade) or one the database refuses (a constraint, a trigger,
a value out of range). The tests make the database refuse one payload with a trigger.

Errors that are nobody's fault (:class:`~studypub.errors.TransientError`: the database is
away, a timeout, a deadlock, a serialization failure) are not the rows': the batch rolls back
whole and is tried again at the next pass, no attempt counted, no row bisected or
dead-lettered. The engine says once that the database went away and once that it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime, timedelta

from sqlalchemy.ext.asyncio import (
    AsyncConnection,
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
)

from studypub import metrics, store
from studypub.db import dialect_of
from studypub.errors import DatabaseUnavailable, InvalidInput, TransientError, one_line
from studypub.models import utcnow
from studypub.notify import OUTBOX_CHANNEL, outbox_signal, pg_listen
from studypub.projection import KINDS
from studypub.store import Claim, OutboxRow, Verdict
from studypub.waiting import wait_any

BATCH_SIZE = 500
# PostgreSQL: a batch holds one advisory lock per entity until commit, in a lock table of
# max_locks_per_transaction x max_connections entries (6,400 by default) that every session
# shares; keep batch size x relays well under it.
MAX_BATCH_SIZE = 2_000
POLL_INTERVAL_S = 1.0
MAX_ATTEMPTS = 10
BACKOFF_BASE_S = 1.0
BACKOFF_CAP_S = 600.0
MAX_ERROR_CHARS = 1000
SKIPPED_RETRY_S = 0.02

log = logging.getLogger("studypub.relay")

Sessions = async_sessionmaker[AsyncSession]


@dataclass(slots=True)
class Outcomes:
    """What happened to claimed outbox rows; each claimed row counts exactly once.

    applied: published with a new seq. unchanged: same hash and deleted flag as published
    (versions moved forward, no feed entry), or a tombstone of an entity never published.
    stale: older than the published row, or coalesced away by a newer row of its batch.
    retried: failed, will be tried again later. dead: failed ``max_attempts`` times.
    """

    applied: int = 0
    unchanged: int = 0
    stale: int = 0
    retried: int = 0
    dead: int = 0

    @property
    def claimed(self) -> int:
        return self.applied + self.unchanged + self.stale + self.retried + self.dead

    def add(self, other: Outcomes) -> None:
        for f in fields(self):
            setattr(self, f.name, getattr(self, f.name) + getattr(other, f.name))

    def as_dict(self) -> dict[str, int]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


class Relay:
    """A relay worker. Any number may run at once, in any number of processes.

    ``run()`` serves until ``stop()``; ``run_once()`` drains what is due and returns.
    """

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        batch_size: int = BATCH_SIZE,
        poll_interval_s: float = POLL_INTERVAL_S,
        max_attempts: int = MAX_ATTEMPTS,
        backoff_base_s: float = BACKOFF_BASE_S,
        backoff_cap_s: float = BACKOFF_CAP_S,
        listen: bool = True,
    ) -> None:
        # The messages name the worker's options: the CLI passes them on as they are.
        if not 1 <= batch_size <= MAX_BATCH_SIZE:
            raise InvalidInput(f"invalid --batch-size {batch_size}: allowed 1..{MAX_BATCH_SIZE}")
        if not poll_interval_s > 0:
            raise InvalidInput(
                f"invalid --poll-interval {poll_interval_s}: must be more than 0 seconds"
            )
        if max_attempts < 1:
            raise InvalidInput(f"invalid --max-attempts {max_attempts}: must be at least 1")
        self.engine = engine
        self.batch_size = batch_size
        self.poll_interval_s = poll_interval_s
        self.max_attempts = max_attempts
        self.backoff_base_s = backoff_base_s
        self.backoff_cap_s = backoff_cap_s
        self.listen = listen
        self.totals = Outcomes()
        self._stop = asyncio.Event()
        self._wake = asyncio.Event()
        # Set while the LISTEN connection is up (PostgreSQL, while run() runs): readiness.
        self.listening: asyncio.Event | None = None

    # ------------------------------------------------------------ lifecycle

    def stop(self) -> None:
        """Ask the relay to stop after the batch in flight (idempotent, safe from signals)."""
        self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    async def run(self) -> None:
        """Serve until ``stop()``: wait for "notified, poll timer, or stop", then drain.

        Cancellation stops it too: the batch in flight still commits or rolls back whole
        (it runs shielded), then the cancellation goes on.
        """
        side_tasks = self._start_side_tasks()
        local = outbox_signal.subscribe()
        # One connection kept between wake-ups: a wake-up costs no pool checkout (and no
        # liveness ping). After any failure it is dropped, and the next pass opens another.
        conn: AsyncConnection | None = None
        try:
            while not self._stop.is_set():
                # Clear before draining: a notification that arrives during the drain must
                # cause one more look, not be lost.
                self._wake.clear()
                local.clear()
                try:
                    conn = conn or await self.engine.connect()
                    self.totals.add(await self._drain(conn))
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            await conn.close()
                        conn = None
                    # Keep serving and look again after the poll interval. An outage is
                    # logged once by the engine (db.OutageLog), not at every pass.
                    if not isinstance(exc, DatabaseUnavailable):
                        log.warning(
                            "relay pass rolled back, retrying after the poll interval: %s",
                            _describe(exc),
                            exc_info=not isinstance(exc, TransientError),
                            extra={"error": _describe(exc)},
                        )
                await wait_any(self._wake, local, self._stop, timeout_s=self.poll_interval_s)
        finally:
            self._stop.set()
            outbox_signal.unsubscribe(local)
            if conn is not None:
                await conn.close()
            for task in side_tasks:
                task.cancel()
            for task in side_tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    def _start_side_tasks(self) -> list[asyncio.Task[None]]:
        if not self.listen or dialect_of(self.engine) != "postgresql":
            return []  # SQLite: the in-process outbox signal, subscribed in run()
        url = self.engine.url.render_as_string(hide_password=False)
        self.listening = asyncio.Event()
        listener = pg_listen(url, OUTBOX_CHANNEL, self._wake.set, connected=self.listening)
        return [asyncio.create_task(listener, name="studypub-relay-listener")]

    # ------------------------------------------------------------ draining

    async def run_once(self) -> Outcomes:
        """Drain: run batches until nothing is due (or ``stop()``); returns the outcomes."""
        async with self.engine.connect() as conn:
            total = await self._drain(conn)
        self.totals.add(total)
        return total

    async def _drain(self, conn: AsyncConnection) -> Outcomes:
        # One connection for the whole drain: no pool checkout (and liveness ping) per batch.
        sessions = async_sessionmaker(bind=conn, expire_on_commit=False)
        total = Outcomes()
        while True:
            batch = asyncio.ensure_future(self._batch(sessions))
            try:
                # Shielded: a cancellation lets the batch in flight finish whole.
                outcomes, claim = await asyncio.shield(batch)
            except asyncio.CancelledError:
                self.stop()
                await asyncio.wait([batch])
                raise
            total.add(outcomes)
            if self._stop.is_set():
                return total
            if claim.skipped:
                # Due rows of entities another relay holds (PostgreSQL): that relay commits
                # within a batch's time, or within the idle-in-transaction timeout if it
                # hangs. Look again, after a pause when nothing else was ours to do.
                if not claim.ids:
                    await asyncio.sleep(SKIPPED_RETRY_S)
                continue
            # A short batch means nothing else was due when it claimed. Rows committed since
            # then have woken us again (run() cleared the wake-ups before this drain).
            if len(claim.ids) < self.batch_size:
                return total

    async def _batch(self, sessions: Sessions) -> tuple[Outcomes, Claim]:
        """One batch, claimed then published; a failure isolates the failing rows."""
        started = time.perf_counter()
        failure: Exception | None = None
        async with sessions() as session:
            now = utcnow()
            # 1. Claim (PostgreSQL: FOR UPDATE SKIP LOCKED, and a lock per entity until
            # commit; SQLite: BEGIN IMMEDIATE, the only writer). A failure here is nothing
            # to blame on rows: the next pass tries again.
            claim = await store.claim_batch(session, now=now, limit=self.batch_size)
            if not claim.ids:
                return Outcomes(), claim  # an empty claim is a look, not a batch
            try:
                outcomes = await self._publish(session, claim, now)
            except TransientError:
                raise  # nobody's fault: the batch rolls back whole, no row is blamed
            except Exception as exc:
                failure = exc  # isolated below, once this transaction has rolled back
        if failure is not None:
            log.warning(
                "batch of %d rows failed, isolating: %s",
                len(claim.ids),
                _describe(failure),
                extra={"claimed": len(claim.ids), "error": _describe(failure)},
            )
            outcomes = await self._isolate(sessions, claim.ids, failure)
        duration_s = time.perf_counter() - started
        if outcomes.claimed:
            _log_batch(outcomes, duration_s)
        metrics.record_batch(outcomes.as_dict(), duration_s)
        if failure is None and claim.oldest_age_s is not None:
            # Committed: the oldest row's wait at the claim, and the batch's time since.
            metrics.RELAY_LAG_SECONDS.observe(claim.oldest_age_s + duration_s)
        return outcomes, claim

    async def _isolate(
        self, sessions: Sessions, ids: Sequence[int], error: BaseException
    ) -> Outcomes:
        """Find the rows of a failed batch that fail on their own; publish the rest."""
        if len(ids) == 1:
            return await self._fail_alone(sessions, ids[0], error)
        total = Outcomes()
        middle = len(ids) // 2
        for half in (ids[:middle], ids[middle:]):
            try:
                total.add(await self._apply(sessions, half))
            except TransientError:
                raise
            except Exception as exc:
                total.add(await self._isolate(sessions, half, exc))
        return total

    async def _apply(self, sessions: Sessions, ids: Sequence[int]) -> Outcomes:
        """The due rows among ``ids`` in an apply transaction of their own; commits or raises."""
        async with sessions() as session:
            now = utcnow()
            claim = await store.claim_batch(session, now=now, limit=len(ids), ids=ids)
            return await self._publish(session, claim, now) if claim.ids else Outcomes()

    async def _fail_alone(
        self, sessions: Sessions, outbox_id: int, error: BaseException
    ) -> Outcomes:
        """Count a failed attempt of a row that fails on its own, in its own transaction."""
        async with sessions() as session:
            now = utcnow()
            claim = await store.claim_batch(session, now=now, limit=1, ids=[outbox_id])
            if not claim.ids:
                return Outcomes()  # applied meanwhile by another relay, or locked by one
            [row] = await store.read_claimed(session, claim.ids)
            outcomes = await self._count_failure(session, row, _describe(error), now)
            await session.commit()
        return outcomes

    # ------------------------------------------------------------ the apply transaction

    async def _publish(self, session: AsyncSession, claim: Claim, now: datetime) -> Outcomes:
        """Steps 2-5 of the apply transaction (DESIGN) on a claim, then commit."""
        # Coalesce, decide against the published rows, take the seqs as late as possible,
        # upsert, delete the processed rows: set-based, see sql/.
        counts = await store.publish_claimed(session, claim, now=now)
        outcomes = Outcomes(
            applied=counts[Verdict.APPLY],
            unchanged=counts[Verdict.UNCHANGED],
            stale=counts[Verdict.STALE],
        )
        # A kind this code does not publish comes from a writer newer than this relay (a
        # rolling upgrade) or from a hand-made row, and no consumer could interpret it: the
        # retries give a newer relay the chance to take it, the dead letter keeps it for an
        # operator otherwise.
        if claim.refused:
            for row in await store.read_claimed(session, claim.refused):
                error = f"unknown kind {row.kind!r}; this relay publishes {', '.join(KINDS)}"
                outcomes.add(await self._count_failure(session, row, error, now))
        await session.commit()
        return outcomes

    async def _count_failure(
        self, session: AsyncSession, row: OutboxRow, error: str, now: datetime
    ) -> Outcomes:
        """Count one failed attempt of a claimed row: retried after a backoff with jitter,
        dead-lettered at ``max_attempts``. The caller commits."""
        error = error[:MAX_ERROR_CHARS]
        result = await store.fail_row(
            session,
            row.id,
            error=error,
            now=now,
            available_at=now + self._backoff(row.attempts + 1),
            max_attempts=self.max_attempts,
        )
        if result is None:
            return Outcomes()  # gone: another relay applied it
        attempts, dead = result
        log.warning(
            "outbox row %d %s: %s",
            row.id,
            "dead-lettered" if dead else "will be retried",
            error,
            extra={
                "outbox_id": row.id,
                "kind": row.kind,
                "source_id": row.source_id,
                "source_version": row.source_version,
                "attempts": attempts,
                "dead": dead,
                "error": error,
            },
        )
        return Outcomes(dead=1) if dead else Outcomes(retried=1)

    def _backoff(self, attempts: int) -> timedelta:
        """Exponential backoff with full jitter in its upper half (no retry storms)."""
        ceiling = min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempts - 1))
        return timedelta(seconds=ceiling * random.uniform(0.5, 1.0))


def _log_batch(outcomes: Outcomes, duration_s: float) -> None:
    """One line per batch: readable as text, and its counts as fields of their own (a JSON
    log line has ``applied``, ..., ``dead`` and ``duration_ms``)."""
    counts = outcomes.as_dict()
    duration_ms = round(duration_s * 1000, 1)
    log.info(
        "relay batch: %s in %.1f ms",
        ", ".join(f"{count} {name}" for name, count in counts.items()),
        duration_ms,
        extra={**counts, "duration_ms": duration_ms},
    )


def _describe(exc: BaseException) -> str:
    """``ErrorClass: first line``, as stored with a failed row and logged."""
    cause = getattr(exc, "orig", None) or exc
    return f"{type(cause).__name__}: {one_line(cause)}"
