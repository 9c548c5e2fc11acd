"""Backfill: every eligible row exactly once across pages, the seed's filters, resumability."""

from __future__ import annotations

import asyncio
import signal
from asyncio.subprocess import DEVNULL, PIPE
from collections import Counter
from typing import Any

import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import backfill
from studypub import outbox as enqueue
from studypub.db import create_engine
from studypub.errors import InvalidInput, SchemaNotMigrated
from studypub.models import BackfillCheckpoint
from studypub.targets import QUESTIONS, TARGETS, TOPICS, parse_targets
from tests.support.cli import run_studypub, studypub_argv
from tests.support.outbox import (
    backfill_page,
    checkpoint,
    exactly_once,
    outbox_counts,
    read_outbox,
    wait_for_rows_done,
)
from tests.support.seed import T0, seed_cards, seed_progress, seed_questions, seed_topics

Sessions = async_sessionmaker[AsyncSession]
PAGE = 5


@pytest.mark.parametrize("ahead", [True, False], ids=["read-ahead", "sequential"])
@pytest.mark.parametrize("rows", [0, 1, PAGE - 1, PAGE, PAGE + 1, 2 * PAGE, 3 * PAGE + 2])
async def test_every_row_once_across_page_boundaries(
    engine: AsyncEngine, sessions: Sessions, reads: Sessions, rows: int, ahead: bool
):
    await seed_topics(engine, [1])
    await seed_questions(engine, range(1, rows + 1))
    summary = await backfill.backfill_target(
        sessions, QUESTIONS, page=PAGE, reads=reads if ahead else None
    )
    assert await outbox_counts(engine) == exactly_once(range(1, rows + 1), QUESTIONS.kinds)
    assert (summary.rows, summary.outbox_rows) == (rows, 2 * rows)
    assert summary.pages == rows // PAGE + 1  # the last page is the short one (maybe empty)
    done = await checkpoint(engine, "questions")
    assert (done.last_id, done.rows_done, done.finished_at is not None) == (rows, rows, True)


async def test_page_loop_of_the_seed_functions(engine: AsyncEngine, sessions: Sessions):
    """The seed's overflow bug: one call of ``limit`` rows dropped row ``limit + 1``."""
    await seed_topics(engine, [1])
    await seed_questions(engine, range(1, PAGE + 2))
    after_id, calls = 0, 0
    while True:
        async with sessions() as s, s.begin():
            count, after_id = await backfill_page(s, QUESTIONS, after_id=after_id, limit=PAGE)
        calls += 1
        if count < PAGE:
            break
    assert calls == 2 and after_id == PAGE + 1
    assert await outbox_counts(engine) == exactly_once(
        range(1, PAGE + 2), ("question", "explanation")
    )


async def test_filters(engine: AsyncEngine, sessions: Sessions):
    await seed_topics(engine, [1, 2])
    await seed_topics(engine, [3], deleted_at=T0)
    await seed_questions(engine, [1, 2])
    await seed_questions(engine, [3], deleted_at=T0)
    await seed_cards(engine, [1])  # approved and live
    await seed_cards(engine, [2], needs_review=True)
    await seed_cards(engine, [3], retired_at=T0)
    await seed_cards(engine, [4], deleted_at=T0)
    await seed_progress(engine, [1])  # due_at NULL: never scheduled
    await seed_progress(engine, [2], state="suspended", due_at=T0)  # terminal
    await seed_progress(engine, [3], state="retired")
    await seed_progress(engine, [4], deleted_at=T0)

    summaries = {
        target.name: await backfill.backfill_target(sessions, target, page=PAGE)
        for target in TARGETS
    }
    rows = await read_outbox(engine)
    enqueued = {(r.kind, r.source_id): r.deleted for r in rows}
    assert enqueued == {
        ("topic", 1): False,
        ("topic", 2): False,
        ("question", 1): False,
        ("explanation", 1): True,  # pending: a tombstone keeps the viewer clean
        ("question", 2): False,
        ("explanation", 2): False,
        ("card", 1): False,
        # every progress row, a deleted one as its tombstone
        ("card_progress", 1): False,
        ("card_progress", 2): False,
        ("card_progress", 3): False,
        ("card_progress", 4): True,
    }
    assert len(rows) == len(enqueued)
    assert {t: s.rows for t, s in summaries.items()} == {
        "topics": 2,
        "questions": 2,
        "cards": 1,
        "card_progress": 4,
    }


