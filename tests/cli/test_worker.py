"""``studypub worker`` and ``studypub status`` as processes: SIGKILL mid-batch loses nothing
and publishes nothing twice; SIGTERM stops the worker cleanly within 2 s; bad input is one
line; logs are text or one JSON object per line (``--log-format``). Each test runs on its
own migrated database (a SQLite file, or a PostgreSQL database created for the test)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import insert, select
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.models import Outbox, Topic, utcnow
from studypub.outbox import outbox_values
from tests.support.cli import cli, free_port, studypub_argv
from tests.support.databases import url_of
from tests.support.outbox import outbox_count
from tests.support.state import decided_state, expected_state, head_of
from tests.support.triggers import AUDIT_DDL, audited_entries, install

TOPICS = 20_000


async def _seed_topics(engine: AsyncEngine, n: int) -> None:
    now = utcnow()
    rows = [
        {"title": f"topic {i}", "description": "x" * 200, "version": 1, "created_at": now}
        | {"updated_at": now}
        for i in range(n)
    ]
    async with engine.begin() as conn:
        await conn.execute(insert(Topic), rows)
        topics = (await conn.execute(select(Topic.__table__))).all()
        await conn.execute(insert(Outbox), [outbox_values("topic", t, now=now) for t in topics])


def _worker(url: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        studypub_argv("worker", "--database-url", url, *args),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def _run(
    *args: str, check: bool = False, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        studypub_argv(*args),
        capture_output=True,
        timeout=120,
        check=check,
        env=None if env is None else os.environ | env,
    )


async def _wait_for(engine: AsyncEngine, proc: subprocess.Popen[bytes], least: int) -> int:
    deadline = time.monotonic() + 60
    while (head := (await head_of(engine)).last_seq) < least:
        assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
        assert time.monotonic() < deadline, "the worker published nothing"
        await asyncio.sleep(0.01)
    return head


async def test_worker_killed_mid_batch_loses_nothing_and_publishes_nothing_twice(
    engine: AsyncEngine,
) -> None:
    url = url_of(engine)
    await install(engine, AUDIT_DDL)
    await _seed_topics(engine, TOPICS)
    proc = _worker(url, "--batch-size", "100", "--poll-interval", "0.1")
    await _wait_for(engine, proc, 1000)
    proc.send_signal(signal.SIGKILL)
    proc.wait(10)
    head = (await head_of(engine)).last_seq
    remaining = await outbox_count(engine)
    assert 0 < remaining < TOPICS, "kill the worker while it still had work"
    # Whole batches: every row either published (and gone from the outbox) or still there.
    assert head + remaining == TOPICS
    done = await asyncio.to_thread(_run, "worker", "--once", "--database-url", url)
    assert done.returncode == 0, done.stderr.decode()
    assert f"applied {remaining}," in done.stdout.decode()
    assert await outbox_count(engine) == 0
    assert await decided_state(engine) == await expected_state(engine)
    entries = await audited_entries(engine)
    assert [seq for seq, _ in entries] == list(range(1, TOPICS + 1))
    assert len({key for _, key in entries}) == TOPICS  # no entity version twice


async def test_worker_sigterm_stops_within_two_seconds_with_status_0(engine: AsyncEngine) -> None:
    await _seed_topics(engine, 5000)
    proc = _worker(url_of(engine), "--batch-size", "50", "--poll-interval", "0.1")
    await _wait_for(engine, proc, 100)
    asked = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=10)
    assert time.monotonic() - asked < 2
    assert proc.returncode == 0, err.decode()
    assert "stopped: applied" in out.decode()
    head = (await head_of(engine)).last_seq
    assert head + await outbox_count(engine) == 5000


def test_worker_refuses_an_unmigrated_database(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'empty.db'}"
    done = _run("worker", "--once", "--database-url", url)
    assert done.returncode == 1
    assert "run `studypub db upgrade`" in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (["--batch-size", "0"], "invalid --batch-size 0: allowed 1..2000"),
        (["--batch-size", "2001"], "invalid --batch-size 2001: allowed 1..2000"),
        (["--poll-interval", "0"], "invalid --poll-interval 0.0: must be more than 0 seconds"),
        (["--max-attempts", "0"], "invalid --max-attempts 0: must be at least 1"),
    ],
)
def test_worker_refuses_a_bad_option_in_one_line(
    tmp_path: Path, option: list[str], message: str
) -> None:
    """Checked by the Relay itself, before the database is even looked at."""
    url = f"sqlite+aiosqlite:///{tmp_path / 'never-created.db'}"
    done = _run("worker", "--once", *option, "--database-url", url)
    assert done.returncode == 1
    assert done.stderr.decode().strip() == f"error: {message}"
    assert not (tmp_path / "never-created.db").exists()


async def test_status_json(engine: AsyncEngine) -> None:
    url = url_of(engine)
    await _seed_topics(engine, 3)

    def status() -> dict[str, Any]:
        report: dict[str, Any] = json.loads(
            _run("status", "--json", "--database-url", url, check=True).stdout
        )
        return report

    before = status()
    assert (before["pending"], before["dead"], before["head"], before["floor"]) == (3, 0, 0, 0)
    assert before["oldest_pending_age_s"] >= 0
    assert before["published"]["topic"] == {"live": 0, "tombstones": 0}
    await asyncio.to_thread(_run, "worker", "--once", "--database-url", url, check=True)
    after = status()
    assert (after["pending"], after["head"], after["oldest_pending_age_s"]) == (0, 3, None)
    assert after["published"]["topic"] == {"live": 3, "tombstones": 0}
    assert after["epoch"] == before["epoch"]


@pytest.mark.parametrize(
    ("option", "env"),
    [(["--log-format", "json"], {}), ([], {"STUDYPUB_LOG_FORMAT": "json"})],
    ids=["option", "env"],
)
async def test_worker_logs_one_json_object_per_line(
    engine: AsyncEngine, option: list[str], env: dict[str, str]
) -> None:
    await _seed_topics(engine, 3)
    done = await asyncio.to_thread(
        _run, "worker", "--once", *option, "--database-url", url_of(engine), env=env
    )
    assert done.returncode == 0, done.stderr.decode()
    assert "drained: applied 3," in done.stdout.decode()  # the command's own output: stdout
    lines = [json.loads(line) for line in done.stderr.decode().splitlines()]
    for line in lines:
        assert {"time", "level", "logger", "message"} <= line.keys(), line
    [batch] = [line for line in lines if line["logger"] == "studypub.relay"]
    assert batch["level"] == "INFO"
    assert batch["message"].startswith("relay batch: 3 applied, 0 unchanged, 0 stale,")
    counts = {name: batch[name] for name in ("applied", "unchanged", "stale", "retried", "dead")}
    assert counts == {"applied": 3, "unchanged": 0, "stale": 0, "retried": 0, "dead": 0}
    assert batch["duration_ms"] >= 0


async def test_worker_logs_readable_text_by_default(engine: AsyncEngine) -> None:
    await _seed_topics(engine, 3)
    done = await asyncio.to_thread(_run, "worker", "--once", "--database-url", url_of(engine))
    assert done.returncode == 0, done.stderr.decode()
    [batch] = [line for line in done.stderr.decode().splitlines() if "studypub.relay" in line]
    message = batch.partition(" INFO studypub.relay: ")[2]
    assert message.startswith("relay batch: 3 applied, 0 unchanged, 0 stale, 0 retried, 0 dead in ")
    assert message.endswith(" ms")
    assert not done.stderr.decode().lstrip().startswith("{")


@pytest.mark.parametrize(
    "command",
    [["worker"], ["serve"], ["bridge", "--nats", "nats://127.0.0.1:4222"]],
    ids=lambda command: command[0],
)
def test_log_format_refuses_an_unknown_value(command: list[str]) -> None:
    result = cli(*command, "--log-format", "xml")
    assert result.exit_code == 2
    assert "'xml' is not one of 'text', 'json'" in " ".join(result.output.replace("│", " ").split())
    assert "Traceback" not in result.output


async def test_worker_serves_metrics_and_health_on_its_port(engine: AsyncEngine) -> None:
    """``--metrics-port``: the relay's counters after it published, the database gauges,
    /healthz and /readyz; SIGTERM stops the port with the worker."""
    await _seed_topics(engine, 50)
    port = free_port()
    proc = _worker(url_of(engine), "--metrics-port", str(port))
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 20
            while True:
                try:
                    text = (await client.get("/metrics")).text
                    if 'studypub_relay_rows_total{outcome="applied"} 50.0' in text:
                        break
                except httpx.TransportError:
                    pass
                assert time.monotonic() < deadline and proc.poll() is None, "no metrics"
                await asyncio.sleep(0.1)
            assert "studypub_outbox_pending_rows 0.0" in text
            assert "studypub_relay_lag_seconds_count" in text
            assert (await client.get("/healthz")).status_code == 200
            ready = await client.get("/readyz")
            assert ready.status_code == 200, ready.text
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=10) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    taken = _worker(url_of(engine), "--metrics-port", str(port), "--once")
    taken_out = taken.communicate(timeout=60)
    assert taken.returncode == 0, taken_out  # the port is free again
