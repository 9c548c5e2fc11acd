"""The JavaScript feed client (``studypub/web/feed-client.js``) in Node, against a real
``studypub serve``: ``node --test tests/web/feed-client.test.mjs``, on SQLite and PostgreSQL.

The server runs here as a subprocess with the service token and a token secret set (a closed
feed, learners' tokens accepted), and is started again on the same port whenever it exits,
so that the Node test can restart it (SIGTERM to the pid in the pid file) and check that the
client reconnects and resumes. Without ``node`` the test is skipped locally and fails under
CI.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import shutil
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.cli import STUDYPUB, free_port, studypub_argv
from tests.support.databases import UNDER_CI, url_of

pytestmark = pytest.mark.timeout(240)

TEST_FILE = Path(__file__).with_name("feed-client.test.mjs")
AUTHOR_TOKEN = "author-secret"
VIEWER_TOKEN = "viewer-secret"
TOKEN_SECRET = "a-test-secret-that-signs-viewer-tokens"
NODE_TIMEOUT_S = 180
STARTUP_S = 30
MAX_STARTS = 5  # the first start and the restarts the Node test asks for, with room to spare


def _node() -> str:
    node = shutil.which("node")
    if node is None:
        message = "node is missing (apt-get install nodejs)"
        if UNDER_CI:
            pytest.fail(message)
        pytest.skip(message)
    return node


@contextlib.asynccontextmanager
async def serving(db_url: str, tmp_path: Path) -> AsyncIterator[tuple[str, Path, Path]]:
    """``studypub serve`` on a free port, started again whenever it exits: (base URL, pid
    file, log file)."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    pid_file, log_file = tmp_path / "serve.pid", tmp_path / "serve.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYPUB_")}
    env |= {
        "STUDYPUB_DATABASE_URL": db_url,
        "STUDYPUB_AUTHOR_TOKEN": AUTHOR_TOKEN,
        "STUDYPUB_VIEWER_TOKEN": VIEWER_TOKEN,
        "STUDYPUB_TOKEN_SECRET": TOKEN_SECRET,
    }
    argv = studypub_argv("serve", "--port", str(port))
    stopping = asyncio.Event()
    current: list[asyncio.subprocess.Process] = []

    async def supervise() -> None:
        with log_file.open("ab") as log:
            for _ in range(MAX_STARTS):
                proc = await asyncio.create_subprocess_exec(
                    *argv, env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
                )
                current[:] = [proc]
                pid_file.write_text(str(proc.pid))
                await proc.wait()
                if stopping.is_set():
                    return
                await asyncio.sleep(0.1)

    supervisor = asyncio.create_task(supervise(), name="studypub-serve-supervisor")
    try:
        await _wait_until_up(url, supervisor, log_file)
        yield url, pid_file, log_file
    finally:
        stopping.set()
        if current and current[0].returncode is None:
            current[0].send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(supervisor, timeout=15)
        except TimeoutError:
            current[0].kill()
            await supervisor


def _tail(log_file: Path) -> str:
    """The end of the server's output, for a failure's message."""
    return log_file.read_text(errors="replace")[-5000:]


async def _wait_until_up(url: str, supervisor: asyncio.Task[None], log_file: Path) -> None:
    headers = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + STARTUP_S
    async with httpx.AsyncClient(base_url=url, headers=headers) as client:
        while True:
            assert not supervisor.done(), "studypub serve keeps exiting:\n" + _tail(log_file)
            with contextlib.suppress(httpx.TransportError):
                if (await client.get("/v1/feed", params={"limit": 1})).status_code == 200:
                    return
            assert loop.time() < deadline, "studypub serve did not answer:\n" + _tail(log_file)
            await asyncio.sleep(0.1)


async def test_feed_client_in_node(migrated: AsyncEngine, tmp_path: Path) -> None:
    """Bootstrap, live follow, learner scoping, 401s, resets and reconnects: see the Node
    file for each case. Node's exit status decides; its report is shown on failure."""
    node = _node()
    db_url = url_of(migrated)
    async with serving(db_url, tmp_path) as (url, pid_file, log_file):
        env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYPUB_")}
        env |= {
            "STUDYPUB_TEST_URL": url,
            "STUDYPUB_TEST_AUTHOR_TOKEN": AUTHOR_TOKEN,
            "STUDYPUB_TEST_VIEWER_TOKEN": VIEWER_TOKEN,
            "STUDYPUB_TEST_PIDFILE": str(pid_file),
            "STUDYPUB_TEST_STUDYPUB": STUDYPUB,
            "STUDYPUB_DATABASE_URL": db_url,  # for `studypub db new-epoch`
        }
        proc = await asyncio.create_subprocess_exec(
            node,
            "--test",
            "--test-reporter=spec",
            str(TEST_FILE),
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,  # `node --test` runs the file in a child: end both
        )
        try:
            out, _ = await asyncio.wait_for(proc.communicate(), timeout=NODE_TIMEOUT_S)
        except TimeoutError:
            os.killpg(proc.pid, signal.SIGKILL)
            out, _ = await proc.communicate()
        report = out.decode(errors="replace")
    assert proc.returncode == 0, (
        f"node --test exited {proc.returncode}:\n{report}\n--- studypub serve:\n{_tail(log_file)}"
    )
    # Every test ran (none skipped for want of the environment) and passed.
    counts = dict(re.findall(r"^\S* ?(tests|pass|skipped) (\d+)$", report, re.MULTILINE))
    assert counts.get("skipped") == "0", report
    assert int(counts.get("tests", 0)) > 0 and counts.get("pass") == counts["tests"], report
