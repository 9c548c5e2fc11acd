"""The ``studypub`` command: in process (fast, one-line errors checked as printed) and as a
subprocess of this environment (signals, exit statuses, a real process to kill)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner, Result

from studypub.cli import app

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
