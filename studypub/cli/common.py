"""What every command shares: the database option, running async work, one-line errors, the
log format of the long-running commands."""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import re
import socket
from collections.abc import Awaitable, Callable, Coroutine
from datetime import timedelta
from typing import Annotated, Any, TypeVar

import typer
from pythonjsonlogger.json import JsonFormatter
from rich.console import Console
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.db import create_engine
from studypub.errors import (
    DatabaseUnreachable,
    InvalidInput,
    StudypubError,
    TransientError,
    one_line,
)
from studypub.settings import DEFAULT_DATABASE_URL

T = TypeVar("T")

console = Console()
err_console = Console(stderr=True)

DatabaseUrl = Annotated[
    str,
    typer.Option(
        "--database-url",
        envvar="STUDYPUB_DATABASE_URL",
        help="SQLAlchemy URL: sqlite+aiosqlite:///FILE or postgresql+asyncpg://USER@HOST/DB.",
        show_default=True,
    ),
]
DEFAULT_URL = DEFAULT_DATABASE_URL


class LogFormat(enum.StrEnum):
    """How ``serve``, ``worker`` and ``bridge`` write their log lines (on stderr)."""

    TEXT = "text"
    JSON = "json"


LogFormatOption = Annotated[
    LogFormat,
    typer.Option(
        "--log-format",
        envvar="STUDYPUB_LOG_FORMAT",
        case_sensitive=False,
        help="Log lines on stderr: text (for people) or json (one object per line: time,"
        " level, logger, message and the record's fields, for log collectors).",
    ),
]
TEXT_LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
# The JSON formatter's fields, renamed to what log collectors expect; a record's ``extra``
# fields (a relay batch's counts, a failed row's id) follow as fields of their own.
JSON_LOG_FIELDS = "%(levelname)s %(name)s %(message)s"
JSON_RENAMED = {"levelname": "level", "name": "logger"}


def setup_logging(log_format: LogFormat = LogFormat.TEXT) -> None:
    """Send the log records of INFO and above to stderr, as text or one JSON object a line.

    The one logging setup of the long-running commands. Like ``logging.basicConfig`` it leaves
    a process whose root logger already has handlers alone (a test runner's, say).
    """
    handler = logging.StreamHandler()  # stderr: stdout stays the command's own output
    if log_format is LogFormat.JSON:
        handler.setFormatter(
            JsonFormatter(JSON_LOG_FIELDS, rename_fields=JSON_RENAMED, timestamp="time")
        )
    else:
        handler.setFormatter(logging.Formatter(TEXT_LOG_FORMAT))
    logging.basicConfig(level=logging.INFO, handlers=[handler])


def fail(message: str, code: int = 1) -> typer.Exit:
    """Print ``error: message`` on stderr; return the exit to raise."""
    err_console.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
    return typer.Exit(code)


def run(
    coro: Coroutine[Any, Any, T],
    *,
    after_database_error: str | None = None,
    interrupted: str = "interrupted",
) -> T:
    """Run ``coro``; every failure becomes one ``error:`` line, never a traceback.

    ``after_database_error`` says what a database error mid-run left behind (and what to do);
    ``interrupted`` is the Ctrl-C message (exit status 130).
    """
    try:
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            return runner.run(coro)
    except DatabaseUnreachable as exc:
        raise fail(f"{exc} (set --database-url or STUDYPUB_DATABASE_URL)") from None
    except TransientError as exc:
        raise fail(_after(str(exc), after_database_error)) from None
    except StudypubError as exc:
        raise fail(str(exc)) from None
    except DBAPIError as exc:
        raise fail(_after(f"database error: {one_line(exc)}", after_database_error)) from None
    except KeyboardInterrupt:
        raise fail(interrupted, 130) from None


def event_loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop where it is installed (Linux, macOS): a feed server sends each
    entry to thousands of streams, and uvloop's sockets and callbacks cost a fraction of
    the standard loop's. None: the standard loop."""
    try:
        import uvloop
    except ImportError:  # pragma: no cover - not on this platform
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def _after(message: str, after_database_error: str | None) -> str:
    return f"{message}; {after_database_error}" if after_database_error else message


async def with_engine(url: str, work: Callable[[AsyncEngine], Awaitable[T]]) -> T:
    """Run ``work`` with an engine on ``url`` and dispose of it afterwards."""
    engine = create_engine(url)
    try:
        return await work(engine)
    finally:
        await engine.dispose()


UNITS = {"m": 60, "h": 3_600, "d": 86_400, "w": 604_800}
_DURATION = re.compile(r"\s*(\d{1,7})\s*([mhdw])\s*", re.IGNORECASE)


def parse_duration(value: str) -> timedelta:
    """``30d`` -> 30 days; :class:`InvalidInput` saying what is allowed otherwise."""
    match = _DURATION.fullmatch(value)
    if match is None:
        raise InvalidInput(
            f"invalid duration {value[:40]!r}: a number and a unit, m, h, d or w"
            " (e.g. 90m, 12h, 30d, 2w)"
        )
    return timedelta(seconds=int(match.group(1)) * UNITS[match.group(2).lower()])


def check_port(host: str, port: int, option: str = "--port") -> None:
    """A clear message now rather than a uvicorn traceback after the setup work."""
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError as exc:
            reason = "is in use" if exc.errno == errno.EADDRINUSE else f"cannot be used ({exc})"
            raise fail(f"port {port} on {host} {reason}: choose another with {option}") from None
