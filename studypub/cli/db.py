"""``studypub db``: schema migrations."""

from __future__ import annotations

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import feed, migrate
from studypub.cli.common import DEFAULT_URL, DatabaseUrl, console, run, with_engine
from studypub.db import session_factory

app = typer.Typer(help="Database schema: upgrade, current, check.", no_args_is_help=True)


@app.command()
def upgrade(
    database_url: DatabaseUrl = DEFAULT_URL,
    revision: str = typer.Option("head", help="Target revision."),
) -> None:
    """Migrate the database to the newest schema (or to --revision)."""
    run(with_engine(database_url, lambda engine: migrate.upgrade(engine, revision)))
    target = migrate.head_revision() if revision == "head" else revision
    console.print(f"database at revision [bold]{target}[/]")


@app.command()
def current(database_url: DatabaseUrl = DEFAULT_URL) -> None:
    """Print the revision the database is at."""
    rev = run(with_engine(database_url, migrate.current_revision))
    console.print(rev or "none (empty database: run `studypub db upgrade`)")


@app.command()
def check(database_url: DatabaseUrl = DEFAULT_URL) -> None:
    """Exit 0 if the database is at the newest revision, 1 (with the fix) if not."""
    run(with_engine(database_url, migrate.require_current))
    console.print(f"database is up to date ({migrate.head_revision()})")


@app.command("new-epoch")
def new_epoch(
    database_url: DatabaseUrl = DEFAULT_URL,
    yes: bool = typer.Option(False, "--yes", help="Do not ask for confirmation."),
) -> None:
    """Start a new feed epoch: every consumer must read again from 0.

    Run it after restoring the database from a backup: consumers may hold entries the backup
    lacks, and only a new epoch tells them their copy cannot be continued.
    """
    if not yes:
        typer.confirm(
            "Every consumer will have to read the whole feed again. Continue?", abort=True
        )

    async def work(engine: AsyncEngine) -> str:
        await migrate.require_current(engine)
        async with session_factory(engine)() as session:
            epoch = await feed.start_new_epoch(session)
            await session.commit()
        return epoch

    epoch = run(with_engine(database_url, work))
    console.print(f"feed epoch is now [bold]{epoch}[/]: consumers will read again from 0")
