"""``studypub backfill``: enqueue existing source rows, resumable page by page."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import backfill as driver
from studypub.cli.common import DEFAULT_URL, DatabaseUrl, console, fail, run, with_engine
from studypub.cli.progress import TargetProgress
from studypub.errors import StudypubError
from studypub.targets import DEFAULT_PAGE, MAX_PAGE, MIN_PAGE, check_page, parse_targets

INTERRUPTED = (
    "interrupted: the page in flight was rolled back and every committed page is kept; "
    "run the same command again to resume"
)
TARGET_HELP = "What to backfill: topics, questions, cards, card-progress, or all (in that order)."

TargetName = Annotated[
    str,
    typer.Argument(metavar="TARGET", help=TARGET_HELP, show_default=False),
]
Page = Annotated[
    int,
    typer.Option(
        "--page",
        envvar="STUDYPUB_BACKFILL_PAGE",
        help=f"Source rows per page, {MIN_PAGE}..{MAX_PAGE}; one transaction each.",
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


def command(
    target: TargetName,
    page: Page = DEFAULT_PAGE,
    restart: Restart = False,
    database_url: DatabaseUrl = DEFAULT_URL,
) -> None:
    """Enqueue every eligible source row of TARGET for publication, page by page.

    Each page commits with its checkpoint, so a stopped run resumes where it stopped.

    A finished target starts a new full pass next time.
    """
    try:
        targets = parse_targets(target, command="backfill")
        check_page(page)
    except StudypubError as exc:
        raise fail(str(exc)) from None

    progress = TargetProgress.bar()

    async def work(engine: AsyncEngine) -> list[driver.TargetSummary]:
        return await driver.run_backfill(
            engine, targets, page=page, restart=restart, progress=progress.report
        )

    with progress:
        summaries = run(
            with_engine(database_url, work),
            after_database_error="the page in flight was rolled back, "
            "run the same command again to resume",
            interrupted=INTERRUPTED,
        )
    console.print(_summary_table(summaries))


def _summary_table(summaries: list[driver.TargetSummary]) -> Table:
    table = Table(title="backfill", title_justify="left")
    for name in ("target", "rows", "outbox rows", "pages", "seconds", "rows/s", "from id"):
        table.add_column(name, justify="left" if name == "target" else "right")
    for s in summaries:
        table.add_row(
            s.target.label,
            f"{s.rows:,}",
            f"{s.outbox_rows:,}",
            f"{s.pages:,}",
            f"{s.seconds:.1f}",
            f"{s.rows_per_s:,.0f}",
            f"{s.resumed_from:,}",
        )
    return table
