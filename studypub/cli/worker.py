"""``studypub worker``: the relay (``studypub status`` says whether it keeps up)."""

from __future__ import annotations

import contextlib
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import migrate, relay
from studypub.api.app import create_worker_app
from studypub.cli.common import (
    DEFAULT_URL,
    DatabaseUrl,
    LogFormat,
    LogFormatOption,
    check_port,
    console,
    run,
    setup_logging,
    with_engine,
)
from studypub.serving import running
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


def worker(
    batch_size: BatchSize = relay.BATCH_SIZE,
    poll_interval: PollInterval = relay.POLL_INTERVAL_S,
    max_attempts: MaxAttempts = relay.MAX_ATTEMPTS,
    once: Once = False,
    database_url: DatabaseUrl = DEFAULT_URL,
    log_format: LogFormatOption = LogFormat.TEXT,
    metrics_port: Annotated[
        int | None,
        typer.Option(
            "--metrics-port",
            envvar="STUDYPUB_METRICS_PORT",
            min=1,
            max=65535,
            help="Serve /metrics (Prometheus, no token), /healthz and /readyz on this port.",
            show_default=False,
        ),
    ] = None,
    metrics_host: Annotated[
        str,
        typer.Option(
            "--metrics-host",
            envvar="STUDYPUB_METRICS_HOST",
            help="Interface of --metrics-port: keep it private (the scraper's network).",
        ),
    ] = "127.0.0.1",
) -> None:
    """Run the relay: publish outbox rows to the feed until Ctrl-C or SIGTERM.

    Any number of workers may run at once, in any number of processes.

    On Ctrl-C or SIGTERM the batch in flight commits or rolls back whole, then exit 0.
    """
    setup_logging(log_format)
    if metrics_port is not None:
        check_port(metrics_host, metrics_port, "--metrics-port")

    async def work(engine: AsyncEngine) -> relay.Outcomes:
        # The Relay checks the options (InvalidInput: one `error:` line), before the database.
        worker = relay.Relay(
            engine,
            batch_size=batch_size,
            poll_interval_s=poll_interval,
            max_attempts=max_attempts,
        )
        await migrate.require_current(engine)
        async with contextlib.AsyncExitStack() as stack:
            if metrics_port is not None:
                app = create_worker_app(engine, worker)
                await stack.enter_async_context(
                    running(app, host=metrics_host, port=metrics_port, root_logging=True)
                )
            with on_stop(worker.stop):
                if once:
                    return await worker.run_once()
                await worker.run()
                return worker.totals

    outcomes = run(with_engine(database_url, work))
    counts = ", ".join(f"{name} {count}" for name, count in outcomes.as_dict().items())
    console.print(f"{'drained' if once else 'stopped'}: {counts}", highlight=False)
