"""``studypub serve``, ``studypub demo`` and ``studypub replicate``: the viewer side."""

from __future__ import annotations

import asyncio
import os
import secrets
from pathlib import Path
from typing import Annotated

import httpx
import typer
from pydantic import ValidationError
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import backfill, bridge, migrate, sample, tokens
from studypub.api import create_app, create_edge_app
from studypub.cli.bridge import Prefix, check_nats
from studypub.cli.common import (
    DEFAULT_URL,
    DatabaseUrl,
    LogFormat,
    LogFormatOption,
    check_port,
    console,
    fail,
    run,
    setup_logging,
)
from studypub.db import create_engine, session_factory
from studypub.errors import TransientError
from studypub.relay import Relay
from studypub.replica import Replica, ReplicaError
from studypub.serving import serve_until_stopped
from studypub.settings import Settings
from studypub.signals import on_stop

DEMO_FILE = Path("studypub-demo.db")

Host = Annotated[
    str, typer.Option("--host", envvar="STUDYPUB_HOST", help="Interface to listen on.")
]
Port = Annotated[
    int,
    typer.Option("--port", envvar="STUDYPUB_PORT", min=1, max=65535, help="TCP port."),
]
AuthorToken = Annotated[
    str | None,
    typer.Option(
        "--author-token",
        envvar="STUDYPUB_AUTHOR_TOKEN",
        help="Bearer token for the authoring API (generated and printed when unset).",
        show_default=False,
    ),
]
ViewerToken = Annotated[
    str | None,
    typer.Option(
        "--viewer-token",
        envvar="STUDYPUB_VIEWER_TOKEN",
        help="The feed's service token: it reads everything, every learner's progress too"
        " (generated and printed when unset). Learners' apps use their own tokens"
        " (`studypub token issue`, POST /v1/viewer-tokens), signed with"
        " STUDYPUB_TOKEN_SECRET.",
        show_default=False,
    ),
]
OpenFeed = Annotated[
    bool,
    typer.Option(
        "--open-feed",
        envvar="STUDYPUB_OPEN_FEED",
        help="Let anyone read the whole feed without a token, every learner's progress"
        " included. Only on purpose (a demo, a feed of nothing private).",
    ),
]
NoRelay = Annotated[
    bool,
    typer.Option(
        "--no-relay",
        envvar="STUDYPUB_NO_RELAY",
        help="Do not run a relay in this process (run `studypub worker` elsewhere).",
    ),
]
DemoFile = Annotated[
    Path,
    typer.Option(
        "--file", envvar="STUDYPUB_DEMO_FILE", help="SQLite file, recreated on every run."
    ),
]


