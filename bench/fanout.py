"""Fan-out: how many viewers one feed server carries, and how fast each hears of a write.

PostgreSQL only. Creates ``studypub_bench_fanout`` through ``STUDYPUB_BENCH_PG_URL``, starts
``studypub serve`` (with its embedded relay) in its own process for each run, and drives the
viewers from client processes of their own (this script, ``--client``), each holding many
connections with plain asyncio streams:

- ``sse``: ``GET /v1/feed/stream`` from the head, reading events as they come;
- ``poll``: ``GET /v1/feed?wait=30`` in a loop on a keep-alive connection.

Once every client is connected, it measures the server idle for a few seconds (CPU of its
process, database transactions per second, RSS), then makes 20 writes one second apart
through the authoring API (a topic's title) and measures the delivery of each to every
client: from the write's HTTP response to the entry's arrival at the client (one clock: one
machine). It prints, per run, delivery latency p50/p99/max over all clients, deliveries
missed, server CPU and database transactions per second while idle and while delivering,
database statements per commit on the feed side (``studypub_feed_db_statements_total`` on
``/metrics``, when the server has it), and server RSS. Runs: 100, 1,000 and 5,000 SSE
clients, 1,000 long-poll clients, and 10,000 idle SSE connections held (RSS). The last line
is one JSON object: the 5,000-client run's figures and the others under ``runs``.

    python bench/fanout.py [--sse 100,1000,5000] [--poll 1000] [--hold 10000] [--writes 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from benchdb import ADMIN_URL, create_database, database_url, drop_database, free_port

from studypub import authoring, migrate
from studypub.cli.common import event_loop_factory
from studypub.db import create_engine, session_factory
from studypub.notify import asyncpg_dsn
from studypub.relay import Relay

DB_NAME = "studypub_bench_fanout"
TOKEN = "bench"
HOST = "127.0.0.1"
MARKER = re.compile(rb'"title": ?"fanout (\d+)"')
CONNECTS_PER_S = 1_000  # per client process: a burst larger than the listen backlog is lost
CLIENTS_PER_PROCESS = 2_500
# Two heartbeat periods (studypub.tail.HEARTBEAT_S = 15 s): a shorter window would count a
# beat whole or not at all, and the idle figure would swing threefold between runs.
IDLE_S = 30.0
SETTLE_S = 5.0  # connections keep arriving a while after the clients say ready
AFTER_WRITES_S = 5.0
TICKS = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- client processes


async def _request(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, path: str) -> None:
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    )
    await writer.drain()


async def _headers(reader: asyncio.StreamReader) -> dict[str, str]:
    status = await reader.readline()
    if b" 200 " not in status:
        raise RuntimeError(f"HTTP {status.decode().strip()}")
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    return headers


def _record(data: bytes, seen: dict[int, float], duplicates: list[int]) -> None:
    now = time.time()
    for match in MARKER.finditer(data):
        n = int(match.group(1))
        if n not in seen:
            seen[n] = now
        elif seen[n] != now:  # not the same marker seen again across two chunks
            duplicates[0] += 1


class SseClient(asyncio.Protocol):
    """One stream, read in ``data_received``: a client far cheaper than the server it
    measures (a coroutine per chunk would make the clients, not the server, the limit)."""

    def __init__(self, path: str, seen: dict[int, float], dup: list[int]) -> None:
        self.request = (
            f"GET {path} HTTP/1.1\r\nHost: {HOST}\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
        ).encode()
        self.seen, self.dup = seen, dup
        self.carry = b""  # the end of the last chunk: a marker may straddle two
        self.closed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.ok: bool | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.ok is None:
            self.ok = data.startswith(b"HTTP/1.1 200")
        _record(self.carry + data, self.seen, self.dup)
        self.carry = data[-40:]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


async def sse_client(port: int, since: str, seen: dict[int, float], dup: list[int]) -> None:
    loop = asyncio.get_running_loop()
    path = f"/v1/feed/stream?since={since}"
    transport, client = await loop.create_connection(lambda: SseClient(path, seen, dup), HOST, port)
    try:
        await client.closed
        if client.ok is False:
            raise RuntimeError("the stream was refused")
    finally:
        transport.close()


async def poll_client(port: int, since: str, seen: dict[int, float], dup: list[int]) -> None:
    reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 22)
    try:
        while True:
            await _request(reader, writer, f"/v1/feed?since={since}&wait=30&limit=1000")
            headers = await _headers(reader)
            body = await reader.readexactly(int(headers["content-length"]))
            _record(body, seen, dup)
            since = json.loads(body)["last_seq"]
    finally:
        writer.close()


async def client_main(mode: str, count: int, port: int, since: str) -> None:
    """Hold ``count`` connections; print "ready", then on "stop" from stdin the results."""
    run = sse_client if mode == "sse" else poll_client
    seen: list[dict[int, float]] = [{} for _ in range(count)]
    dup = [0]
    tasks = []
    for i in range(count):
        tasks.append(asyncio.create_task(run(port, since, seen[i], dup)))
        if i % 100 == 99:
            await asyncio.sleep(100 / CONNECTS_PER_S)
    await asyncio.sleep(1.0)
    failed = [t for t in tasks if t.done()]
    print(json.dumps({"ready": count - len(failed)}), flush=True)
    loop = asyncio.get_running_loop()
    await loop.run_in_executor(None, sys.stdin.readline)
    errors = sum(1 for t in tasks if t.done() and not t.cancelled() and t.exception())
    for t in tasks:
        t.cancel()
    arrivals: dict[int, list[float]] = {}
    for client in seen:
        for n, at in client.items():
            arrivals.setdefault(n, []).append(at)
    print(json.dumps({"arrivals": arrivals, "duplicates": dup[0], "errors": errors}), flush=True)


# ---------------------------------------------------------------- the server and its figures


class Server:
    """``studypub serve`` in its own process, and what /proc and PostgreSQL say of it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.port = free_port()
        self.base = f"http://{HOST}:{self.port}"
        env = dict(os.environ, STUDYPUB_DATABASE_URL=url, STUDYPUB_AUTHOR_TOKEN=TOKEN)
        studypub = Path(sys.executable).parent / "studypub"
        self.proc = subprocess.Popen(
            [str(studypub), "serve", "--port", str(self.port)],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )

    async def ready(self) -> None:
        async with httpx.AsyncClient() as client:
            for _ in range(400):
                try:
                    await client.get(f"{self.base}/v1/feed?limit=1")
                    return
                except httpx.TransportError:
                    if self.proc.poll() is not None:
                        _out, err = self.proc.communicate()
                        raise SystemExit(f"server failed: {err.decode()}") from None
                    await asyncio.sleep(0.05)
        raise SystemExit("server did not start")

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICKS  # utime + stime

    def rss_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        return 0.0

    async def feed_statements(self) -> float | None:
        async with httpx.AsyncClient(
            headers={"Authorization": f"Bearer {TOKEN}"}, timeout=60
        ) as client:
            text = (await client.get(f"{self.base}/metrics")).text
        total = None
        for line in text.splitlines():
            if line.startswith("studypub_feed_db_statements_total"):
                total = (total or 0.0) + float(line.rsplit(" ", 1)[1])
        return total

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()