async def test_resumes_after_a_stop_between_pages(
    engine: AsyncEngine, sessions: Sessions, reads: Sessions
):
    await seed_topics(engine, [1])
    await seed_questions(engine, range(1, 23))

    class Stop(Exception):
        pass

    def stop_after_two_pages(_target: str, done: int, _total: int) -> None:
        if done >= 2 * PAGE:
            raise Stop

    with pytest.raises(Stop):
        await backfill.backfill_target(
            sessions, QUESTIONS, page=PAGE, progress=stop_after_two_pages, reads=reads
        )
    assert await outbox_counts(engine) == exactly_once(range(1, 11), ("question", "explanation"))

    reports: list[tuple[int, int]] = []
    summary = await backfill.backfill_target(
        sessions, QUESTIONS, page=PAGE, progress=lambda _t, d, n: reports.append((d, n))
    )
    assert summary.resumed_from == 10 and summary.rows == 12
    assert reports[0] == (10, 22) and reports[-1] == (22, 22)
    assert await outbox_counts(engine) == exactly_once(range(1, 23), ("question", "explanation"))


async def test_page_in_flight_rolls_back(
    engine: AsyncEngine, sessions: Sessions, reads: Sessions, monkeypatch: pytest.MonkeyPatch
):
    """A failure after a page's rows were inserted loses the page and its checkpoint alike."""
    await seed_topics(engine, [1])
    await seed_questions(engine, range(1, 18))
    real_insert = enqueue.insert_backfill_page
    calls = 0

    async def failing_third_page(session: AsyncSession, page: enqueue.BackfillPage) -> None:
        nonlocal calls
        calls += 1
        await real_insert(session, page)  # the rows are in the transaction now
        if calls == 3:
            raise ConnectionResetError("connection lost mid-page")

    monkeypatch.setattr(backfill.outbox, "insert_backfill_page", failing_third_page)
    with pytest.raises(ConnectionResetError):
        await backfill.backfill_target(sessions, QUESTIONS, page=PAGE, reads=reads)
    assert await outbox_counts(engine) == exactly_once(range(1, 11), ("question", "explanation"))
    assert (await checkpoint(engine, "questions")).last_id == 10

    monkeypatch.setattr(backfill.outbox, "insert_backfill_page", real_insert)
    await backfill.backfill_target(sessions, QUESTIONS, page=PAGE, reads=reads)
    assert await outbox_counts(engine) == exactly_once(range(1, 18), ("question", "explanation"))


async def test_finished_pass_starts_over_and_restart_ignores_checkpoint(
    engine: AsyncEngine, sessions: Sessions
):
    await seed_topics(engine, range(1, 8))
    first = await backfill.backfill_target(sessions, TOPICS, page=PAGE)
    second = await backfill.backfill_target(sessions, TOPICS, page=PAGE)
    assert (first.rows, second.rows, second.resumed_from) == (7, 7, 0)
    assert await outbox_counts(engine) == Counter({("topic", i): 2 for i in range(1, 8)})

    async with sessions() as s, s.begin():  # an unfinished pass that stopped at id 5
        await s.execute(
            update(BackfillCheckpoint)
            .where(BackfillCheckpoint.target == "topics")
            .values(last_id=5, rows_done=5, finished_at=None)
        )
    restarted = await backfill.backfill_target(sessions, TOPICS, page=PAGE, restart=True)
    assert (restarted.rows, restarted.resumed_from) == (7, 0)
    done = await checkpoint(engine, "topics")
    assert (done.last_id, done.rows_done, done.finished_at is not None) == (7, 7, True)


