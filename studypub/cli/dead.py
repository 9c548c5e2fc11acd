"""``studypub dead``: the outbox rows the relay gave up on. ``list`` and ``show`` read them;
``replay`` gives them a fresh round of attempts once the cause is fixed; ``drop`` deletes
them, after a confirmation."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated, Any

import typer
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import dead, migrate
from studypub.cli.common import DEFAULT_URL, DatabaseUrl, console, fail, run, with_engine
from studypub.db import read_session_factory, session_factory
from studypub.errors import StudypubError
from studypub.models import utcnow
from studypub.projection import KINDS, iso_utc

app = typer.Typer(
    help="Dead outbox rows: list them, show one, replay them after a fix, or drop them.",
    no_args_is_help=True,
)

Kinds = Annotated[
    list[str] | None,
    typer.Option(
        "--kind",
        metavar="KIND",
        help=f"Only dead rows of this kind (repeatable): {', '.join(KINDS)}.",
        show_default=False,
    ),
]
Ids = Annotated[
    list[int] | None,
    typer.Option(
        "--id",
        metavar="ID",
        help="The dead row with this outbox id (repeatable); with --kind, only if of that kind.",
        show_default=False,
    ),
]
Every = Annotated[bool, typer.Option("--all", help="Every dead row.")]
Limit = Annotated[
    int, typer.Option("--limit", help=f"Rows to show, oldest dead first, 1..{dead.MAX_LIMIT}.")
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object instead.")]
Yes = Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")]
OutboxId = Annotated[int, typer.Argument(metavar="ID", help="The outbox id (`dead list`).")]


@app.command("list")
def list_rows(
    kind: Kinds = None,
    limit: Limit = dead.DEFAULT_LIMIT,
    as_json: AsJson = False,
    database_url: DatabaseUrl = DEFAULT_URL,
) -> None:
    """List the dead rows, oldest dead first, with the first line of each one's error."""
    try:
        kinds = dead.check_kinds(kind or [])
        dead.check_limit(limit)
    except StudypubError as exc:
        raise fail(str(exc)) from None

    async def work(engine: AsyncEngine) -> dead.DeadPage:
        await migrate.require_current(engine)
        async with read_session_factory(engine)() as session:
            return await dead.list_rows(session, kinds=kinds, limit=limit)

    page = run(with_engine(database_url, work))
    now = utcnow()
    if as_json:
        rows = [
            {
                "id": row.id,
                "kind": row.kind,
                "source_id": row.source_id,
                "source_version": row.source_version,
                "attempts": row.attempts,
                "error": row.first_line,
                "dead_at": iso_utc(row.dead_at),
                "dead_age_s": _age_s(row.dead_at, now),
            }
            for row in page.rows
        ]
        typer.echo(json.dumps({"total": page.total, "rows": rows}))
        return
    if not page.rows:
        console.print(f"no dead rows{_of(kinds)}", highlight=False)
        return
    table = Table(title=f"dead rows{_of(kinds)}", title_justify="left")
    for name in ("id", "kind", "entity", "version", "attempts", "age"):
        table.add_column(name, justify="left" if name == "kind" else "right", no_wrap=True)
    # The one column rich may narrow: the numbers are never squeezed, the error is cut.
    table.add_column("error")
    for row in page.rows:
        table.add_row(
            str(row.id),
            Text(row.kind),  # Text: never read as rich markup
            str(row.source_id),
            str(row.source_version),
            str(row.attempts),
            _age(row.dead_at, now),
            Text(row.first_line, no_wrap=True, overflow="ellipsis"),
        )
    console.print(table)
    shown = len(page.rows)
    more = f" ({shown} shown: --limit to see more)" if shown < page.total else ""
    console.print(
        f"{_count(page.total)}{more}; `studypub dead show ID` for one in full",
        highlight=False,
        soft_wrap=True,
    )


@app.command()
def show(
    outbox_id: OutboxId, as_json: AsJson = False, database_url: DatabaseUrl = DEFAULT_URL
) -> None:
    """Show one dead row in full: its error and the payload it would publish."""
    try:
        dead.check_id(outbox_id, option="ID")
    except StudypubError as exc:
        raise fail(str(exc)) from None

    async def work(engine: AsyncEngine) -> dead.DeadDetail:
        await migrate.require_current(engine)
        async with read_session_factory(engine)() as session:
            return await dead.read_row(session, outbox_id)

    row = run(with_engine(database_url, work))
    now = utcnow()
    if as_json:
        body: dict[str, Any] = {
            "id": row.id,
            "kind": row.kind,
            "source_id": row.source_id,
            "source_version": row.source_version,
            "schema_version": row.schema_version,
            "deleted": row.deleted,
            "scope": row.scope,
            "attempts": row.attempts,
            "enqueued_at": iso_utc(row.enqueued_at),
            "dead_at": iso_utc(row.dead_at),
            "dead_age_s": _age_s(row.dead_at, now),
            "error": row.error,
            "payload_hash": row.payload_hash,
            "payload": row.payload,
        }
        typer.echo(json.dumps(body))
        return
    for name, value in (
        ("outbox row", str(row.id)),
        ("kind", row.kind),
        ("entity", f"{row.source_id}, version {row.source_version}"),
        ("schema version", str(row.schema_version)),
        ("snapshot", "tombstone (deleted)" if row.deleted else "publication"),
        ("scope", row.scope or "shared"),
        ("enqueued", f"{iso_utc(row.enqueued_at)} ({_age(row.enqueued_at, now)} ago)"),
        ("dead since", f"{iso_utc(row.dead_at)} ({_age(row.dead_at, now)} ago)"),
        ("attempts", str(row.attempts)),
        ("payload hash", row.payload_hash),
    ):
        # Text: stored strings are never read as rich markup.
        console.print(Text.assemble((f"{name:<16}", "bold"), value), soft_wrap=True)
    console.print("[bold]error[/]")
    console.print(row.error or "(none recorded)", markup=False, highlight=False)
    console.print("[bold]payload[/]")
    console.print(
        json.dumps(row.payload, indent=2, sort_keys=True, ensure_ascii=False),
        markup=False,
        highlight=False,
    )


