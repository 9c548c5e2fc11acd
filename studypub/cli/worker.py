"""``studypub worker`` (the relay) and ``studypub status`` (is it keeping up?)."""

from __future__ import annotations

import json
import logging
from typing import Annotated, Any

import typer
from rich.table import Table
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import migrate, relay, store
from studypub.cli.common import DEFAULT_URL, DatabaseUrl, console, run, with_engine
from studypub.db import read_session_factory
from studypub.models import utcnow
from studypub.signals import on_stop

BatchSize = Annotated[
    int,
    typer.Option(
        "--batch-size",
        envvar="STUDYPUB_BATCH_SIZE",
        help=f"Outbox rows claimed per apply transaction, 1..{relay.MAX_BATCH_SIZE}.",
    ),
]
PollInterval = Annotated[
    float,
    typer.Option(
        "--poll-interval",
        envvar="STUDYPUB_POLL_INTERVAL",
        help="Seconds between looks when no wake-up arrives (the safety net), > 0.",
    ),
]
MaxAttempts = Annotated[
    int,
    typer.Option(
        "--max-attempts",
        envvar="STUDYPUB_MAX_ATTEMPTS",
        help="Failed attempts before an outbox row is dead-lettered, >= 1.",
    ),
]
Once = Annotated[
    bool,
    typer.Option(
        "--once",
        envvar="STUDYPUB_WORKER_ONCE",
        help="Drain what is due, print the outcome counts and exit.",
    ),
]
AsJson = Annotated[bool, typer.Option("--json", help="Print one JSON object.")]


def worker(
    batch_size: BatchSize = relay.BATCH_SIZE,
    poll_interval: PollInterval = relay.POLL_INTERVAL_S,
    max_attempts: MaxAttempts = relay.MAX_ATTEMPTS,
    once: Once = False,
    database_url: DatabaseUrl = DEFAULT_URL,
) -> None:
    """Run the relay: publish outbox rows to the feed until Ctrl-C or SIGTERM.

    Any number of workers may run at once, in any number of processes.

    On Ctrl-C or SIGTERM the batch in flight commits or rolls back whole, then exit 0.
    """
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    async def work(engine: AsyncEngine) -> relay.Outcomes:
        # The Relay checks the options (InvalidInput: one `error:` line), before the database.
        worker = relay.Relay(
            engine,
            batch_size=batch_size,
            poll_interval_s=poll_interval,
            max_attempts=max_attempts,
        )
        await migrate.require_current(engine)
        with on_stop(worker.stop):
            if once:
                return await worker.run_once()
            await worker.run()
            return worker.totals

    outcomes = run(with_engine(database_url, work))
    counts = ", ".join(f"{name} {count}" for name, count in outcomes.as_dict().items())
    console.print(f"{'drained' if once else 'stopped'}: {counts}", highlight=False)


def status(as_json: AsJson = False, database_url: DatabaseUrl = DEFAULT_URL) -> None:
    """Show the outbox backlog, dead rows, the feed head and the published counts."""

    async def work(engine: AsyncEngine) -> store.Status:
        await migrate.require_current(engine)
        async with read_session_factory(engine)() as session:
            return await store.read_status(session)

    current = run(with_engine(database_url, work))
    age = (
        None
        if current.oldest_pending_at is None
        else round((utcnow() - current.oldest_pending_at).total_seconds(), 3)
    )
    report: dict[str, Any] = {
        "pending": current.pending,
        "oldest_pending_age_s": age,
        "dead": current.dead,
        "head": current.head.last_seq,
        "floor": current.head.floor,
        "epoch": current.head.epoch,
        "published": current.published,
    }
    if as_json:
        print(json.dumps(report))
        return
    console.print(
        f"outbox: [bold]{current.pending}[/] pending"
        + ("" if age is None else f" (oldest {age:.1f} s old)")
        + f", [bold]{current.dead}[/] dead",
        highlight=False,
    )
    console.print(
        f"feed: epoch {current.head.epoch}, head {current.head.last_seq}, "
        f"floor {current.head.floor}",
        highlight=False,
    )
    table = Table("kind", "live", "tombstones")
    for kind, counts in current.published.items():
        table.add_row(kind, str(counts["live"]), str(counts["tombstones"]))
    console.print(table)