async def transactions(admin: asyncpg.Connection) -> int:
    return int(
        await admin.fetchval(
            "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = $1",
            DB_NAME,
        )
    )


class Window:
    """CPU, database transactions and feed statements over a stretch of time."""

    def __init__(self, server: Server, admin: asyncpg.Connection) -> None:
        self.server, self.admin = server, admin

    async def __aenter__(self) -> Window:
        await asyncio.sleep(0.5)  # pg_stat_database is updated by backends now and then
        self.st0 = await self.server.feed_statements()  # a scrape: before the window
        self.t0, self.cpu0 = time.monotonic(), self.server.cpu_s()
        self.tx0 = await transactions(self.admin)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await asyncio.sleep(0.5)
        self.seconds = seconds = time.monotonic() - self.t0
        self.cpu = (self.server.cpu_s() - self.cpu0) / seconds
        self.tps = (await transactions(self.admin) - self.tx0) / seconds
        st1 = await self.server.feed_statements()
        self.statements = None if st1 is None or self.st0 is None else st1 - self.st0


# ---------------------------------------------------------------- one run


async def spawn_clients(mode: str, total: int, port: int, since: str) -> list[Any]:
    procs = []
    left = total
    while left > 0:
        count = min(left, CLIENTS_PER_PROCESS)
        left -= count
        procs.append(
            await asyncio.create_subprocess_exec(
                sys.executable,
                __file__,
                "--client",
                mode,
                str(count),
                str(port),
                since,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                limit=1 << 26,  # the report is one JSON line of every arrival
            )
        )
    ready = 0
    for proc in procs:
        ready += json.loads(await proc.stdout.readline())["ready"]
    if ready != total:
        raise SystemExit(f"only {ready} of {total} clients connected")
    return procs