async def test_two_runs_at_once_enqueue_each_page_once(
    engine: AsyncEngine, sessions: Sessions, reads: Sessions, monkeypatch: pytest.MonkeyPatch
):
    """Runs of one target take turns on the checkpoint row instead of repeating pages."""
    await seed_topics(engine, [1])
    await seed_questions(engine, range(1, 41))
    real_open = backfill._open_checkpoint
    both_open = asyncio.Barrier(2)

    async def open_then_wait(*args: Any, **kw: Any) -> Any:
        # Both runs resume the same unfinished pass before either pages: the overlap.
        opened = await real_open(*args, **kw)
        await both_open.wait()
        return opened

    monkeypatch.setattr(backfill, "_open_checkpoint", open_then_wait)
    summaries = await asyncio.gather(
        backfill.backfill_target(sessions, QUESTIONS, page=PAGE, reads=reads),
        backfill.backfill_target(sessions, QUESTIONS, page=PAGE, reads=reads),
    )
    assert await outbox_counts(engine) == exactly_once(range(1, 41), ("question", "explanation"))
    assert sum(s.rows for s in summaries) == 40


# ---------------------------------------------------------------- a real kill -9

KILL_ROWS = 20_000
KILL_PAGE = 10


async def test_kill_9_mid_run_then_rerun_enqueues_every_row_once(fresh_url: str):
    assert run_studypub("db", "upgrade", "--database-url", fresh_url).returncode == 0
    engine = create_engine(fresh_url)
    try:
        await seed_topics(engine, [1])
        await seed_questions(engine, range(1, KILL_ROWS + 1))
        argv = studypub_argv("backfill", "questions", "--database-url", fresh_url)
        proc = await asyncio.create_subprocess_exec(
            *argv, "--page", str(KILL_PAGE), stdout=DEVNULL, stderr=DEVNULL
        )
        try:
            await wait_for_rows_done(engine, "questions", 10 * KILL_PAGE)  # a few pages
            assert proc.returncode is None, "the run ended before the kill"
            proc.send_signal(signal.SIGKILL)
        finally:
            await proc.wait()
        assert proc.returncode == -signal.SIGKILL, "the run ended before the kill"

        mark, counts = await checkpoint(engine, "questions"), await outbox_counts(engine)
        assert mark.finished_at is None
        # The checkpoint and its pages committed together: exactly the rows up to last_id.
        assert counts == exactly_once(range(1, mark.last_id + 1), ("question", "explanation"))
        assert mark.rows_done == mark.last_id and 0 < mark.last_id < KILL_ROWS

        # The rerun may use another page size: it resumes after the checkpoint's last id.
        rerun = await asyncio.create_subprocess_exec(
            *argv, "--page", "1000", stdout=DEVNULL, stderr=PIPE
        )
        _, stderr = await rerun.communicate()
        assert rerun.returncode == 0, stderr.decode()
        mark, counts = await checkpoint(engine, "questions"), await outbox_counts(engine)
        assert counts == exactly_once(range(1, KILL_ROWS + 1), ("question", "explanation"))
        assert (mark.rows_done, mark.finished_at is not None) == (KILL_ROWS, True)
    finally:
        await engine.dispose()


async def test_run_backfill_refuses_before_touching_anything(engine: AsyncEngine):
    with pytest.raises(InvalidInput, match="unknown backfill target 'quiz'"):
        parse_targets("quiz", command="backfill")
    assert parse_targets("card-progress", command="backfill") == (TARGETS[-1],)
    with pytest.raises(InvalidInput, match="page size 0 is out of range"):
        await backfill.run_backfill(engine, [TOPICS], page=0)
    with pytest.raises(SchemaNotMigrated):  # the fixture's schema has no alembic revision
        await backfill.run_backfill(engine, [TOPICS])
    assert await checkpoint(engine, "topics") is None
