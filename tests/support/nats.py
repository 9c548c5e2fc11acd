"""NATS JetStream for the bridge and edge tests: the server's URL, a prefix of the test's own
(its streams and bucket removed afterwards), a bridge running in the test's process, and a
NATS server of a test's own (to stop and start again)."""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import nats
import pytest
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.bridge import Bridge, head_bucket
from tests.support.cli import free_port
from tests.support.databases import UNDER_CI

NATS_URL = "nats://127.0.0.1:4222"


@contextlib.asynccontextmanager
async def own_prefix() -> AsyncIterator[str]:
    """A prefix of this test's own; skipped without NATS, except under CI (then it fails)."""
    try:
        nc = await nats.connect(NATS_URL, connect_timeout=2, max_reconnect_attempts=0)
    except Exception as exc:
        message = f"NATS with JetStream not reachable at {NATS_URL}: {exc}"
        if UNDER_CI:
            pytest.fail(message)
        pytest.skip(message)
    name = f"t{uuid.uuid4().hex[:10]}"
    try:
        yield name
    finally:
        js = nc.jetstream()
        for info in await js.streams_info():
            if info.config.name.startswith(name.upper() + "_"):
                await js.delete_stream(info.config.name)
        with contextlib.suppress(NotFoundError):
            await js.delete_key_value(head_bucket(name))
        await nc.close()


@contextlib.asynccontextmanager
async def bridging(
    engine: AsyncEngine, prefix: str, nats_url: str = NATS_URL
) -> AsyncIterator[Bridge]:
    """A bridge running in this process for the block."""
    stop = asyncio.Event()
    bridge = Bridge(engine, nats_url, prefix=prefix, poll_interval_s=0.1)
    task = asyncio.create_task(bridge.run(stop))
    try:
        yield bridge
    finally:
        stop.set()
        await task


class NatsServer:
    """``nats-server`` with JetStream on a free loopback port, its store in ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.port = free_port()
        self.url = f"nats://127.0.0.1:{self.port}"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = shutil.which("nats-server") or "/usr/sbin/nats-server"
        if not Path(binary).exists():
            message = "nats-server is missing"
            if UNDER_CI:
                pytest.fail(message)
            pytest.skip(message)
        log = open(self.directory / "nats.log", "ab")  # noqa: SIM115 (the process keeps it)
        self.process = subprocess.Popen(
            [binary, "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.directory)],
            stdout=log,
            stderr=log,
        )
        log.close()
        deadline = time.monotonic() + 10
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port)):
                return
            assert time.monotonic() < deadline, "nats-server did not start"
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@contextlib.contextmanager
def nats_server(directory: Path) -> Iterator[NatsServer]:
    server = NatsServer(directory)
    server.start()
    try:
        yield server
    finally:
        server.stop()