def serve(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    no_relay: NoRelay = False,
    database_url: DatabaseUrl = DEFAULT_URL,
    author_token: AuthorToken = None,
    viewer_token: ViewerToken = None,
    open_feed: OpenFeed = False,
    edge: Annotated[
        bool,
        typer.Option(
            "--edge",
            envvar="STUDYPUB_EDGE",
            help="An edge feed server: serve the feed from the NATS stream that `studypub"
            " bridge` publishes (--nats), with no database and no authoring API.",
        ),
    ] = False,
    nats_url: Annotated[
        str | None,
        typer.Option(
            "--nats",
            envvar="STUDYPUB_NATS_URL",
            help="With --edge: the NATS server, e.g. nats://127.0.0.1:4222.",
            show_default=False,
        ),
    ] = None,
    prefix: Prefix = bridge.PREFIX,
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    """Serve the API, the feed and the web viewer, with a relay in the same process; with
    --edge, the feed alone, from NATS."""
    settings = _settings(database_url, author_token, viewer_token, open_feed=open_feed)
    setup_logging(log_format)
    if edge:
        check_nats(nats_url, prefix)
        assert nats_url is not None
        check_port(host, port)
        run(_serve_edge(settings, host, port, nats_url=nats_url, prefix=prefix))
        return
    check_port(host, port)
    run(_serve(settings, host, port, relay=not no_relay, demo=False))


def demo(
    host: Host = "127.0.0.1",
    port: Port = 8000,
    file: DemoFile = DEMO_FILE,
    author_token: AuthorToken = None,
) -> None:
    """Recreate a SQLite database with sample content, publish it, and serve it."""
    check_port(host, port)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{file}{suffix}").unlink(missing_ok=True)
    settings = _settings(f"sqlite+aiosqlite:///{file}", author_token, None, open_feed=False)
    run(_serve(settings, host, port, relay=True, demo=True))


def replicate(
    from_url: Annotated[
        str,
        typer.Option(
            "--from",
            envvar="STUDYPUB_FEED_URL",
            help="Base URL of a studypub server, e.g. http://127.0.0.1:8000, or a NATS server"
            " the bridge publishes to, e.g. nats://127.0.0.1:4222 (the stream, read directly).",
        ),
    ],
    into: Annotated[
        Path,
        typer.Option("--into", envvar="STUDYPUB_REPLICA_FILE", help="SQLite file of the replica."),
    ],
    follow: Annotated[
        bool,
        typer.Option(
            "--follow",
            envvar="STUDYPUB_REPLICA_FOLLOW",
            help="Keep following (long-poll) after catching up; Ctrl-C to stop.",
        ),
    ] = False,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="STUDYPUB_VIEWER_TOKEN", help="Viewer bearer token, if needed."
        ),
    ] = None,
    verify: Annotated[
        bool,
        typer.Option(
            "--verify",
            help="Catch up once, compare the replica with the feed's state checksums, and"
            " exit 0 when exact, 1 when kinds differed (they are read again and swapped in).",
        ),
    ] = False,
    prefix: Prefix = bridge.PREFIX,
) -> None:
    """Copy a server's feed (or the NATS stream of it) into a local SQLite replica; resumes
    where it stopped. Each catch-up compares the replica with the feed's state checksums and
    reads again only the kinds that differ."""
    if from_url.startswith(("nats://", "tls://")):
        check_nats(from_url, prefix)
    elif not from_url.startswith(("http://", "https://")):
        raise fail(
            f"--from {from_url!r} is neither an http(s) nor a nats:// URL, e.g."
            " http://127.0.0.1:8000 or nats://127.0.0.1:4222"
        )
    if verify and follow:
        raise fail("--verify checks once and exits: leave out --follow")
    if run(_replicate(from_url, into, follow=follow, token=token, prefix=prefix)) and verify:
        raise typer.Exit(1)


# ---------------------------------------------------------------- the work


def _settings(
    database_url: str, author_token: str | None, viewer_token: str | None, *, open_feed: bool
) -> Settings:
    """The server's settings, from the options and the environment (``STUDYPUB_*``)."""
    try:
        return Settings(
            database_url=database_url,
            author_token=author_token or secrets.token_urlsafe(24),
            viewer_token=viewer_token or None,
            open_feed=open_feed,
        )
    except ValidationError as exc:
        problems = "; ".join(
            f"STUDYPUB_{'_'.join(map(str, err['loc'])).upper()}: {err['msg']}"
            for err in exc.errors()
        )
        raise fail(f"invalid setting: {problems}") from None


async def _serve(settings: Settings, host: str, port: int, *, relay: bool, demo: bool) -> None:
    engine = create_engine(settings.database_url)
    try:
        if demo:
            await _prepare_demo(engine)
        else:
            await migrate.require_current(engine)
        app = create_app(settings, engine)
        url = f"http://{host}:{port}"
        await serve_until_stopped(
            app,
            host=host,
            port=port,
            relay=Relay(engine) if relay else None,
            # The app's settings: with the tokens it generated, for the banner to print.
            on_started=lambda: _banner(url, app.state.settings, relay=relay, demo=demo),
            # serve logs in its --log-format; the demo keeps to its banner (no log setup).
            root_logging=not demo,
        )
        console.print("stopped")
    finally:
        await engine.dispose()


async def _serve_edge(
    settings: Settings, host: str, port: int, *, nats_url: str, prefix: str
) -> None:
    app = create_edge_app(nats_url, settings, prefix=prefix)
    url = f"http://{host}:{port}"

    def started() -> None:
        _banner(url, app.state.settings, relay=True, demo=False, edge=True)
        console.print(f"edge: the feed from {nats_url} (prefix {prefix})", highlight=False)

    await serve_until_stopped(
        app, host=host, port=port, relay=None, on_started=started, root_logging=True
    )
    console.print("stopped")