async def collect(procs: list[Any]) -> tuple[dict[int, list[float]], int, int]:
    arrivals: dict[int, list[float]] = {}
    duplicates = errors = 0
    for proc in procs:
        proc.stdin.write(b"stop\n")
        await proc.stdin.drain()
    for proc in procs:
        report = json.loads(await proc.stdout.readline())
        for n, times in report["arrivals"].items():
            arrivals.setdefault(int(n), []).extend(times)
        duplicates += report["duplicates"]
        errors += report["errors"]
        await proc.wait()
    return arrivals, duplicates, errors


async def head_cursor(base: str) -> str:
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
        cursor = "0"
        while True:
            response = await client.get("/v1/feed", params={"since": cursor, "limit": 1000})
            response.raise_for_status()
            page = response.json()
            cursor = page["last_seq"]
            if page["pending"] == 0:
                return str(cursor)


async def write_markers(base: str, writes: int) -> dict[int, float]:
    """``writes`` titles ``fanout <n>`` one second apart through the authoring API at
    ``base``; when each write's response came (``time.time()``, the clients' clock)."""
    written: dict[int, float] = {}
    headers = {"Authorization": f"Bearer {TOKEN}"}
    async with httpx.AsyncClient(base_url=base, headers=headers, timeout=30) as client:
        for n in range(writes):
            started = time.monotonic()
            response = await client.patch("/v1/topics/1", json={"title": f"fanout {n}"})
            written[n] = time.time()
            response.raise_for_status()
            await asyncio.sleep(max(0.0, 1.0 - (time.monotonic() - started)))
    return written


