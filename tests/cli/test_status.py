"""``studypub status --watch``: a JSON line per refresh with the publish rate, Ctrl-C ends it
with status 0, a database that goes away is reported and the watch recovers; the terminal
view of a report."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest
from rich.console import Console
from sqlalchemy import make_url
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.cli.status import UNAVAILABLE, render_status
from studypub.relay import Outcomes, Relay
from tests.support.cli import cli, free_port, studypub_argv
from tests.support.content import create_topic
from tests.support.databases import url_of

LINE_TIMEOUT_S = 30
PG_ONLY = pytest.mark.parametrize("fresh_url", ["postgresql"], indirect=True)


async def _watch(url: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *studypub_argv("status", "--watch", "--json", "--interval", "0.2", "--database-url", url),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _line(proc: asyncio.subprocess.Process) -> dict[str, Any]:
    assert proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), LINE_TIMEOUT_S)
    if not line:
        assert proc.stderr is not None
        raise AssertionError(f"the watch ended: {(await proc.stderr.read()).decode()}")
    report: dict[str, Any] = json.loads(line)
    return report


async def _stopped_by_sigint(proc: asyncio.subprocess.Process) -> int:
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), LINE_TIMEOUT_S)
    assert "Traceback" not in err.decode(), err.decode()
    return await proc.wait()


async def test_watch_json_prints_a_line_per_refresh_with_the_rate(engine: AsyncEngine) -> None:
    await create_topic(engine, "Rivers")
    proc = await _watch(url_of(engine))
    try:
        first = await _line(proc)
        assert (first["pending"], first["dead"], first["head"], first["floor"]) == (1, 0, 0, 0)
        assert first["oldest_pending_age_s"] >= 0
        assert first["published"]["topic"] == {"live": 0, "tombstones": 0}
        assert first["rate_per_s"] is None  # nothing to compare with yet
        second = await _line(proc)
        assert (second["head"], second["epoch"], second["rate_per_s"]) == (0, first["epoch"], 0)
        assert await Relay(engine).run_once() == Outcomes(applied=1)
        while (report := await _line(proc))["head"] == 0:
            pass
        assert (report["pending"], report["head"], report["oldest_pending_age_s"]) == (0, 1, None)
        assert report["published"]["topic"] == {"live": 1, "tombstones": 0}
        assert report["rate_per_s"] > 0
        assert await _stopped_by_sigint(proc) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


@contextlib.asynccontextmanager
async def _proxy(port: int, target: tuple[str, int]) -> AsyncIterator[None]:
    """A TCP proxy on ``port`` to ``target``; leaving the block cuts every connection."""
    pipes: set[asyncio.Task[None]] = set()

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            writer.close()

    async def connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*target)
        for task in (pipe(reader, up_writer), pipe(up_reader, writer)):
            pipes.add(asyncio.ensure_future(task))

    server = await asyncio.start_server(connect, "127.0.0.1", port)
    try:
        yield
    finally:
        server.close()
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)
        await server.wait_closed()


@PG_ONLY
async def test_watch_reports_a_database_gone_away_and_recovers(engine: AsyncEngine) -> None:
    url = make_url(url_of(engine))
    target = (url.host or "127.0.0.1", url.port or 5432)
    port = free_port()
    through_proxy = url.set(host="127.0.0.1", port=port).render_as_string(hide_password=False)
    async with _proxy(port, target):
        proc = await _watch(through_proxy)
        try:
            assert (await _line(proc))["head"] == 0
        except BaseException:
            proc.kill()
            raise
    try:
        while "error" not in (gone := await _line(proc)):
            pass
        assert gone["error"] == "database_unavailable"
        async with _proxy(port, target):
            await create_topic(engine, "Rivers")
            while "pending" not in (back := await _line(proc)) or back["pending"] == 0:
                pass
        assert back["pending"] == 1
        assert await _stopped_by_sigint(proc) == 0
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


def test_interval_below_the_minimum_is_one_line() -> None:
    result = cli("status", "--watch", "--interval", "0")
    assert result.exit_code == 1
    assert result.output.strip() == "error: invalid --interval 0.0: at least 0.1 seconds"


REPORT: dict[str, Any] = {
    "pending": 3,
    "oldest_pending_age_s": 12.345,
    "dead": 1,
    "head": 42,
    "floor": 7,
    "epoch": "0a1b2c3d4e5f",
    "published": {"topic": {"live": 40, "tombstones": 2}, "card": {"live": 0, "tombstones": 0}},
}


def _text(renderable: Any) -> str:
    console = Console(record=True, width=100, color_system=None)
    console.print(renderable)
    return console.export_text()


def test_render_status_shows_the_report() -> None:
    text = _text(render_status(REPORT))
    lines = [line.strip() for line in text.splitlines()]
    assert "outbox: 3 pending (oldest 12.3 s old), 1 dead" in lines
    assert "feed: epoch 0a1b2c3d4e5f, head 42, floor 7" in lines
    assert "publishing" not in text  # studypub status, once: no rate
    assert any(line.split() == ["│", "topic", "│", "40", "│", "2", "│"] for line in lines)
    assert UNAVAILABLE not in text


def test_render_status_shows_the_rate_and_an_unavailable_database() -> None:
    assert "publishing: measuring" in _text(render_status(REPORT | {"rate_per_s": None}))
    assert "publishing: 1,234.5 entries/s" in _text(render_status(REPORT | {"rate_per_s": 1234.5}))
    text = _text(render_status(REPORT | {"rate_per_s": 0.0}, unavailable="connection refused"))
    assert text.splitlines()[0] == f"{UNAVAILABLE}: connection refused"
    assert "head 42" in text  # the last report read stays on show
