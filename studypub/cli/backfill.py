"""``studypub backfill``: enqueue existing source rows, resumable page by page."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import backfill as driver
from studypub.cli.common import DEFAULT_URL, DatabaseUrl, console, fail, run, with_engine
from studypub.errors import StudypubError

INTERRUPTED = (
    "interrupted: the page in flight was rolled back and every committed page is kept; "
    "run the same command again to resume"
)
TARGET_HELP = "What to backfill: topics, questions, cards, card-progress, or all (in that order)."

Target = Annotated[
    str,
    typer.Argument(metavar="TARGET", help=TARGET_HELP, show_default=False),
]
Page = Annotated[
    int,
    typer.Option(
        "--page",
        envvar="STUDYPUB_BACKFILL_PAGE",
        help=f"Source rows per page, {driver.MIN_PAGE}..{driver.MAX_PAGE}; one transaction each.",
    ),
]
Restart = Annotated[
    bool,
    typer.Option(
        "--restart",
        envvar="STUDYPUB_BACKFILL_RESTART",
        help="Start a new pass from the first row instead of resuming an unfinished one.",
    ),
]


class RateColumn(ProgressColumn):
    """Rows per second (rich's own speed column speaks of bytes)."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f} rows/s", style="progress.data.speed")


def command(
    target: Target,
    page: Page = driver.DEFAULT_PAGE,
    restart: Restart = False,
    database_url: DatabaseUrl = DEFAULT_URL,
) -> None:
    """Enqueue every eligible source row of TARGET for publication, page by page.

    Each page commits with its checkpoint, so a stopped run resumes where it stopped.

    A finished target starts a new full pass next time.
    """
    try:
        targets = driver.parse_targets(target)
        driver.check_page(page)
    except StudypubError as exc:
        raise fail(str(exc)) from None

    # The bar starts with the first report, so that a refusal (no database, no schema) is
    # the only line printed.
    bar = _progress()
    tasks: dict[str, TaskID] = {}

    def report(name: str, done: int, total: int) -> None:
        if not tasks:
            bar.start()
        if name not in tasks:
            tasks[name] = bar.add_task(name.replace("_", "-"), total=total, completed=done)
        bar.update(tasks[name], completed=done, total=total)

    async def work(engine: AsyncEngine) -> list[driver.TargetSummary]:
        return await driver.run_backfill(
            engine, targets, page=page, restart=restart, progress=report
        )

    try:
        summaries = run(
            with_engine(database_url, work),
            after_database_error="the page in flight was rolled back, "
            "run the same command again to resume",
            interrupted=INTERRUPTED,
        )
    finally:
        if tasks:
            bar.stop()
    console.print(_summary_table(summaries))


def _progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description:<13}"),
        BarColumn(),
        MofNCompleteColumn(),
        RateColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        console=console,
    )


def _summary_table(summaries: list[driver.TargetSummary]) -> Table:
    table = Table(title="backfill", title_justify="left")
    for name in ("target", "rows", "outbox rows", "pages", "seconds", "rows/s", "from id"):
        table.add_column(name, justify="left" if name == "target" else "right")
    for s in summaries:
        table.add_row(
            s.target.replace("_", "-"),
            f"{s.rows:,}",
            f"{s.outbox_rows:,}",
            f"{s.pages:,}",
            f"{s.seconds:.1f}",
            f"{s.rows_per_s:,.0f}",
            f"{s.resumed_from:,}",
        )
    return table