@app.command()
def replay(
    kind: Kinds = None,
    outbox_id: Ids = None,
    every: Every = False,
    database_url: DatabaseUrl = DEFAULT_URL,
) -> None:
    """Make the chosen dead rows due again, with a fresh round of attempts (fix the cause first).

    Always safe: a row older than what was published since ends as stale, and the newer version
    stays. Each row keeps its last error until the relay tries it again.
    """
    choice = _choose(kind, outbox_id, every)

    async def work(engine: AsyncEngine) -> dead.Changed:
        await migrate.require_current(engine)
        async with session_factory(engine)() as session:
            changed = await dead.replay(session, choice, now=utcnow())
            await session.commit()
        return changed

    changed = run(with_engine(database_url, work))
    line = (
        f"replayed {_count(changed.rows)}: due again at the relay's next pass"
        if changed.rows
        else "no dead rows matched: nothing replayed"
    )
    console.print(line + _not_dead(changed), highlight=False, soft_wrap=True)


@app.command()
def drop(
    kind: Kinds = None,
    outbox_id: Ids = None,
    every: Every = False,
    yes: Yes = False,
    database_url: DatabaseUrl = DEFAULT_URL,
) -> None:
    """Delete the chosen dead rows, after a confirmation: their snapshots are never published.

    A newer write of the entity still publishes; `studypub verify --repair` enqueues the current
    state of any entity the feed is left behind on.
    """
    choice = _choose(kind, outbox_id, every)
    dead_until: datetime | None = None
    if not yes:
        # Counted in a read session of its own: no write lock is held while the prompt waits.
        async def counting(engine: AsyncEngine) -> tuple[int, datetime | None]:
            await migrate.require_current(engine)
            async with read_session_factory(engine)() as session:
                return await dead.count(session, choice)

        chosen, dead_until = run(with_engine(database_url, counting))
        if not chosen:
            console.print("no dead rows matched: nothing dropped", highlight=False)
            return
        typer.confirm(
            f"Delete {_count(chosen)}? Deleted snapshots are never published.", abort=True
        )

    async def work(engine: AsyncEngine) -> dead.Changed:
        await migrate.require_current(engine)
        async with session_factory(engine)() as session:
            changed = await dead.drop(session, choice, dead_until=dead_until)
            await session.commit()
        return changed

    changed = run(with_engine(database_url, work))
    line = f"dropped {_count(changed.rows)}" if changed.rows else "no dead rows matched"
    console.print(line + _not_dead(changed), highlight=False, soft_wrap=True)


def _choose(kinds: list[str] | None, ids: list[int] | None, every: bool) -> dead.Choice:
    try:
        return dead.choose(kinds or [], ids or [], every=every)
    except StudypubError as exc:
        raise fail(str(exc)) from None


def _count(n: int) -> str:
    return f"{n:,} dead row{'' if n == 1 else 's'}"


def _of(kinds: tuple[str, ...] | None) -> str:
    return f" of kind {', '.join(kinds)}" if kinds else ""


def _not_dead(changed: dead.Changed) -> str:
    if not changed.not_dead:
        return ""
    ids = ", ".join(map(str, changed.not_dead))
    return f"; not dead rows: {ids} (published, dropped, waiting, or never enqueued)"


def _age_s(since: datetime, now: datetime) -> float:
    return round(max((now - since).total_seconds(), 0.0), 3)


def _age(since: datetime, now: datetime) -> str:
    """``42s``, ``5m``, ``3h 12m``, ``2d 4h``: two units at most, for a table cell."""
    seconds = int(_age_s(since, now))
    if seconds < 60:
        return f"{seconds}s"
    minutes, hours, days = seconds // 60, seconds // 3_600, seconds // 86_400
    if hours < 1:
        return f"{minutes}m"
    if days < 1:
        return f"{hours}h {minutes % 60}m"
    return f"{days}d {hours % 24}h"
