"""``studypub prune``: retention for tombstones, which raises the feed floor."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import feed, migrate
from studypub.cli.common import DEFAULT_URL, DatabaseUrl, console, fail, run, with_engine
from studypub.db import session_factory

OlderThanDays = Annotated[
    float,
    typer.Option(
        "--older-than-days",
        envvar="STUDYPUB_PRUNE_OLDER_THAN_DAYS",
        help="Delete tombstones published more than this many days ago, >= 0.",
    ),
]


def prune(older_than_days: OlderThanDays = 30.0, database_url: DatabaseUrl = DEFAULT_URL) -> None:
    """Delete old tombstones and raise the feed floor.

    Consumers whose cursor is below the new floor are told to start again from 0 (HTTP 410):
    keep tombstones longer than your slowest consumer may stay away. A tombstone whose entity
    still has an outbox row waiting is kept.
    """
    if not older_than_days >= 0:
        raise fail(f"invalid --older-than-days {older_than_days}: must be zero or more")

    async def work(engine: AsyncEngine) -> tuple[int, int]:
        await migrate.require_current(engine)
        async with session_factory(engine)() as session:
            pruned = await feed.prune_tombstones(
                session, older_than=timedelta(days=older_than_days)
            )
            floor = (await feed.head(session)).floor
            await session.commit()
        return pruned, floor

    pruned, floor = run(with_engine(database_url, work))
    console.print(f"pruned {pruned} tombstones; feed floor {floor}", highlight=False)
