"""The ``studypub`` command: in process (fast, one-line errors checked as printed) and as a
subprocess of this environment (signals, exit statuses, a real process to kill)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
from typer.testing import CliRunner, Result

from studypub.cli import app
from tests.support.http import AUTHOR_TOKEN, TOKEN_SECRET, VIEWER_TOKEN

STUDYPUB = str(Path(sys.executable).with_name("studypub"))  # this venv's command


def cli(*args: str) -> Result:
    """Run ``studypub`` in this process (faster than a subprocess); stderr kept apart."""
    return CliRunner().invoke(app, list(args))


async def invoke_cli(*args: str, stdin: str | None = None) -> tuple[int, str]:
    """Run a ``studypub`` command in-process from an async test, ``stdin`` as its input: (exit
    code, output).

    The command runs its own event loop, so it gets a thread of its own.
    """
    result = await asyncio.to_thread(CliRunner().invoke, app, list(args), input=stdin)
    return result.exit_code, result.output


def studypub_argv(*args: str) -> list[str]:
    """The ``studypub`` command of this environment with ``args`` (no PATH lookup)."""
    return [STUDYPUB, *args]


def run_studypub(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        studypub_argv(*args), capture_output=True, text=True, timeout=timeout, check=False
    )


def free_port() -> int:
    """A loopback port free right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


STARTUP_S = 30.0


@contextlib.asynccontextmanager
async def served(db_url: str, log_file: Path, **env: str) -> AsyncIterator[str]:
    """``studypub serve`` on ``db_url`` in a subprocess on a free loopback port, with the test
    tokens (and ``env``, as ``STUDYPUB_*`` settings): its base URL once it is ready; stopped
    (SIGTERM) after. Its output goes to ``log_file``, shown if it does not come up."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    settings = {
        "DATABASE_URL": db_url,
        "AUTHOR_TOKEN": AUTHOR_TOKEN,
        "VIEWER_TOKEN": VIEWER_TOKEN,
        "TOKEN_SECRET": TOKEN_SECRET,
        **env,
    }
    environ = {k: v for k, v in os.environ.items() if not k.startswith("STUDYPUB_")}
    environ |= {f"STUDYPUB_{name.upper()}": value for name, value in settings.items()}
    with log_file.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            *studypub_argv("serve", "--port", str(port)), env=environ, stdout=log, stderr=log
        )
    try:
        await _until_ready(url, process, log_file)
        yield url
    finally:
        if process.returncode is None:
            process.terminate()
            await process.wait()


async def _until_ready(url: str, process: asyncio.subprocess.Process, log_file: Path) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_S
    async with httpx.AsyncClient(base_url=url) as client:
        while True:
            if process.returncode is not None:
                raise AssertionError(f"studypub serve exited:\n{_read(log_file)}")
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/readyz")).status_code == 200:
                    return
            if loop.time() > deadline:
                raise AssertionError(f"studypub serve not ready:\n{_read(log_file)}")
            await asyncio.sleep(0.1)


def _read(log_file: Path) -> str:
    return log_file.read_text(errors="replace")
