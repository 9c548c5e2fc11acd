"""``studypub status``: is the relay keeping up? Once, or live (``--watch``).

A report is the dict ``--json`` prints; :func:`render_status` turns one into the terminal
view, the same once and live. ``--watch`` reads the status again every ``--interval``: the
first read must succeed (a wrong URL or an unmigrated database is one ``error:`` line, as
without ``--watch``); afterwards a database that goes away is shown, not fatal, and the view
recovers when it answers again.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Coroutine, Mapping
from datetime import datetime
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import migrate, store
from studypub.cli.common import DEFAULT_URL, DatabaseUrl, console, fail, run, with_engine
from studypub.db import read_session_factory
from studypub.errors import TransientError
from studypub.models import utcnow
from studypub.signals import on_stop
from studypub.waiting import wait_any

T = TypeVar("T")

WATCH_INTERVAL_S = 1.0
MIN_WATCH_INTERVAL_S = 0.1
UNAVAILABLE = "database unavailable, retrying"

AsJson = Annotated[
    bool,
    typer.Option("--json", help="Print one JSON object (with --watch: one line per refresh)."),
]
Watch = Annotated[
    bool,
    typer.Option(
        "--watch",
        help="Keep showing it, with the publish rate, refreshed every --interval until Ctrl-C.",
    ),
]
Interval = Annotated[
    float,
    typer.Option(
        "--interval",
        envvar="STUDYPUB_STATUS_INTERVAL",
        help=f"Seconds between the refreshes of --watch, >= {MIN_WATCH_INTERVAL_S}.",
    ),
]


def status(
    as_json: AsJson = False,
    watch: Watch = False,
    interval: Interval = WATCH_INTERVAL_S,
    database_url: DatabaseUrl = DEFAULT_URL,
) -> None:
    """Show the outbox backlog, dead rows, the feed head and the published counts.

    With --watch, live until Ctrl-C or SIGTERM (exit 0), with the publish rate.
    """
    if not interval >= MIN_WATCH_INTERVAL_S:
        raise fail(f"invalid --interval {interval}: at least {MIN_WATCH_INTERVAL_S} seconds")
    if watch:
        run(with_engine(database_url, lambda engine: _watch(engine, interval, as_json=as_json)))
        return
    report = run(with_engine(database_url, _read_first))
    if as_json:
        print(json.dumps(report))
    else:
        console.print(render_status(report))


def status_report(current: store.Status, *, now: datetime) -> dict[str, Any]:
    """The report of ``current`` at ``now``: what ``--json`` prints."""
    age = (
        None
        if current.oldest_pending_at is None
        else round((now - current.oldest_pending_at).total_seconds(), 3)
    )
    return {
        "pending": current.pending,
        "oldest_pending_age_s": age,
        "dead": current.dead,
        "head": current.head.last_seq,
        "floor": current.head.floor,
        "epoch": current.head.epoch,
        "published": current.published,
    }


def render_status(report: Mapping[str, Any], *, unavailable: str | None = None) -> RenderableType:
    """The terminal view of a report: the outbox and feed lines, the publish rate when the
    report has one (``--watch``), the published counts per kind. ``unavailable``: the
    database did not answer the last refresh (why); the report is the last one read."""
    parts: list[RenderableType] = []
    if unavailable is not None:
        parts.append(Text.assemble((UNAVAILABLE, "bold red"), f": {unavailable}"))
    age = report["oldest_pending_age_s"]
    parts.append(
        Text.assemble(
            "outbox: ",
            (str(report["pending"]), "bold"),
            " pending",
            "" if age is None else f" (oldest {age:.1f} s old)",
            ", ",
            (str(report["dead"]), "bold red" if report["dead"] else "bold"),
            " dead",
        )
    )
    parts.append(
        Text(f"feed: epoch {report['epoch']}, head {report['head']}, floor {report['floor']}")
    )
    if "rate_per_s" in report:
        rate = report["rate_per_s"]
        shown = "measuring" if rate is None else f"{rate:,.1f} entries/s"
        parts.append(Text.assemble("publishing: ", (shown, "bold")))
    table = Table("kind", "live", "tombstones")
    for kind, counts in report["published"].items():
        table.add_row(kind, str(counts["live"]), str(counts["tombstones"]))
    parts.append(table)
    return Group(*parts)


# ---------------------------------------------------------------- the work


async def _read(engine: AsyncEngine) -> dict[str, Any]:
    async with read_session_factory(engine)() as session:
        current = await store.read_status(session)
    return status_report(current, now=utcnow())


async def _read_first(engine: AsyncEngine) -> dict[str, Any]:
    await migrate.require_current(engine)
    return await _read(engine)


class _Rate:
    """Entries per second: the head's move between two refreshes (none across an epoch)."""

    def __init__(self) -> None:
        self._last: tuple[str, int, float] | None = None

    def update(self, report: Mapping[str, Any]) -> float | None:
        """The rate since the last report updated with (None for the first one)."""
        epoch: str = report["epoch"]
        head: int = report["head"]
        now = time.monotonic()
        last, self._last = self._last, (epoch, head, now)
        if last is None or last[0] != epoch or now <= last[2]:
            return None
        return round(max(0, head - last[1]) / (now - last[2]), 1)


async def _watch(engine: AsyncEngine, interval_s: float, *, as_json: bool) -> None:
    stop = asyncio.Event()
    rate = _Rate()
    with on_stop(stop.set):
        report = await _until_stopped(_read_first(engine), stop)
        if report is None:
            return
        with _Display(as_json=as_json, interval_s=interval_s) as display:
            display.show(report | {"rate_per_s": rate.update(report)})
            while not await wait_any(stop, timeout_s=interval_s):
                try:
                    report = await _until_stopped(_read(engine), stop)
                except TransientError as exc:
                    # The last report stays on show (and the rate's base) until one is read.
                    display.unavailable(exc)
                    continue
                if report is None:
                    return
                display.show(report | {"rate_per_s": rate.update(report)})


async def _until_stopped(coro: Coroutine[Any, Any, T], stop: asyncio.Event) -> T | None:
    """``coro``'s result; None, with ``coro`` cancelled, if ``stop`` is set first (a read
    may wait for a connect timeout while the database is away: Ctrl-C must not)."""
    task = asyncio.ensure_future(coro)
    await wait_any(task, stop)
    if task.done():
        return task.result()
    task.cancel()
    await asyncio.wait([task])
    return None


class _Display:
    """Where ``--watch`` shows each refresh: a live view, or a JSON line (flushed)."""

    def __init__(self, *, as_json: bool, interval_s: float) -> None:
        self._as_json = as_json
        self._footer = Text(f"every {interval_s:g} s; Ctrl-C to stop", style="dim")
        self._live = Live(console=console, auto_refresh=False)
        self._last: Mapping[str, Any] = {}
        self._view: RenderableType = ""

    def __enter__(self) -> _Display:
        if not self._as_json:
            self._live.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        if self._as_json:
            return
        self._live.update(self._view)  # the last view stays on screen, without the footer
        self._live.stop()
        if not console.is_terminal:
            console.line()

    def show(self, report: Mapping[str, Any]) -> None:
        self._last = report
        self._emit(report, lambda: render_status(report))

    def unavailable(self, exc: TransientError) -> None:
        error = {"error": exc.code, "detail": str(exc)}
        self._emit(error, lambda: render_status(self._last, unavailable=str(exc)))

    def _emit(self, line: Mapping[str, Any], view: Callable[[], RenderableType]) -> None:
        if self._as_json:
            print(json.dumps(line), flush=True)
            return
        self._view = view()
        self._live.update(Group(self._view, self._footer), refresh=True)
