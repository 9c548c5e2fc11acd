"""``studypub prune``: retention for tombstones, which raises the feed floor."""

from __future__ import annotations

from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import feed, idempotency, migrate
from studypub.cli.common import (
    DEFAULT_URL,
    DatabaseUrl,
    console,
    fail,
    parse_duration,
    run,
    with_engine,
)
from studypub.db import session_factory
from studypub.errors import InvalidInput
from studypub.models import utcnow

OlderThan = Annotated[
    str,
    typer.Option(
        "--older-than",
        envvar="STUDYPUB_PRUNE_OLDER_THAN",
        help="Delete tombstones published longer ago than this: a number and a unit, m, h, d"
        " or w (90m, 12h, 30d, 2w); at least 1h.",
    ),
]


def prune(older_than: OlderThan = "30d", database_url: DatabaseUrl = DEFAULT_URL) -> None:
    """Delete old tombstones and raise the feed floor.

    Consumers whose cursor is below the new floor are told to start again from 0 (HTTP 410):
    keep tombstones longer than your slowest consumer may stay away. A tombstone whose entity
    still has an outbox row waiting is kept. Idempotency keys of reviews older than a day go
    too.
    """
    try:
        retention = feed.check_retention(parse_duration(older_than))
    except InvalidInput as exc:
        raise fail(str(exc)) from None

    async def work(engine: AsyncEngine) -> tuple[int, int, int]:
        await migrate.require_current(engine)
        async with session_factory(engine)() as session:
            pruned = await feed.prune_tombstones(session, older_than=retention)
            floor = (await feed.head(session)).floor
            keys = await idempotency.delete_expired(session, now=utcnow())
            await session.commit()
        return pruned, floor, keys

    pruned, floor, keys = run(with_engine(database_url, work))
    console.print(
        f"pruned {pruned} tombstones; feed floor {floor}; {keys} expired idempotency keys",
        highlight=False,
    )
