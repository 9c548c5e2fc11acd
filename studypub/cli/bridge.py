"""``studypub bridge --nats URL``: publish the feed to a NATS JetStream stream."""

from __future__ import annotations

import asyncio
from typing import Annotated

import typer
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import bridge as driver
from studypub import migrate
from studypub.cli.common import (
    DEFAULT_URL,
    DatabaseUrl,
    LogFormat,
    LogFormatOption,
    console,
    fail,
    run,
    setup_logging,
    with_engine,
)
from studypub.signals import on_stop

NatsUrl = Annotated[
    str,
    typer.Option(
        "--nats",
        envvar="STUDYPUB_NATS_URL",
        help="The NATS server (JetStream enabled), e.g. nats://127.0.0.1:4222; a cluster's"
        " servers separated by commas.",
        show_default=False,
    ),
]
Prefix = Annotated[
    str,
    typer.Option(
        "--prefix",
        envvar="STUDYPUB_NATS_PREFIX",
        help="Subject prefix; streams are <PREFIX>_<epoch>, the head bucket <prefix>_feed.",
    ),
]


def check_nats(nats_url: str | None, prefix: str) -> None:
    """A clear refusal of a NATS URL or subject prefix that cannot work."""
    if nats_url is None:
        raise fail("--nats is required: the NATS server, e.g. nats://127.0.0.1:4222")
    servers = driver.servers_of(nats_url)
    if not servers or not all(url.startswith(("nats://", "tls://")) for url in servers):
        raise fail(
            f"--nats {nats_url!r} is not a nats:// URL (or several, separated by commas),"
            " e.g. nats://127.0.0.1:4222"
        )
    if not prefix or not prefix.replace("_", "").replace("-", "").isalnum():
        raise fail(f"--prefix {prefix!r}: letters, digits, '-' and '_' only")


def bridge(
    nats_url: NatsUrl,
    prefix: Prefix = driver.PREFIX,
    database_url: DatabaseUrl = DEFAULT_URL,
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    """Follow the feed and publish every entry, in seq order, to JetStream (one stream per
    epoch, one subject per entity). One bridge publishes at a time; start a second one as a
    standby. Ctrl-C or SIGTERM stop it after the batch in flight."""
    check_nats(nats_url, prefix)
    setup_logging(log_format)

    def said(state: str) -> None:
        if state == "standby":
            console.print("standby: another bridge is publishing; taking over when it stops")
        else:
            console.print(f"active: publishing the feed to {nats_url}", highlight=False)

    async def work(engine: AsyncEngine) -> driver.BridgeStats:
        await migrate.require_current(engine)
        stop = asyncio.Event()
        worker = driver.Bridge(engine, nats_url, prefix=prefix, on_state=said)
        with on_stop(stop.set):
            await worker.run(stop)
        return worker.stats

    stats = run(with_engine(database_url, work))
    console.print(
        f"stopped: {stats.published} messages published, up to seq {stats.bridged_seq}",
        highlight=False,
    )
