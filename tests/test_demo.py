"""`studypub demo` as a newcomer runs it: a subprocess, SQLite only, the printed curls pasted."""

from __future__ import annotations

import concurrent.futures
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

pytestmark = pytest.mark.timeout(120)

STARTUP_S = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def studypub() -> str:
    return str(Path(sys.executable).parent / "studypub")


@pytest.fixture
def demo(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[str], list[str], str]]:
    """A running demo in an empty directory: (process, output lines so far, base URL)."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("STUDYPUB_")}
    env["COLUMNS"] = "100"  # a narrow terminal must not break the printed commands
    proc = subprocess.Popen(
        [studypub(), "demo", "--port", str(port)],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    assert proc.stdout is not None
    deadline = time.monotonic() + STARTUP_S
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


def test_demo_serves_sample_content_and_the_printed_curls_work(
    demo: tuple[subprocess.Popen[str], list[str], str], tmp_path: Path
) -> None:
    proc, lines, url = demo
    output = "".join(lines)
    assert (tmp_path / "studypub-demo.db").exists()
    assert f"serving on {url}" in output
    token = re.search(r"author token: (\S+)", output)
    assert token is not None

    # The sample is published: topics, ~50 questions with explanations, cards, progress.
    entries = httpx.get(f"{url}/v1/feed", params={"limit": 1000}).json()["results"]
    kinds = [e["kind"] for e in entries]
    assert kinds.count("topic") >= 3
    assert 45 <= kinds.count("question") <= 60
    assert kinds.count("explanation") >= 40
    assert kinds.count("card") >= 40
    assert kinds.count("card_progress") >= 10
    assert httpx.get(url).status_code == 200  # the viewer page

    # The two commands, pasted as printed.
    commands = [line.strip() for line in lines if line.strip().startswith("curl ")]
    assert len(commands) == 2
    write, read = commands
    assert token.group(1) in write
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    created = subprocess.run(write, shell=True, capture_output=True, text=True, check=True)
    topic = httpx.Response(200, content=created.stdout).json()
    assert topic["title"] == "Hello"
    deadline = time.monotonic() + 5
    while ("topic", topic["id"]) not in _keys(url):  # the embedded relay publishes it
        assert time.monotonic() < deadline, "the demo's relay did not publish the write"
        time.sleep(0.05)
    feed = subprocess.run(read, shell=True, capture_output=True, text=True, check=True)
    assert '"results"' in feed.stdout

    # Ctrl-C with a long-poll and a stream open: they are answered at once, and the server
    # stops without waiting out its grace period; a clean exit, status 0.
    with concurrent.futures.ThreadPoolExecutor() as pool:
        poll = pool.submit(
            httpx.get, f"{url}/v1/feed", params={"since": topic_cursor(url), "wait": 60}
        )
        stream = pool.submit(_stream_until_closed, f"{url}/v1/feed/stream?since=0")
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
            [studypub(), "demo", "--port", str(port)],
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
        [studypub(), "serve", "--port", str(free_port())],
        cwd=tmp_path,
        env={**os.environ, "STUDYPUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path}/x.db"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1
    assert "studypub db upgrade" in result.stderr
    assert "Traceback" not in result.stderr


def topic_cursor(url: str) -> str:
    """The head cursor: a long-poll from there waits."""
    cursor = "0"
    while True:
        page = httpx.get(f"{url}/v1/feed", params={"since": cursor, "limit": 1000}).json()
        cursor = page["last_seq"]
        if not page["pending"]:
            return str(cursor)


def _stream_until_closed(url: str) -> int:
    """Read an SSE stream until the server ends it; returns how many entries came."""
    entries = 0
    with httpx.stream("GET", url, timeout=30) as response:
        for line in response.iter_lines():
            entries += line == "event: entry"
    return entries


def _keys(url: str) -> set[tuple[str, int]]:
    entries = httpx.get(f"{url}/v1/feed", params={"limit": 1000}).json()["results"]
    return {(e["kind"], e["id"]) for e in entries}
