"""Fixtures of the command tests. Every command but ``db upgrade`` refuses a database that is
not migrated, so here ``engine`` is one migrated as an operator does it (``migrated``), on
SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.cli import free_port, studypub_argv

DEMO_STARTUP_S = 60


@pytest.fixture
def engine(migrated: AsyncEngine) -> AsyncEngine:
    return migrated


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str], str]]:
    """A running ``studypub demo`` in an empty directory: (process, output lines so far, base
    URL)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYPUB_")}
    env["COLUMNS"] = "100"  # a narrow terminal must not break the printed commands
    proc = subprocess.Popen(
        studypub_argv("demo", "--port", str(port)),
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + DEMO_STARTUP_S
    while not any("Ctrl-C to stop" in line for line in lines):
        assert time.monotonic() < deadline, "".join(lines)
        line = proc.stdout.readline()
        assert line or proc.poll() is None, "demo exited:\n" + "".join(lines)
        lines.append(line)
    try:
        yield proc, lines, f"http://127.0.0.1:{port}"
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
