"""``studypub verify``: find drift between the source rows and the feed; ``--repair`` fixes it.

The exit status is for monitoring: 0 when there is no drift (or every drifted key was
enqueued for repair), 1 when drift is left.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.progress import Progress, SpinnerColumn, TaskID, TextColumn, TimeElapsedColumn
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import backfill, migrate
from studypub import verify as driver
from studypub.cli.common import DEFAULT_URL, DatabaseUrl, console, fail, run, with_engine
from studypub.db import ping
from studypub.errors import StudypubError

TARGET_HELP = "What to verify: topics, questions, cards, card-progress, or all (in that order)."

Target = Annotated[str, typer.Argument(metavar="TARGET", help=TARGET_HELP, show_default=False)]
Page = Annotated[
    int,
    typer.Option(
        "--page",
        envvar="STUDYPUB_VERIFY_PAGE",
        help=f"Source rows per page, {backfill.MIN_PAGE}..{backfill.MAX_PAGE}.",
    ),
]
Repair = Annotated[
    bool,
    typer.Option(
        "--repair",
        envvar="STUDYPUB_VERIFY_REPAIR",
        help="Enqueue the current state of every drifted key; the relay publishes the fixes.",
    ),
]
AsJson = Annotated[
    bool, typer.Option("--json", help="Print the counts as one JSON object instead of a table.")
]


def command(
    target: Target,
    page: Page = driver.DEFAULT_PAGE,
    repair: Repair = False,
    as_json: AsJson = False,
    database_url: DatabaseUrl = DEFAULT_URL,
) -> None:
    """Compare the projection of every source row of TARGET with its published row.

    Reports keys missing from the feed, stale in it, published but no longer eligible, and
    published ahead of their source row. Exits 1 when drift is left, 0 otherwise.
    """
    try:
        targets = driver.parse_targets(target)
        backfill.check_page(page)
    except StudypubError as exc:
        raise fail(str(exc)) from None

    # A spinner with the rows checked so far, started by the first page so that a refusal
    # (no database, no schema) is the only line printed; --json prints nothing else.
    bar = Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description:<13}"),
        TextColumn("{task.completed:,} rows checked"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
    )
    tasks: dict[str, TaskID] = {}

    def report(name: str, rows: int) -> None:
        if as_json:
            return
        if not tasks:
            bar.start()
        if name not in tasks:
            tasks[name] = bar.add_task(name.replace("_", "-"), total=None)
        bar.update(tasks[name], completed=rows)

    async def work(engine: AsyncEngine) -> list[driver.VerifySummary]:
        await ping(engine)
        await migrate.require_current(engine)
        return await driver.verify(engine, targets, page=page, repair=repair, progress=report)

    try:
        summaries = run(
            with_engine(database_url, work),
            interrupted="interrupted; every repair page enqueued so far is kept",
        )
    finally:
        if tasks:
            bar.stop()
    drift = sum(s.drift for s in summaries)
    repaired = sum(s.repaired for s in summaries)
    left = drift - repaired if repair else drift
    if as_json:
        body = {"drift": drift, "repaired": repaired, "kinds": [s.as_json() for s in summaries]}
        typer.echo(json.dumps(body, sort_keys=True))
    else:
        console.print(_table(summaries, repair=repair))
        console.print(_one_line(summaries, drift, repaired, repair=repair), highlight=False)
    if left:
        raise typer.Exit(1)


def _table(summaries: list[driver.VerifySummary], *, repair: bool) -> Table:
    table = Table(title="verify", title_justify="left")
    # Keys in flight are only in the summary line: the table fits 80 columns.
    names = ["kind", "checked", "missing", "stale", "not eligible", "ahead"]
    if repair:
        names.append("enqueued")
    for name in names:
        table.add_column(name, justify="left" if name == "kind" else "right", no_wrap=True)
    for s in summaries:
        cells = [s.checked, s.missing, s.stale, s.not_eligible, s.ahead]
        if repair:
            cells.append(s.repaired)
        table.add_row(s.kind, *(f"{n:,}" for n in cells))
    return table


def _one_line(
    summaries: list[driver.VerifySummary], drift: int, repaired: int, *, repair: bool
) -> str:
    checked = sum(s.checked for s in summaries)
    in_flight = sum(s.in_flight for s in summaries)
    waiting = f"; {in_flight:,} more in flight (outbox rows waiting)" if in_flight else ""
    if not drift:
        return f"no drift in {checked:,} keys checked{waiting}"
    parts = ", ".join(
        f"{sum(getattr(s, name) for s in summaries):,} {name.replace('_', ' ')}"
        for name in driver.DRIFT_CLASSES
    )
    line = f"drift in {drift:,} of {checked:,} keys checked ({parts}){waiting}"
    if not repair:
        return f"{line}; run with --repair to enqueue the fixes"
    line = f"{line}; enqueued {repaired:,} fixes for the relay"
    if drift > repaired:
        line += f"; {drift - repaired:,} ahead of their source rows cannot be repaired"
    return line
