"""``studypub backfill``: one-line errors for bad input, the summary, Ctrl-C that resumes."""

from __future__ import annotations

import asyncio
import signal
import time
from asyncio.subprocess import DEVNULL, PIPE
from contextlib import suppress
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import migrate
from studypub.cli.backfill import INTERRUPTED
from studypub.db import create_engine
from tests.support.cli import cli, studypub_argv
from tests.support.databases import url_of
from tests.support.outbox import checkpoint, exactly_once, outbox_counts, wait_for_rows_done
from tests.support.seed import seed_questions, seed_topics

KINDS = ("question", "explanation")  # what a question row feeds

NOT_MIGRATED = (
    f"error: the database has no studypub schema, this studypub needs "
    f"{migrate.head_revision()}: run `studypub db upgrade`"
)


def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'studypub.db'}"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["quiz"],
            "error: unknown backfill target 'quiz': "
            "choose one of topics, questions, cards, card-progress, all",
        ),
        (
            ["topics", "--page", "0"],
            "error: page size 0 is out of range: choose a page of 1 to 50,000 rows",
        ),
        (
            ["all", "--page", "50001"],
            "error: page size 50001 is out of range: choose a page of 1 to 50,000 rows",
        ),
    ],
    ids=["unknown-target", "page-0", "page-50001"],
)
def test_bad_arguments(tmp_path: Path, args: list[str], message: str):
    url = sqlite_url(tmp_path)
    result = cli("backfill", *args, "--database-url", url)
    assert (result.exit_code, result.stderr.strip(), result.stdout) == (1, message, "")
    assert not (tmp_path / "studypub.db").exists()  # refused before touching the database


@pytest.mark.parametrize(
    "url",
    [
        "postgresql+asyncpg://postgres@127.0.0.1:1/studypub",
        "sqlite+aiosqlite:///{tmp}/no/such/dir/studypub.db",
    ],
    ids=["postgresql", "sqlite"],
)
def test_database_unreachable(tmp_path: Path, url: str):
    url = url.format(tmp=tmp_path)
    result = cli("backfill", "all", "--database-url", url)
    assert result.exit_code == 1
    line = result.stderr.strip()
    assert line.startswith(f"error: cannot reach the database at {url}: ")
    assert line.endswith(" (set --database-url or STUDYPUB_DATABASE_URL)")
    assert "\n" not in line and "Traceback" not in result.output


def test_schema_not_migrated(fresh_url: str):
    result = cli("backfill", "questions", "--database-url", fresh_url)
    assert (result.exit_code, result.stderr.strip()) == (1, NOT_MIGRATED)


async def _seed(url: str, questions: int) -> None:
    engine = create_engine(url)
    try:
        await seed_topics(engine, [1, 2, 3])
        await seed_questions(engine, range(1, questions + 1))
    finally:
        await engine.dispose()


def test_summary_and_env_fallback(fresh_url: str, monkeypatch: pytest.MonkeyPatch):
    assert cli("db", "upgrade", "--database-url", fresh_url).exit_code == 0
    asyncio.run(_seed(fresh_url, 12))
    monkeypatch.setenv("STUDYPUB_DATABASE_URL", fresh_url)
    result = cli("backfill", "all", "--page", "5")
    assert result.exit_code == 0, result.output
    rows = {
        line.split("│")[1].strip(): [cell.strip() for cell in line.split("│")[2:-1]]
        for line in result.stdout.splitlines()
        if line.startswith("│")
    }
    # target: rows, outbox rows, pages, seconds, rows/s, from id
    assert rows["topics"][:3] == ["3", "3", "1"]
    assert rows["questions"][:3] == ["12", "24", "3"]
    assert rows["cards"][:3] == ["0", "0", "1"]
    assert rows["card-progress"][:3] == ["0", "0", "1"]


def test_card_progress_spellings(fresh_url: str):
    assert cli("db", "upgrade", "--database-url", fresh_url).exit_code == 0
    for spelling in ("card-progress", "card_progress"):
        result = cli("backfill", spelling, "--database-url", fresh_url)
        assert result.exit_code == 0, result.output
        assert "card-progress" in result.stdout


async def questions_backfill(
    engine: AsyncEngine, rows: int, page: int, *, until: int
) -> tuple[list[str], asyncio.subprocess.Process]:
    """``rows`` questions, and ``studypub backfill questions`` at ``page`` rows a page running
    in a subprocess until it has committed ``until`` rows: (its argv, its process)."""
    await seed_topics(engine, [1])
    await seed_questions(engine, range(1, rows + 1))
    argv = studypub_argv("backfill", "questions", "--database-url", url_of(engine))
    proc = await asyncio.create_subprocess_exec(
        *argv, "--page", str(page), stdout=DEVNULL, stderr=PIPE
    )
    await wait_for_rows_done(engine, "questions", until)
    return argv, proc


async def test_ctrl_c_rolls_back_the_page_and_the_rerun_resumes(engine: AsyncEngine):
    rows = 20_000
    argv, proc = await questions_backfill(engine, rows, 10, until=100)
    proc.send_signal(signal.SIGINT)
    _, stderr = await proc.communicate()
    assert proc.returncode == 130
    assert stderr.decode().strip() == f"error: {INTERRUPTED}"
    assert "Traceback" not in stderr.decode()

    mark = await checkpoint(engine, "questions")
    assert mark.finished_at is None and 0 < mark.last_id < rows
    assert await outbox_counts(engine) == exactly_once(range(1, mark.last_id + 1), KINDS)

    rerun = await asyncio.create_subprocess_exec(*argv, "--page", "2000", stdout=PIPE, stderr=PIPE)
    stdout, stderr = await rerun.communicate()
    assert rerun.returncode == 0, stderr.decode()
    assert f"{mark.last_id:,}" in stdout.decode()  # the summary's "from id"
    assert await outbox_counts(engine) == exactly_once(range(1, rows + 1), KINDS)


# An embedded SQLite file has no server connection to lose: PostgreSQL only.
@pytest.mark.parametrize("fresh_url", ["postgresql"], indirect=True)
async def test_lost_connection_is_one_line_and_the_rerun_resumes(engine: AsyncEngine):
    rows = 30_000
    argv, proc = await questions_backfill(engine, rows, 20, until=200)
    deadline = time.monotonic() + 60
    # What a database restart does to the run. A connection idle in the pool at that
    # moment is replaced silently (pre-ping), so kill until one dies mid-statement.
    while proc.returncode is None and time.monotonic() < deadline:
        async with engine.connect() as conn:
            await conn.execute(
                text(
                    "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND pid <> pg_backend_pid()"
                )
            )
        with suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 0.05)
    _, stderr = await proc.communicate()
    message = stderr.decode().strip()
    assert proc.returncode == 1, message
    assert message.startswith(
        ("error: the database is unavailable", "error: lost the connection to the database")
    ), message
    assert message.endswith(
        "the page in flight was rolled back, run the same command again to resume"
    )
    assert "\n" not in message and "Traceback" not in message

    mark = await checkpoint(engine, "questions")
    assert mark.finished_at is None
    rerun = await asyncio.create_subprocess_exec(*argv, stdout=DEVNULL, stderr=PIPE)
    _, stderr = await rerun.communicate()
    assert rerun.returncode == 0, stderr.decode()
    assert await outbox_counts(engine) == exactly_once(range(1, rows + 1), KINDS)
