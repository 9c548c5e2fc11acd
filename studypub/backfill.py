"""Backfill: enqueue every eligible source row of a target, one keyset page per transaction.

Each page and its checkpoint row (``backfill_checkpoints``, key = target) commit together, so
a run stopped anywhere (Ctrl-C, ``kill -9``, a lost connection) resumes exactly after the
last committed page: no gap, no repeat. A finished checkpoint means the next run is a new
full pass (e.g. after a schema-version bump); ``restart=True`` ignores an unfinished one.

Safe beside live writes and relays: a snapshot read here that is older than a live update
is dropped by the relay as *stale* (DESIGN invariant 3). The same argument lets the driver
read and project the next page on a read-only session while the current page is written,
which keeps the database and Python busy at the same time (bench/backfill.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import migrate, outbox, target_store
from studypub.db import ping, read_session_factory, session_factory
from studypub.models import utcnow
from studypub.targets import DEFAULT_PAGE, Target, check_page
from studypub.targets import TARGETS as TARGETS  # every target, in order: what serve backfills

READ_AHEAD_GRACE_S = 5.0

# (target, rows done, total rows): called after every committed page and once at the start.
ProgressCallback = Callable[[Target, int, int], None]


@dataclass(frozen=True)
class TargetSummary:
    """What one target's run did. ``rows`` counts source rows enqueued by this run."""

    target: Target
    rows: int
    outbox_rows: int
    pages: int
    seconds: float
    resumed_from: int  # the id after which this run started (0 = a full pass)

    @property
    def rows_per_s(self) -> float:
        return self.rows / self.seconds if self.seconds > 0 else 0.0


async def run_backfill(
    engine: AsyncEngine,
    targets: Sequence[Target],
    *,
    page: int = DEFAULT_PAGE,
    restart: bool = False,
    progress: ProgressCallback | None = None,
) -> list[TargetSummary]:
    """Backfill ``targets`` in order; returns one summary per target.

    Raises :class:`~studypub.errors.InvalidInput`,
    :class:`~studypub.errors.DatabaseUnavailable` or
    :class:`~studypub.errors.SchemaNotMigrated` before touching anything.
    """
    check_page(page)
    await ping(engine)
    await migrate.require_current(engine)
    sessions, reads = session_factory(engine), read_session_factory(engine)
    return [
        await backfill_target(
            sessions, target, page=page, restart=restart, progress=progress, reads=reads
        )
        for target in targets
    ]


async def backfill_target(
    sessions: async_sessionmaker[AsyncSession],
    target: Target,
    *,
    page: int = DEFAULT_PAGE,
    restart: bool = False,
    progress: ProgressCallback | None = None,
    reads: async_sessionmaker[AsyncSession] | None = None,
) -> TargetSummary:
    """Page through one target until a page comes back short.

    With ``reads`` (read-only sessions), the next page is read and projected while the
    current one is written, so the database and Python work at the same time.
    """
    started = time.perf_counter()
    resumed_from, rows_before, total = await _open_checkpoint(sessions, target, restart=restart)
    if progress is not None:
        progress(target, rows_before, total)
    rows = pages = 0
    done = False
    ahead: asyncio.Task[outbox.BackfillPage] | None = None
    try:
        while not done:
            async with sessions() as session, session.begin():
                # The checkpoint row is locked first, so two runs of one target take turns
                # page by page instead of enqueuing the same page twice.
                checkpoint = await target_store.lock_checkpoint(session, target)
                if checkpoint is None or checkpoint.finished:  # another run finished this pass
                    break
                # A page read ahead is used only if it starts at the checkpoint (no other run
                # moved it meanwhile). It was read just before this transaction began: as
                # safe as any backfill snapshot, the relay drops what is older than published.
                current = await ahead if ahead is not None else None
                ahead = None
                if current is None or current.after_id != checkpoint.last_id:
                    current = await outbox.read_backfill_page(
                        session, target, after_id=checkpoint.last_id, limit=page
                    )
                done = current.rows < page
                if reads is not None and not done:
                    ahead = asyncio.create_task(_read_ahead(reads, target, current.last_id, page))
                await outbox.insert_backfill_page(session, current)
                await target_store.advance_checkpoint(
                    session,
                    target,
                    last_id=current.last_id,
                    rows=current.rows,
                    finished=done,
                    now=utcnow(),
                )
            rows += current.rows
            pages += 1
            if progress is not None:
                progress(target, rows_before + rows, max(total, rows_before + rows))
    finally:
        if ahead is not None:  # stopped early (Ctrl-C, an error, another run finished)
            # Let the read in flight finish and drop it: cancelling it mid-statement would
            # leave its connection unusable and hide the real error behind that one.
            with suppress(Exception):
                await asyncio.wait_for(ahead, READ_AHEAD_GRACE_S)
    return TargetSummary(
        target=target,
        rows=rows,
        outbox_rows=rows * len(target.kinds),
        pages=pages,
        seconds=time.perf_counter() - started,
        resumed_from=resumed_from,
    )


async def _read_ahead(
    reads: async_sessionmaker[AsyncSession], target: Target, after_id: int, page: int
) -> outbox.BackfillPage:
    async with reads() as session:
        return await outbox.read_backfill_page(session, target, after_id=after_id, limit=page)


async def _open_checkpoint(
    sessions: async_sessionmaker[AsyncSession], target: Target, *, restart: bool
) -> tuple[int, int, int]:
    """Resume an unfinished checkpoint or start a new pass: (after id, rows done, total)."""
    try:
        return await _open_checkpoint_once(sessions, target, restart=restart)
    except IntegrityError:
        # Another run created the checkpoint row between our read and our insert (first run
        # of a target on PostgreSQL): its pass is unfinished, so join it instead.
        return await _open_checkpoint_once(sessions, target, restart=False)


async def _open_checkpoint_once(
    sessions: async_sessionmaker[AsyncSession], target: Target, *, restart: bool
) -> tuple[int, int, int]:
    async with sessions() as session, session.begin():
        current = await target_store.lock_checkpoint(session, target)
        if current is not None and not current.finished and not restart:
            left = await target_store.count_eligible(session, target, after_id=current.last_id)
            return current.last_id, current.rows_done, current.rows_done + left
        await target_store.start_checkpoint(
            session, target, now=utcnow(), exists=current is not None
        )
        return 0, 0, await target_store.count_eligible(session, target, after_id=0)