async def one_run(url: str, mode: str, clients: int, writes: int) -> dict[str, Any]:
    server = Server(url)
    admin = await asyncpg.connect(asyncpg_dsn(ADMIN_URL))
    try:
        await server.ready()
        since = await head_cursor(server.base)
        procs = await spawn_clients(mode, clients, server.port, since)
        await asyncio.sleep(SETTLE_S)
        async with Window(server, admin) as idle:
            await asyncio.sleep(IDLE_S)
        async with Window(server, admin) as busy:
            written = await write_markers(server.base, writes)
            await asyncio.sleep(AFTER_WRITES_S)
        rss = server.rss_mb()
        arrivals, duplicates, errors = await collect(procs)
    finally:
        await admin.close()
        server.stop()
    latencies = [
        (at - written[n]) * 1000 for n, times in arrivals.items() if n in written for at in times
    ]
    expected = clients * writes
    figures: dict[str, Any] = {
        "mode": mode,
        "clients": clients,
        "p50_ms": round(statistics.median(latencies), 1) if latencies else None,
        "p99_ms": round(statistics.quantiles(latencies, n=100)[98], 1)
        if len(latencies) > 1
        else None,
        "max_ms": round(max(latencies), 1) if latencies else None,
        "missed": expected - len(latencies),
        "duplicates": duplicates,
        "client_errors": errors,
        "idle_server_cpu": round(idle.cpu, 3),
        "idle_db_tps": round(idle.tps, 1),
        "busy_server_cpu": round(busy.cpu, 3),
        "busy_db_tps": round(busy.tps, 1),
        # Feed statements while delivering, less the idle rate (the tail's polling), per write.
        "feed_statements_per_commit": None
        if busy.statements is None or idle.statements is None
        else round((busy.statements - idle.statements / idle.seconds * busy.seconds) / writes, 2),
        "peak_rss_mb": round(rss, 1),
    }
    print(
        f"{mode} x {clients:>5}: p50 {figures['p50_ms']} ms, p99 {figures['p99_ms']} ms, "
        f"max {figures['max_ms']} ms, missed {figures['missed']}, dup {duplicates}; "
        f"idle cpu {idle.cpu:.1%} db {idle.tps:.1f} tx/s; busy cpu {busy.cpu:.1%} "
        f"db {busy.tps:.1f} tx/s; feed statements/commit "
        f"{figures['feed_statements_per_commit']}; rss {rss:.0f} MB",
        flush=True,
    )
    return figures


async def hold_run(url: str, clients: int) -> dict[str, Any]:
    """Only hold ``clients`` idle SSE connections: RSS and idle cost."""
    server = Server(url)
    admin = await asyncpg.connect(asyncpg_dsn(ADMIN_URL))
    try:
        await server.ready()
        since = await head_cursor(server.base)
        procs = await spawn_clients("sse", clients, server.port, since)
        await asyncio.sleep(SETTLE_S)
        async with Window(server, admin) as idle:
            await asyncio.sleep(IDLE_S)
        rss = server.rss_mb()
        await collect(procs)
    finally:
        await admin.close()
        server.stop()
    print(
        f"hold x {clients}: rss {rss:.0f} MB, idle cpu {idle.cpu:.1%}, db {idle.tps:.1f} tx/s",
        flush=True,
    )
    return {
        "mode": "hold",
        "clients": clients,
        "peak_rss_mb": round(rss, 1),
        "idle_server_cpu": round(idle.cpu, 3),
        "idle_db_tps": round(idle.tps, 1),
    }


async def main(args: argparse.Namespace) -> dict[str, Any]:
    await create_database(DB_NAME)
    url = database_url(DB_NAME)
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        async with session_factory(engine)() as session, session.begin():
            await authoring.create_topic(session, title="fanout", description="d" * 200)
        await Relay(engine, listen=False).run_once()
        runs = [await one_run(url, "sse", n, args.writes) for n in args.sse]
        runs += [await one_run(url, "poll", n, args.writes) for n in args.poll]
        runs += [await hold_run(url, n) for n in args.hold]
    finally:
        await engine.dispose()
        await drop_database(DB_NAME)
    main_run = max((r for r in runs if r["mode"] == "sse"), key=lambda r: r["clients"])
    keys = ("clients", "p50_ms", "p99_ms", "missed", "idle_server_cpu", "idle_db_tps")
    summary: dict[str, Any] = {key: main_run[key] for key in keys}
    summary["peak_rss_mb"] = max(r["peak_rss_mb"] for r in runs)
    summary["runs"] = runs
    return summary


def _counts(text: str) -> list[int]:
    return [int(n) for n in text.split(",") if n.strip()]


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--client":
        mode, count, port, since = sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
        with asyncio.Runner(loop_factory=event_loop_factory()) as runner:
            runner.run(client_main(mode, count, port, since))
        sys.exit(0)
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sse", type=_counts, default=[100, 1_000, 5_000])
    parser.add_argument("--poll", type=_counts, default=[1_000])
    parser.add_argument("--hold", type=_counts, default=[10_000])
    parser.add_argument("--writes", type=int, default=20)
    print(json.dumps(asyncio.run(main(parser.parse_args()))))
