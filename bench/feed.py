"""Benchmark: a viewer's full bootstrap over HTTP, and the wake-up latency of a long-poll.

PostgreSQL only. Creates ``studypub_bench_feed`` through ``STUDYPUB_BENCH_PG_URL`` (an admin
URL), migrates it, fills the feed with N published entries (question payloads, written with
one set-based INSERT: this measures the read path, not the relay), then starts ``studypub
serve --no-relay`` as a separate process on loopback and:

1. bootstraps over HTTP with httpx, ``limit=1000``, from 0 until nothing is pending
   -> ``events_per_s``; the same pages read in-process straight from ``feed.read_feed``
   (no HTTP, no JSON) -> ``raw_limit_events_per_s``; ``ratio`` = HTTP / raw;
2. parks a long-poll (``wait=10``) at the head, publishes one entry through the real relay,
   and times relay commit -> response, ``--rounds`` times -> ``p50_ms``, ``p99_ms``.

Prints figures, and one JSON object on the last line. The machine has 2 cores: a busy
machine depresses the figures.

Then learner-scoped feeds: it adds as many entries again, shared questions interleaved with
``card_progress`` rows of 100 learners, and bootstraps that feed whole with the service token
and as one learner (1 % of the progress rows): ``scoped_ratio`` = the learner's entries/s
over the whole feed's (target >= 0.8: a learner's bootstrap skips the other learners' rows
through the (scope, seq) index instead of reading them).

Then it grows the feed to ``--large`` entries (2,000,000) and bootstraps again: a page must
cost the same however large the feed (``large_ratio``, target >= 0.8).

    python bench/feed.py [--entries 200000] [--rounds 100] [--large 2000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from benchdb import create_database, database_url, drop_database, free_port, peak_rss_mb, vacuum
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import authoring, feed, migrate, tokens
from studypub.db import create_engine, read_session_factory, session_factory
from studypub.relay import Relay

DB_NAME = "studypub_bench_feed"
LIMIT = 1000
TARGET_EVENTS_PER_S = 20_000
LEARNERS = 100
SERVICE_TOKEN = "bench-service"
TOKEN_SECRET = "bench-secret-that-signs-learners-tokens"
SERVICE = {"Authorization": f"Bearer {SERVICE_TOKEN}"}

SEED_SQL = """
INSERT INTO published (kind, id, version, schema_version, latest_version,
                       latest_schema_version, payload, hash, deleted, seq, published_at)
SELECT 'question', g, 1, 1, 1, 1,
       json_build_object(
           'id', g, 'topic_id', 1 + g % 50,
           'stem', 'Question ' || g || ': which of these is the right answer to it?',
           'choices', json_build_array('alpha', 'beta', 'gamma', 'delta'),
           'answer', 'alpha'),
       md5(g::text) || md5((g + 1)::text), false, g, now()
FROM generate_series(1, :n) AS g
"""


GROW_SQL = """
INSERT INTO published (kind, id, version, schema_version, latest_version,
                       latest_schema_version, payload, hash, deleted, seq, published_at)
SELECT 'question', 10000000 + g, 1, 1, 1, 1,
       json_build_object(
           'id', 10000000 + g, 'topic_id', 1 + g % 50,
           'stem', 'Question ' || g || ': which of these is the right answer to it?',
           'choices', json_build_array('alpha', 'beta', 'gamma', 'delta'),
           'answer', 'alpha'),
       md5(g::text) || md5((g + 2)::text), false, :head + g, now()
FROM generate_series(1, :n) AS g
"""


# Shared questions (odd g) interleaved with progress rows of LEARNERS learners (even g).
SCOPED_SQL = """
INSERT INTO published (kind, id, version, schema_version, latest_version,
                       latest_schema_version, payload, hash, deleted, seq, published_at, scope)
SELECT CASE WHEN g % 2 = 1 THEN 'question' ELSE 'card_progress' END,
       20000000 + g, 1, 1, 1, 1,
       CASE WHEN g % 2 = 1 THEN json_build_object(
           'id', 20000000 + g, 'topic_id', 1 + g % 50,
           'stem', 'Question ' || g || ': which of these is the right answer to it?',
           'choices', json_build_array('alpha', 'beta', 'gamma', 'delta'),
           'answer', 'alpha')
       ELSE json_build_object(
           'id', 20000000 + g, 'card_id', 1 + g % 5000,
           'learner', 'learner-' || (g / 2) % :learners, 'state', 'review', 'step', 0,
           'due_at', '2026-12-24T10:00:00.000000Z', 'stability', 12.5, 'difficulty', 4.75,
           'reps', 4, 'lapses', 1, 'last_review_at', '2026-12-01T09:30:00.000000Z')
       END,
       md5(g::text) || md5((g + 3)::text), false, :head + g, now(),
       CASE WHEN g % 2 = 1 THEN '' ELSE 'learner-' || (g / 2) % :learners END
