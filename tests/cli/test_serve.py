"""The commands of ``studypub.cli.serve`` as a user runs them, in subprocesses: ``demo`` (its
printed curls pasted), ``serve``'s refusals, and ``replicate`` against a live server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.replica import Replica
from studypub.serving import running
from tests.support.cli import free_port, studypub_argv
from tests.support.content import churn, create_topic, write_content
from tests.support.http import fast_relay, make_app
from tests.support.outbox import drained
from tests.support.state import live_view, replica_cursor, replica_view

pytestmark = pytest.mark.timeout(120)

# ---------------------------------------------------------------- demo and serve (SQLite only)


def test_demo_serves_sample_content_and_the_printed_curls_work(
    demo: tuple[subprocess.Popen[str], list[str], str], tmp_path: Path
) -> None:
    proc, lines, url = demo
    output = "".join(lines)
    assert (tmp_path / "studypub-demo.db").exists()
    assert f"serving on {url}" in output
    token = re.search(r"author token: (\S+)", output)
    service = re.search(r"service viewer token \(reads everything\): (\S+)", output)
    assert token is not None and service is not None
    viewer = {"Authorization": f"Bearer {service.group(1)}"}
    assert f"viewer page: {url}/#token={service.group(1)}" in output

    # The feed is closed without a token, and the sample is published: topics, ~50
    # questions with explanations, cards, progress.
    assert httpx.get(f"{url}/v1/feed").status_code == 401
    entries = httpx.get(f"{url}/v1/feed", params={"limit": 1000}, headers=viewer).json()["results"]
    kinds = [e["kind"] for e in entries]
    assert kinds.count("topic") >= 3
    assert 45 <= kinds.count("question") <= 60
    assert kinds.count("explanation") >= 40
    assert kinds.count("card") >= 40
    assert kinds.count("card_progress") >= 10
    assert httpx.get(url).status_code == 200  # the viewer page

    # The three commands, pasted as printed.
    commands = [line.strip() for line in lines if line.strip().startswith("curl ")]
    assert len(commands) == 3
    write, read, issue = commands
    assert token.group(1) in write and token.group(1) in issue
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    created = subprocess.run(write, shell=True, capture_output=True, text=True, check=True)
    topic = httpx.Response(200, content=created.stdout).json()
    assert topic["title"] == "Hello"
    deadline = time.monotonic() + 5
    while ("topic", topic["id"]) not in _keys(url, viewer):  # the embedded relay publishes it
        assert time.monotonic() < deadline, "the demo's relay did not publish the write"
        time.sleep(0.05)
    feed = subprocess.run(read, shell=True, capture_output=True, text=True, check=True)
    assert '"results"' in feed.stdout
    issued = subprocess.run(issue, shell=True, capture_output=True, text=True, check=True)
    learner = httpx.Response(201, content=issued.stdout).json()["token"]
    assert f"ada's page (a learner's token): {url}/#token=" in output
    page = httpx.get(
        f"{url}/v1/feed", params={"limit": 1000}, headers={"Authorization": f"Bearer {learner}"}
    )
    progress = [e for e in page.json()["results"] if e["kind"] == "card_progress"]
    assert progress and {e["payload"]["learner"] for e in progress} == {"ada"}

    # Ctrl-C with a long-poll and a stream open: they are answered at once, and the server
    # stops without waiting out its grace period; a clean exit, status 0.
    with concurrent.futures.ThreadPoolExecutor() as pool:
        poll = pool.submit(
            httpx.get,
            f"{url}/v1/feed",
            params={"since": topic_cursor(url, viewer), "wait": 60},
            headers=viewer,
        )
        stream = pool.submit(_stream_until_closed, f"{url}/v1/feed/stream?since=0", viewer)
        time.sleep(0.5)
        started = time.monotonic()
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0
        assert time.monotonic() - started < 2.5
        assert poll.result(timeout=5).json()["results"] == []
        assert stream.result(timeout=5) > 100  # the whole feed, then a clean end
    rest = proc.stdout.read() if proc.stdout else ""
    assert "stopped" in rest
    assert "Traceback" not in output + rest


def test_serve_refuses_a_busy_port_in_one_line(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            studypub_argv("demo", "--port", str(port)),
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {port} on 127.0.0.1 is in use" in result.stderr
    assert "Traceback" not in result.stderr


def test_serve_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    result = subprocess.run(
        studypub_argv("serve", "--port", str(free_port())),
        cwd=tmp_path,
        env={**os.environ, "STUDYPUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "studypub db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def topic_cursor(url: str, headers: dict[str, str]) -> str:
    """The head cursor: a long-poll from there waits."""
    cursor = "0"
    while True:
        params = {"since": cursor, "limit": 1000}
        page = httpx.get(f"{url}/v1/feed", params=params, headers=headers).json()
        cursor = page["last_seq"]
        if not page["pending"]:
            return str(cursor)


def _stream_until_closed(url: str, headers: dict[str, str]) -> int:
    """Read an SSE stream until the server ends it; returns how many entries came."""
    entries = 0
    with httpx.stream("GET", url, timeout=30, headers=headers) as response:
        for line in response.iter_lines():
            entries += line == "event: entry"
    return entries


def _keys(url: str, headers: dict[str, str]) -> set[tuple[str, int]]:
    entries = httpx.get(f"{url}/v1/feed", params={"limit": 1000}, headers=headers).json()["results"]
    return {(e["kind"], e["id"]) for e in entries}


# ---------------------------------------------------------------- replicate (both databases)


async def _spawn(*args: str) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *studypub_argv(*args),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=os.environ | {"COLUMNS": "200"},
    )


async def _until_replica(path: Path, url: str, engine: AsyncEngine) -> None:
    deadline = time.monotonic() + 20
    while True:
        async with Replica(path, url) as peek:
            if replica_view(await peek.state()) == await live_view(engine):
                return
        assert time.monotonic() < deadline, "the CLI replica did not catch up"
        await asyncio.sleep(0.1)


@pytest.mark.timeout(90)
async def test_replicate_once(engine: AsyncEngine, tmp_path: Path) -> None:
    """`studypub replicate` as a user runs it: a subprocess against a live server."""
    await write_content(engine, topics=1, per_topic=2)
    app = make_app(engine)
    path = tmp_path / "cli.db"
    async with running(app, relay=fast_relay(engine)) as url:
        async with httpx.AsyncClient(base_url=url) as c:
            deadline = time.monotonic() + 10
            while not (await c.get("/v1/feed")).json()["results"]:
                assert time.monotonic() < deadline
                await asyncio.sleep(0.05)
        await drained(engine)
        proc = await _spawn("replicate", "--from", url, "--into", str(path))
        out, err = await proc.communicate()
        assert proc.returncode == 0, err.decode()
        assert "cursor 0 ->" in out.decode()
        async with Replica(path, url) as replica:
            assert replica_view(await replica.state()) == await live_view(engine)

        bad = await _spawn("replicate", "--from", "ftp://nowhere", "--into", str(path))
        _, err = await bad.communicate()
        assert bad.returncode != 0
        assert "is neither an http(s) nor a nats:// URL" in err.decode()
        assert "Traceback" not in err.decode()


@pytest.mark.timeout(90)
async def test_replicate_follower_killed_then_restarted_resumes(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    """`replicate --follow` killed with SIGKILL mid-follow; the next run starts at its cursor;
    Ctrl-C stops a follower cleanly."""
    await write_content(engine, topics=1, per_topic=2)
    app = make_app(engine)
    path = tmp_path / "follow.db"
    async with running(app, relay=fast_relay(engine)) as url:
        await drained(engine)
        follower = await _spawn("replicate", "--from", url, "--into", str(path), "--follow")
        await _until_replica(path, url, engine)
        await create_topic(engine, "While following")
        await drained(engine)
        await _until_replica(path, url, engine)  # picked up by the long-poll
        follower.kill()
        await follower.wait()

        stored = await replica_cursor(path, url)
        assert stored != "0"
        await churn(engine, rounds=1)
        await drained(engine)
        again = await _spawn("replicate", "--from", url, "--into", str(path))
        out, err = await again.communicate()
        assert again.returncode == 0, err.decode()
        assert f"cursor {stored} ->" in out.decode()
        async with Replica(path, url) as replica:
            assert replica_view(await replica.state()) == await live_view(engine)

        stopping = await _spawn("replicate", "--from", url, "--into", str(path), "--follow")
        assert stopping.stdout is not None
        while b"following" not in await stopping.stdout.readline():
            pass
        stopping.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(stopping.communicate(), 20)
        assert stopping.returncode == 0, err.decode()
        assert "stopped at cursor" in out.decode()
        assert b"Traceback" not in err
