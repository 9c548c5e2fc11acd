"""``studypub verify``: find drift between the source rows and the feed; ``--repair`` fixes it.

The exit status is for monitoring: 0 when there is no drift (or every drifted key was
enqueued for repair), 1 when drift is left.
"""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import migrate
from studypub import verify as driver
from studypub.cli.common import DEFAULT_URL, DatabaseUrl, console, fail, run, with_engine
from studypub.cli.progress import TargetProgress
from studypub.db import ping
from studypub.errors import StudypubError
from studypub.targets import DEFAULT_PAGE, MAX_PAGE, MIN_PAGE, check_page, parse_targets

TARGET_HELP = "What to verify: topics, questions, cards, card-progress, or all (in that order)."

TargetName = Annotated[str, typer.Argument(metavar="TARGET", help=TARGET_HELP, show_default=False)]
Page = Annotated[
    int,
    typer.Option(
        "--page",
        envvar="STUDYPUB_VERIFY_PAGE",
        help=f"Source rows per page, {MIN_PAGE}..{MAX_PAGE}.",
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
    target: TargetName,
    page: Page = DEFAULT_PAGE,
    repair: Repair = False,
    as_json: AsJson = False,
    database_url: DatabaseUrl = DEFAULT_URL,
) -> None:
    """Compare the projection of every source row of TARGET with its published row.

    Reports keys missing from the feed, stale in it, published but no longer eligible, and
    published ahead of their source row. Exits 1 when drift is left, 0 otherwise.
    """
    try:
        targets = parse_targets(target, command="verify")
        check_page(page)
    except StudypubError as exc:
        raise fail(str(exc)) from None

    progress = TargetProgress.spinner(enabled=not as_json)  # --json prints nothing else

    async def work(engine: AsyncEngine) -> tuple[list[driver.VerifySummary], driver.ChecksumCheck]:
        await ping(engine)
        await migrate.require_current(engine)
        summaries = await driver.verify(
            engine, targets, page=page, repair=repair, progress=progress.report
        )
        return summaries, await driver.verify_checksums(engine, targets, repair=repair)

    with progress:
        summaries, check = run(
            with_engine(database_url, work),
            interrupted="interrupted; every repair page enqueued so far is kept",
        )
    drift = sum(s.drift for s in summaries)
    repaired = sum(s.repaired for s in summaries)
    left = (drift - repaired if repair else drift) + check.unrepaired
    if as_json:
        body = {
            "drift": drift,
            "repaired": repaired,
            "kinds": [s.as_json() for s in summaries],
            "checksums_drifted": check.drifted,
            "checksums_repaired": check.repaired,
        }
        typer.echo(json.dumps(body, sort_keys=True))
    else:
        console.print(_table(summaries, repair=repair))
        console.print(_summary_line(summaries, drift, repaired, repair=repair), highlight=False)
        console.print(_checksum_line(check), highlight=False, soft_wrap=True)
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


def _checksum_line(check: driver.ChecksumCheck) -> str:
    if not check.drifted:
        return "state checksums: equal to a recount"
    kinds = ", ".join(check.drifted)
    if check.repaired:
        return f"state checksums of {kinds} differed from a recount: set to the recount"
    return f"state checksums of {kinds} differ from a recount; run with --repair to recount"


def _summary_line(
    summaries: list[driver.VerifySummary], drift: int, repaired: int, *, repair: bool
) -> str:
    checked = sum(s.checked for s in summaries)
    in_flight = sum(s.in_flight for s in summaries)
    waiting = f"; {in_flight:,} more in flight (outbox rows waiting)" if in_flight else ""
    if not drift:
        return f"no drift in {checked:,} keys checked{waiting}"
    parts = ", ".join(
        f"{sum(s.count(name) for s in summaries):,} {name.value.replace('_', ' ')}"
        for name in driver.DriftClass
    )
    line = f"drift in {drift:,} of {checked:,} keys checked ({parts}){waiting}"
    if not repair:
        return f"{line}; run with --repair to enqueue the fixes"
    line = f"{line}; enqueued {repaired:,} fixes for the relay"
    if drift > repaired:
        line += f"; {drift - repaired:,} ahead of their source rows cannot be repaired"
    return line