FROM generate_series(1, :n) AS g
"""


async def add_scoped(engine: AsyncEngine, entries: int) -> None:
    """``entries`` more: shared questions and learners' progress rows, interleaved."""
    async with engine.begin() as conn:
        head = (await conn.execute(text("SELECT last_seq FROM feed_head"))).scalar_one()
        params = {"head": head, "n": entries, "learners": LEARNERS}
        await conn.execute(text(SCOPED_SQL), params)
        await conn.execute(text("UPDATE feed_head SET last_seq = :s"), {"s": head + entries})
    await vacuum(engine, "VACUUM ANALYZE published")


async def grow(engine: AsyncEngine, entries: int) -> None:
    """More entries after the head, up to ``entries`` in all."""
    async with engine.begin() as conn:
        head = (await conn.execute(text("SELECT last_seq FROM feed_head"))).scalar_one()
        count = (await conn.execute(text("SELECT count(seq) FROM published"))).scalar_one()
        n = entries - count
        await conn.execute(text(GROW_SQL), {"head": head, "n": n})
        await conn.execute(text("UPDATE feed_head SET last_seq = :s"), {"s": head + n})
    await vacuum(engine, "VACUUM ANALYZE published")


async def seed(engine: AsyncEngine, entries: int) -> None:
    await migrate.upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(text(SEED_SQL), {"n": entries})
        await conn.execute(text("UPDATE feed_head SET last_seq = :n"), {"n": entries})
    await vacuum(engine, "VACUUM ANALYZE published")  # ``pending``: an index-only count
    # A topic for the latency rounds' questions.
    async with session_factory(engine)() as session, session.begin():
        await authoring.create_topic(session, title="Bench")
    await Relay(engine, listen=False).run_once()


