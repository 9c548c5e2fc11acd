"""Helpers of the foundation tests (outbox, backfill, migrations, CLI): fresh databases,
bulk-seeded source rows, outbox reads, and the ``studypub`` command in a subprocess."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import insert, make_url, select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession
from typer.testing import CliRunner, Result

from studypub import migrate
from studypub import outbox as enqueue
from studypub.cli import app
from studypub.db import create_engine
from studypub.models import BackfillCheckpoint, CardProgress, MemoCard, Outbox, Question, Topic
from studypub.targets import Target

PG_ADMIN_URL = os.environ.get(
    "STUDYPUB_TEST_PG_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/postgres"
)
T0 = datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC)


# ---------------------------------------------------------------- fresh databases


async def _pg_admin(sql: str) -> None:
    dsn = make_url(PG_ADMIN_URL).set(drivername="postgresql")
    conn = await asyncpg.connect(dsn.render_as_string(hide_password=False), timeout=5)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def fresh_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database with no schema at all: a new SQLite file, or a new PostgreSQL
    database created (and dropped) here. The shared ``pg_url`` fixture decides whether
    PostgreSQL is there (skip locally, fail under CI)."""
    if request.param == "sqlite":
        yield f"sqlite+aiosqlite:///{tmp_path / 'fresh.db'}"
        return
    request.getfixturevalue("pg_url")
    name = f"studypub_test_{os.getpid()}_fresh"
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    asyncio.run(_pg_admin(f'CREATE DATABASE "{name}"'))
    yield make_url(PG_ADMIN_URL).set(database=name).render_as_string(hide_password=False)
    asyncio.run(_pg_admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


# ---------------------------------------------------------------- source rows


def _source(row_id: int, **fields: Any) -> dict[str, Any]:
    return {"id": row_id, "version": 1, "created_at": T0, "updated_at": T0, **fields}


async def seed_topics(engine: AsyncEngine, ids: Sequence[int], **fields: Any) -> None:
    rows = [_source(i, title=f"Topic {i}", description="", **fields) for i in ids]
    await _insert(engine, Topic, rows)


async def seed_questions(
    engine: AsyncEngine, ids: Sequence[int], *, topic_id: int = 1, **fields: Any
) -> None:
    """Questions ``ids`` (topic 1 must exist); an even id has a ready explanation."""
    rows = [
        _source(
            i,
            topic_id=topic_id,
            stem=f"Question {i}: which one?",
            choices=["yes", "no", "maybe"],
            answer="yes",
            explanation=f"Because {i}." if i % 2 == 0 else None,
            explanation_status="ready" if i % 2 == 0 else "pending",
        )
        | fields
        for i in ids
    ]
    await _insert(engine, Question, rows)


async def seed_cards(
    engine: AsyncEngine, ids: Sequence[int], *, topic_id: int = 1, **fields: Any
) -> None:
    rows = [
        _source(i, topic_id=topic_id, front=f"Front {i}", back=f"Back {i}", needs_review=False)
        | fields
        for i in ids
    ]
    await _insert(engine, MemoCard, rows)


async def seed_progress(
    engine: AsyncEngine, ids: Sequence[int], *, card_id: int = 1, **fields: Any
) -> None:
    rows = [
        _source(i, card_id=card_id, learner=f"learner-{i}", state="new", reps=0, lapses=0) | fields
        for i in ids
    ]
    await _insert(engine, CardProgress, rows)


async def _insert(engine: AsyncEngine, model: type[Any], rows: list[dict[str, Any]]) -> None:
    if rows:
        async with engine.begin() as conn:
            await conn.execute(insert(model.__table__), rows)


# ---------------------------------------------------------------- outbox and checkpoints


async def backfill_page(session: AsyncSession, target: Target, **options: Any) -> tuple[int, int]:
    """Enqueue one keyset page of ``target`` without a checkpoint (the seed's
    ``backfill_publish_*``); returns (source rows read, last id read). The caller commits.
    ``options``: those of :func:`studypub.outbox.read_backfill_page`."""
    page = await enqueue.read_backfill_page(session, target, **options)
    await enqueue.insert_backfill_page(session, page)
    return page.rows, page.last_id


async def outbox(engine: AsyncEngine) -> list[Any]:
    """Every outbox row, in insert order."""
    async with engine.connect() as conn:
        return list((await conn.execute(select(Outbox.__table__).order_by(Outbox.id))).all())


async def outbox_counts(engine: AsyncEngine) -> Counter[tuple[str, int]]:
    """How many outbox rows each (kind, source id) has."""
    return Counter((row.kind, row.source_id) for row in await outbox(engine))


async def checkpoint(engine: AsyncEngine, target: str) -> Any:
    async with engine.connect() as conn:
        return (
            await conn.execute(
                select(BackfillCheckpoint.__table__).where(BackfillCheckpoint.target == target)
            )
        ).one_or_none()


async def wait_for_rows_done(
    engine: AsyncEngine, target: str, rows: int, *, timeout_s: float = 60
) -> None:
    """Wait until a running backfill of ``target`` has committed ``rows`` rows."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        mark = await checkpoint(engine, target)
        if mark is not None and mark.rows_done >= rows:
            return
        await asyncio.sleep(0.005)
    raise AssertionError(f"the backfill of {target} did not reach {rows} rows in {timeout_s} s")


@pytest.fixture
async def migrated(fresh_url: str) -> AsyncIterator[AsyncEngine]:
    """A database migrated the way an operator does it (commands check the revision)."""
    engine = create_engine(fresh_url)
    await migrate.upgrade(engine)
    yield engine
    await engine.dispose()


async def invoke_cli(*args: str) -> tuple[int, str]:
    """Run a ``studypub`` command in-process from an async test: (exit code, output).

    The command runs its own event loop, so it gets a thread of its own.
    """
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args))
    return result.exit_code, result.output


# ---------------------------------------------------------------- the command


def studypub_argv(*args: str) -> list[str]:
    """The ``studypub`` command of this environment, run as a module (no PATH lookup)."""
    return [sys.executable, "-c", "from studypub.cli import main; main()", *args]


def run_studypub(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        studypub_argv(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


def cli(*args: str) -> Result:
    """Run ``studypub`` in this process (faster than a subprocess); stderr kept apart."""
    return CliRunner().invoke(app, list(args))