async def _prepare_demo(engine: AsyncEngine) -> None:
    with console.status("creating the demo database"):
        await migrate.upgrade(engine)
        async with session_factory(engine)() as session, session.begin():
            summary = await sample.load_sample(session)
    console.print(
        f"sample: {summary.topics} topics, {summary.questions} questions, {summary.cards} cards, "
        f"{summary.progress} progress rows ({summary.reviews} reviews)"
    )
    with console.status("backfilling and publishing"):
        await backfill.run_backfill(engine, backfill.TARGETS)
        outcomes = await Relay(engine).run_once()
    console.print(f"published: {outcomes.as_dict()}")


def _banner(url: str, settings: Settings, *, relay: bool, demo: bool, edge: bool = False) -> None:
    token = settings.author_token
    console.print()
    console.print(f"[bold]studypub[/] serving on [bold cyan]{url}[/]")
    if not edge:
        console.print(f"author token: [bold]{token}[/]")
    if settings.open_feed:
        console.print(
            "[bold yellow]open feed[/]: anyone can read every learner's progress (--open-feed)"
        )
    else:
        console.print(f"service viewer token (reads everything): [bold]{settings.viewer_token}[/]")
        console.print(
            f"viewer page: {url}/#token={settings.viewer_token}", highlight=False, soft_wrap=True
        )
    if os.environ.get(tokens.SECRET_ENV) is None:
        console.print(
            f"learner tokens: signed with a key of this process only ({tokens.SECRET_ENV} is"
            " unset): they stop working when it stops"
            if not edge
            else f"learner tokens: refused ({tokens.SECRET_ENV} is unset; set the origin's)",
            highlight=False,
        )
    if not relay:
        console.print("no relay in this process: run `studypub worker` to publish writes")
    if demo:
        assert settings.token_secret is not None
        learner, _ = tokens.issue(settings.token_secret, sample.LEARNER)
        console.print(
            f"{sample.LEARNER}'s page (a learner's token): {url}/#token={learner}",
            highlight=False,
            soft_wrap=True,
        )
        console.print()
        console.print("Try a write (the viewer shows it at once):")
        console.print(
            f"  curl -X POST {url}/v1/topics -H 'Authorization: Bearer {token}' "
            "-H 'Content-Type: application/json' "
            """-d '{"title": "Hello", "description": "Written with curl"}'""",
            highlight=False,
            soft_wrap=True,
        )
        console.print("a feed read, and a token for one learner's app:")
        viewer = f"-H 'Authorization: Bearer {settings.viewer_token}'"
        console.print(
            f"  curl {viewer} '{url}/v1/feed?since=0&limit=5'", highlight=False, soft_wrap=True
        )
        console.print(
            f"  curl -X POST {url}/v1/viewer-tokens -H 'Authorization: Bearer {token}' "
            "-H 'Content-Type: application/json' "
            f"""-d '{{"learner": "{sample.LEARNER}"}}'""",
            highlight=False,
            soft_wrap=True,
        )
    console.print("\nCtrl-C to stop.")


def _report_verify(replica: Replica) -> bool:
    """Say what the comparison with the feed's checksums found; whether anything differed."""
    if not replica.differences:
        if replica.stats.verified:
            console.print("verified: the replica equals the feed (counts and checksums)")
        return False
    for difference in replica.differences:
        console.print(f"differed: {difference}; read again and swapped in", highlight=False)
    for difference in replica.unrepaired:
        console.print(f"still differs after the repair: {difference}", highlight=False)
    return True


def _show_page(cursor: str, entries: int) -> None:
    console.print(f"+{entries} entries, cursor {cursor}", highlight=False)


async def _replicate(url: str, into: Path, *, follow: bool, token: str | None, prefix: str) -> bool:
    """Returns whether the replica differed from the feed (repaired, or not)."""
    stop = asyncio.Event()
    # Ctrl-C ends the long-poll between pages: the replica keeps every page it stored.
    with on_stop(stop.set):
        try:
            async with Replica(
                into, url, token=token, prefix=prefix, on_page=_show_page if follow else None
            ) as replica:
                start = await replica.cursor()
                cursor = await replica.sync()
                console.print(f"replica {into}: cursor {start} -> {cursor}")
                differed = _report_verify(replica)
                if follow:
                    console.print("following; Ctrl-C to stop")
                    await replica.follow(stop)
                    console.print(f"stopped at cursor {await replica.cursor()}")
                return differed
        except httpx.TransportError as exc:
            reason = exc or type(exc).__name__
            raise ReplicaError(f"cannot reach the feed at {url}: {reason}") from None
        except TransientError as exc:  # the stream, read directly, did not load
            raise ReplicaError(str(exc)) from None