def spawn_server(url: str, port: int) -> subprocess.Popen[bytes]:
    env = dict(
        os.environ,
        STUDYPUB_DATABASE_URL=url,
        STUDYPUB_AUTHOR_TOKEN="bench",
        STUDYPUB_VIEWER_TOKEN=SERVICE_TOKEN,
        STUDYPUB_TOKEN_SECRET=TOKEN_SECRET,
    )
    studypub = Path(sys.executable).parent / "studypub"
    return subprocess.Popen(
        [str(studypub), "serve", "--no-relay", "--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def start_server(url: str, port: int) -> subprocess.Popen[bytes]:
    """A separate server process, as in production: the client does not share its core."""
    proc = spawn_server(url, port)
    async with httpx.AsyncClient() as client:
        for _ in range(200):
            try:
                await client.get(f"http://127.0.0.1:{port}/v1/feed?limit=1", headers=SERVICE)
                return proc
            except httpx.TransportError:
                if proc.poll() is not None:
                    _, err = proc.communicate()
                    raise SystemExit(f"server failed: {err.decode()}") from None
                await asyncio.sleep(0.05)
    raise SystemExit("server did not start")


async def bootstrap_http(base: str, headers: dict[str, str] = SERVICE) -> tuple[int, float]:
    entries = 0
    cursor = feed.START
    async with httpx.AsyncClient(base_url=base, timeout=60, headers=headers) as client:
        started = time.perf_counter()
        while True:
            response = await client.get("/v1/feed", params={"since": cursor, "limit": LIMIT})
            response.raise_for_status()
            page = response.json()
            entries += len(page["results"])
            cursor = page["last_seq"]
            if page["pending"] == 0 or not page["results"]:
                break
        return entries, time.perf_counter() - started


async def bootstrap_raw(engine: AsyncEngine) -> tuple[int, float]:
    sessions = read_session_factory(engine)
    entries = 0
    cursor = feed.START
    started = time.perf_counter()
    while True:
        async with sessions() as session:
            page = await feed.read_feed(session, cursor, LIMIT, raw_payload=True)
        entries += len(page.entries)
        cursor = page.last_seq
        if page.pending == 0 or not page.entries:
            break
    return entries, time.perf_counter() - started


async def wakeup_latencies(engine: AsyncEngine, base: str, rounds: int) -> list[float]:
    relay = Relay(engine, listen=False)
    sessions = session_factory(engine)
    latencies: list[float] = []
    async with httpx.AsyncClient(base_url=base, timeout=30, headers=SERVICE) as client:
        async with sessions() as session:
            cursor = feed.encode_cursor(*_head(await feed.head(session)))
        async with sessions() as session:
            topic_id = (await authoring.list_topics(session, after_id=0, limit=1))[0].id
        for n in range(rounds):
            poll = asyncio.create_task(client.get("/v1/feed", params={"since": cursor, "wait": 10}))
            await asyncio.sleep(0.05)  # the long-poll is parked on the server
            async with sessions() as session, session.begin():
                await authoring.create_question(
                    session, topic_id=topic_id, stem=f"Live {n}?", choices=["a", "b"], answer="a"
                )
            await relay.run_once()
            published = time.perf_counter()
            response = await poll
            latencies.append((time.perf_counter() - published) * 1000)
            page = response.json()
            assert page["results"], "the long-poll timed out instead of waking"
            cursor = page["last_seq"]
    return latencies


def _head(head: feed.Head) -> tuple[str, int]:
    return head.epoch, head.last_seq


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def main(entries: int, rounds: int, large: int) -> dict[str, float | int | None]:
    await create_database(DB_NAME)
    url = database_url(DB_NAME)
    engine = create_engine(url)
    proc = None
    try:
        t0 = time.perf_counter()
        await seed(engine, entries)
        print(f"seeded {entries:,} feed entries in {time.perf_counter() - t0:.1f} s")
        port = free_port()
        proc = await start_server(url, port)
        base = f"http://127.0.0.1:{port}"

        await bootstrap_http(base)  # warm caches and connections once
        got, seconds = await bootstrap_http(base)
        assert got == entries + 1, f"bootstrap read {got} entries, expected {entries + 1}"
        http_rate, base_entries = got / seconds, got
        print(f"HTTP bootstrap: {got:,} entries in {seconds:.2f} s = {http_rate:,.0f} entries/s")
        raw_got, raw_seconds = await bootstrap_raw(engine)
        raw_rate = raw_got / raw_seconds
        print(f"in-process read_feed: {raw_rate:,.0f} entries/s (the same queries, no HTTP)")

        latencies = await wakeup_latencies(engine, base, rounds)
        p50 = statistics.median(latencies)
        p99 = statistics.quantiles(latencies, n=100)[98] if len(latencies) >= 2 else latencies[0]
        print(
            f"long-poll wake-up, relay commit -> response, {rounds} rounds: "
            f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(latencies):.1f} ms"
        )
        t0 = time.perf_counter()
        await add_scoped(engine, entries)
        print(
            f"added {entries:,} entries, shared and {LEARNERS} learners' progress, in "
            f"{time.perf_counter() - t0:.1f} s"
        )
        await bootstrap_http(base)  # warm the new pages once
        full_got, full_seconds = await bootstrap_http(base)
        full_rate = full_got / full_seconds
        learner, _ = tokens.issue(TOKEN_SECRET, "learner-7")
        scoped_got, scoped_seconds = await bootstrap_http(
            base, {"Authorization": f"Bearer {learner}"}
        )
        scoped_rate = scoped_got / scoped_seconds
        async with engine.connect() as conn:
            expected = (
                await conn.execute(
                    text("SELECT count(seq) FROM published WHERE scope IN ('', 'learner-7')")
                )
            ).scalar_one()
        assert scoped_got == expected, f"the learner read {scoped_got}, expected {expected}"
        print(
            f"whole feed (service token): {full_got:,} entries at {full_rate:,.0f} entries/s; "
            f"one learner (1 % of the progress rows): {scoped_got:,} entries at "
            f"{scoped_rate:,.0f} entries/s = {scoped_rate / full_rate:.2f} (target >= 0.8)"
        )
        large_rate = None
        if large:
            t0 = time.perf_counter()
            await grow(engine, large)
            print(f"grew the feed to {large:,} entries in {time.perf_counter() - t0:.1f} s")
            got, seconds = await bootstrap_http(base)
            large_rate = got / seconds
            print(
                f"HTTP bootstrap: {got:,} entries in {seconds:.2f} s = {large_rate:,.0f} "
                f"entries/s, {large_rate / http_rate:.2f} of the {entries:,}-entry rate "
                "(target >= 0.8)"
            )
        server_rss = rss_mb(proc.pid)
        client_rss = peak_rss_mb()
        print(f"peak RSS: server {server_rss:.0f} MB, bench client {client_rss:.0f} MB")
        verdict = "meets" if http_rate >= TARGET_EVENTS_PER_S else "MISSES"
        print(
            f"target >= {TARGET_EVENTS_PER_S:,} entries/s: {verdict}; 2 cores, "
            "server and client share them, other work may depress figures"
        )
        return {
            "entries": base_entries,
            "limit": LIMIT,
            "events_per_s": round(http_rate),
            "raw_limit_events_per_s": round(raw_rate),
            "ratio": round(http_rate / raw_rate, 3),
            "bootstrap_s": round(seconds, 3),
            "p50_ms": round(p50, 2),
            "p99_ms": round(p99, 2),
            "max_ms": round(max(latencies), 2),
            "rounds": rounds,
            "scoped_entries": scoped_got,
            "scoped_events_per_s": round(scoped_rate),
            "full_events_per_s": round(full_rate),
            "scoped_ratio": round(scoped_rate / full_rate, 3),
            "large_entries": large,
            "large_events_per_s": None if large_rate is None else round(large_rate),
            "large_ratio": None if large_rate is None else round(large_rate / http_rate, 3),
            "peak_rss_mb": round(server_rss, 1),
            "client_peak_rss_mb": round(client_rss, 1),
        }
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=15)
        await engine.dispose()
        await drop_database(DB_NAME)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=100)
    parser.add_argument("--large", type=int, default=2_000_000, help="0: skip")
    args = parser.parse_args()
    result = asyncio.run(main(args.entries, args.rounds, args.large))
    print(json.dumps(result))
