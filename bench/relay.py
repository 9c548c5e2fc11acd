"""Relay throughput and commit-to-feed latency on PostgreSQL.

Throughput: 200,000 pending outbox rows (payloads of about 500 bytes; every tenth row a
repeat of an earlier snapshot, every tenth a tombstone of an entity already in the feed) are
drained, from the same starting state each time, by:

1. the raw-SQL relay limit: one CTE per batch of 500 (claim with SKIP LOCKED, delete,
   coalesce, compare with the published rows, take seqs, upsert), from one connection;
2. one ``studypub worker --once`` process (1 and 2 run twice each, interleaved; the faster
   run of each counts);
3. two ``studypub worker --once`` processes at once.

Then the state checksums' upkeep alone: the raw-SQL statement with and without it (as the
relay's apply statement does it), alternating batch by batch over one drain, three drains
(the median counts) -> ``checksum_upkeep_cost_raw``; the same time per batch as a share of
one worker's throughput -> ``checksum_upkeep_cost_worker`` (target < 5 %).

Each worker's peak RSS comes from ``wait4``. Worker figures count from the first batch
committed to the outbox found empty (polled every 2 and 10 ms), so the process start-up and
exit (interpreter and imports) are left out; the wall time is printed beside.

Latency: 1,000 sequential authoring writes (a topic update and its enqueue, committed), with
one ``studypub worker`` running; the time from the commit returning to the entry being
readable with ``feed.read_feed`` (woken by LISTEN on the feed channel).

Uses ``STUDYPUB_BENCH_PG_URL`` (an admin URL) to create and drop ``studypub_bench_relay``.

    python bench/relay.py [--rows 200000] [--writes 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import asyncpg
from benchdb import create_database, database_url, drop_database

from studypub import feed, migrate
from studypub.db import create_engine, read_session_factory, session_factory
from studypub.models import Topic
from studypub.notify import FEED_CHANNEL, asyncpg_dsn
from studypub.outbox import enqueue_changed

DB_NAME = "studypub_bench_relay"
BATCH = 500
STUDYPUB = str(Path(sys.executable).with_name("studypub"))
TOMBSTONE_BASE = 1_000_000

# Every row g: a live snapshot of entity g; every tenth (g % 10 = 7) a repeat of the
# snapshot of entity g - 5006 (another batch: "unchanged"); every tenth (g % 10 = 3) a
# tombstone (version 2) of entity 1,000,000 + g, which is already in the feed.
SEED_OUTBOX = f"""
INSERT INTO outbox (kind, source_id, source_version, schema_version, payload, payload_hash,
                    deleted, enqueued_at, attempts, available_at)
SELECT (ARRAY['topic','question','card','card_progress'])[s.sid % 4 + 1], s.sid, s.version, 1,
       s.payload, encode(sha256(convert_to(s.payload::text, 'UTF8')), 'hex'), s.deleted,
       now(), 0, now()
FROM (
    SELECT g,
           CASE WHEN g % 10 = 3 THEN {TOMBSTONE_BASE} + g
                WHEN g % 10 = 7 AND g > 5006 THEN g - 5006 ELSE g END AS sid,
           CASE WHEN g % 10 = 3 THEN 2 ELSE 1 END AS version,
           g % 10 = 3 AS deleted,
           CASE WHEN g % 10 = 3 THEN '{{}}'::json ELSE json_build_object(
               'id', CASE WHEN g % 10 = 7 AND g > 5006 THEN g - 5006 ELSE g END,
               'title', 'Title ' || CASE WHEN g % 10 = 7 AND g > 5006 THEN g - 5006 ELSE g END,
               'description', repeat(md5((CASE WHEN g % 10 = 7 AND g > 5006 THEN g - 5006
                                               ELSE g END)::text), 13)) END AS payload
    FROM generate_series(1, $1::int) AS g
) AS s
ORDER BY s.g
"""

SEED_PUBLISHED = f"""
INSERT INTO published (kind, id, version, schema_version, latest_version,
                       latest_schema_version, payload, hash, deleted, seq, published_at)
SELECT (ARRAY['topic','question','card','card_progress'])[({TOMBSTONE_BASE} + g) % 4 + 1],
       {TOMBSTONE_BASE} + g, 1, 1, 1, 1, json_build_object('id', {TOMBSTONE_BASE} + g),
       md5(g::text) || md5(g::text), false,
       row_number() OVER (ORDER BY g), now()
FROM generate_series(1, $1::int) AS g WHERE g % 10 = 3
"""

# The raw-SQL relay limit: the whole apply transaction of one batch in one statement.
RAW_BATCH = """
WITH claimed AS (
    SELECT id FROM outbox WHERE dead_at IS NULL AND available_at <= now()
    ORDER BY id LIMIT $1 FOR UPDATE SKIP LOCKED
), gone AS (
    DELETE FROM outbox WHERE id = ANY(ARRAY(SELECT id FROM claimed))
    RETURNING id, kind, source_id, source_version, schema_version, payload, payload_hash, deleted
), winners AS (
    SELECT DISTINCT ON (kind, source_id) *
    FROM gone ORDER BY kind, source_id, source_version DESC, schema_version DESC, id DESC
), fresh AS (
    SELECT w.*, row_number() OVER (ORDER BY w.id) AS n,
           p.hash AS old_hash, p.deleted AS old_deleted, p.scope AS old_scope
    FROM winners w LEFT JOIN published p ON p.kind = w.kind AND p.id = w.source_id
    WHERE p.kind IS NULL
       OR ((w.source_version, w.schema_version) >= (p.latest_version, p.latest_schema_version)
           AND (w.payload_hash, w.deleted) IS DISTINCT FROM (p.hash, p.deleted))
), head AS (
    UPDATE feed_head SET last_seq = last_seq + (SELECT count(*) FROM fresh) WHERE id = 1
    RETURNING last_seq - (SELECT count(*) FROM fresh) AS base
), written AS (
    INSERT INTO published (kind, id, version, schema_version, latest_version,
                           latest_schema_version, payload, hash, deleted, seq, published_at)
    SELECT f.kind, f.source_id, f.source_version, f.schema_version, f.source_version,
           f.schema_version, f.payload, f.payload_hash, f.deleted, head.base + f.n, now()
    FROM fresh f, head
    ON CONFLICT (kind, id) DO UPDATE SET
        version = excluded.version, schema_version = excluded.schema_version,
        latest_version = excluded.latest_version,
        latest_schema_version = excluded.latest_schema_version,
        payload = excluded.payload, hash = excluded.hash, deleted = excluded.deleted,
        seq = excluded.seq, published_at = excluded.published_at
    RETURNING 1
)
SELECT (SELECT count(*) FROM gone), (SELECT count(*) FROM written)
"""

# The same, with the state checksums' upkeep as the relay does it (studypub/sql): the
# applied rows add their contribution, the live rows they replace subtract theirs.
RAW_BATCH_WITH_CHECKSUMS = RAW_BATCH.replace(
    """    RETURNING 1
)
SELECT""",
    """    RETURNING 1
), contributions AS (
    SELECT f.kind, '' AS scope, 1 AS n, studypub_h64(f.payload_hash) AS h
    FROM fresh f WHERE NOT f.deleted
    UNION ALL
    SELECT kind, old_scope, -1, studypub_h64(old_hash)
    FROM fresh WHERE old_hash IS NOT NULL AND NOT old_deleted
), checksums AS (
    INSERT INTO feed_checksums AS c (kind, scope, entries, sum_hi, sum_lo, changed_seq)
    SELECT kind, scope, sum(n), sum(n * ((h >> 32) & 4294967295)), sum(n * (h & 4294967295)),
           (SELECT base FROM head)
    FROM contributions GROUP BY kind, scope
    ON CONFLICT (kind, scope) DO UPDATE SET
        entries = c.entries + excluded.entries, sum_hi = c.sum_hi + excluded.sum_hi,
        sum_lo = c.sum_lo + excluded.sum_lo, changed_seq = excluded.changed_seq
    RETURNING 1
)
SELECT""",
)
assert RAW_BATCH_WITH_CHECKSUMS != RAW_BATCH

UPKEEP_DRAINS = 3

FINGERPRINT = """
SELECT count(*), count(seq), sum(hashtext(kind || id || hash || deleted || version))
FROM published
"""


async def create_schema() -> None:
    await create_database(DB_NAME)
    engine = create_engine(database_url(DB_NAME))
    try:
        await migrate.upgrade(engine)
    finally:
        await engine.dispose()


async def reset(conn: asyncpg.Connection, rows: int) -> None:
    """The same starting state for every run: the pending outbox, the pre-published rows."""
    await conn.execute("TRUNCATE outbox, published, feed_checksums RESTART IDENTITY")
    await conn.execute(SEED_OUTBOX, rows)
    await conn.execute(SEED_PUBLISHED, rows)
    await conn.execute(
        "UPDATE feed_head SET last_seq = (SELECT count(*) FROM published), floor = 0"
    )
    await conn.execute("VACUUM ANALYZE outbox")
    await conn.execute("VACUUM ANALYZE published")
    await conn.execute("CHECKPOINT")


async def run_raw(conn: asyncpg.Connection, statement: str = RAW_BATCH) -> float:
    started = time.perf_counter()
    while True:
        claimed, _written = await conn.fetchrow(statement, BATCH)
        if claimed == 0:
            return time.perf_counter() - started


async def run_raw_alternating(conn: asyncpg.Connection) -> tuple[float, float]:
    """Drain with the raw statement without and with the checksums' upkeep in turn, batch
    by batch; the events/s of each."""
    spent = [0.0, 0.0]
    done = [0, 0]
    for turn in itertools.count():
        which = turn % 2
        statement = RAW_BATCH_WITH_CHECKSUMS if which else RAW_BATCH
        started = time.perf_counter()
        claimed, _written = await conn.fetchrow(statement, BATCH)
        spent[which] += time.perf_counter() - started
        done[which] += claimed
        if claimed == 0:
            return done[0] / spent[0], done[1] / spent[1]
    raise AssertionError("unreachable")


def run_workers(count: int) -> tuple[float, float, list[str]]:
    """Run ``count`` worker processes to the end; (end time, peak RSS MB, their outputs)."""
    procs = [
        subprocess.Popen(
            [
                STUDYPUB,
                "worker",
                "--once",
                "--batch-size",
                str(BATCH),
                "--database-url",
                database_url(DB_NAME),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        for _ in range(count)
    ]
    peak_kb = 0
    outputs = []
    for proc in procs:
        out = proc.stdout.read().decode() if proc.stdout else ""
        _pid, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            raise SystemExit(f"worker failed with status {proc.returncode}")
        peak_kb = max(peak_kb, usage.ru_maxrss)
        outputs.append(out.strip())
    return time.perf_counter(), peak_kb / 1024, outputs


async def drain_with_workers(
    conn: asyncpg.Connection, count: int
) -> tuple[float, float, float, list[str]]:
    """(wall s, draining s, peak RSS MB, outputs).

    Draining runs from the first commit seen (polled every 2 ms) to the outbox seen empty
    (every 10 ms), so the process start-up and exit (interpreter, imports) are left out.
    """
    head = await conn.fetchval("SELECT last_seq FROM feed_head")
    started = time.perf_counter()
    job = asyncio.create_task(asyncio.to_thread(run_workers, count))
    first = emptied = None
    while emptied is None and not job.done():
        if first is None:
            if await conn.fetchval("SELECT last_seq FROM feed_head") != head:
                first = time.perf_counter()
        elif not await conn.fetchval("SELECT EXISTS (SELECT FROM outbox)"):
            emptied = time.perf_counter()
        # Look often for the start, seldom for the end (the looks compete for the CPU).
        await asyncio.sleep(0.002 if first is None else 0.01)
    ended, rss, outputs = await job
    return ended - started, (emptied or ended) - (first or started), rss, outputs


async def throughput(rows: int) -> dict[str, float]:
    conn = await asyncpg.connect(asyncpg_dsn(database_url(DB_NAME)))
    try:
        # The raw limit and one worker run twice each, interleaved, and the faster run of
        # each counts: on a shared machine a single run can land on a busy moment.
        figures: dict[str, float] = {}
        raw_rate = 0.0
        raw_print = None
        peak = 0.0
        for step in ("raw", 1, "raw", 1, 2):
            await reset(conn, rows)
            if step == "raw":
                raw_s = await run_raw(conn)
                raw_print = await conn.fetchrow(FINGERPRINT)
                raw_rate = max(raw_rate, rows / raw_s)
                print(f"raw-SQL limit, 1 connection: {raw_s:.2f} s, {rows / raw_s:,.0f} events/s")
                continue
            wall, drain, rss, outputs = await drain_with_workers(conn, int(step))
            pending = await conn.fetchval("SELECT count(*) FROM outbox")
            same = await conn.fetchrow(FINGERPRINT) == raw_print
            rate = rows / drain
            peak = max(peak, rss)
            print(
                f"{step} worker(s): {wall:.2f} s wall, {drain:.2f} s draining, "
                f"{rate:,.0f} events/s, peak RSS {rss:.0f} MB, left {pending}, "
                f"same published state as raw: {same}"
            )
            for out in outputs:
                print(f"    {out}")
            key = "events_per_s" if step == 1 else "events_per_s_2_workers"
            figures[key] = max(figures.get(key, 0), round(rate))
        # The checksums' upkeep, alone: the raw statement with and without it, alternating
        # batch by batch over one drain (so that drift and noise fall on both alike); three
        # drains, the median counts.
        drains = []
        for _ in range(UPKEEP_DRAINS):
            await reset(conn, rows)
            plain, upkeep = await run_raw_alternating(conn)
            drains.append((1 - upkeep / plain, plain, upkeep))
            print(
                f"raw-SQL limit without / with the checksums' upkeep, alternating batches: "
                f"{plain:,.0f} / {upkeep:,.0f} events/s: the upkeep costs "
                f"{1 - upkeep / plain:.1%} of the raw statement"
            )
        cost, plain, upkeep = sorted(drains)[len(drains) // 2]
        print(
            f"median: {cost:.1%} of the raw statement; "
            f"{cost * figures['events_per_s'] / upkeep:.1%} of a worker's throughput (the "
            "same time per batch, beside everything else a worker does)"
        )
        figures["raw_without_checksums_events_per_s"] = round(plain)
        figures["raw_with_checksums_events_per_s"] = round(upkeep)
        figures["checksum_upkeep_cost_raw"] = round(cost, 3)
        figures["checksum_upkeep_cost_worker"] = round(cost * figures["events_per_s"] / upkeep, 3)
        figures["raw_limit_events_per_s"] = round(raw_rate)
        figures["ratio"] = round(figures["events_per_s"] / raw_rate, 3)
        figures["peak_rss_mb"] = round(peak, 1)
        return figures
    finally:
        await conn.close()


async def latency(writes: int) -> dict[str, float]:
    url = database_url(DB_NAME)
    conn = await asyncpg.connect(asyncpg_dsn(url))
    await conn.execute("TRUNCATE outbox, published, topics RESTART IDENTITY CASCADE")
    await conn.execute("UPDATE feed_head SET last_seq = 0, floor = 0")
    notified = asyncio.Event()
    await conn.add_listener(FEED_CHANNEL, lambda *_: notified.set())
    engine = create_engine(url)
    sessions = session_factory(engine)
    reads = read_session_factory(engine)
    async with sessions() as s:
        topic = Topic(title="latency", description="d" * 400)
        s.add(topic)
        await enqueue_changed(s, topic)
        await s.commit()
        topic_id = topic.id
    worker = await asyncio.create_subprocess_exec(
        STUDYPUB,
        "worker",
        "--database-url",
        url,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    samples: list[float] = []
    try:
        cursor = feed.START
        deadline = time.monotonic() + 30
        while True:
            async with reads() as r:  # a read transaction is one snapshot: one per look
                page = await feed.read_feed(r, cursor, 10)
            if page.entries:
                break
            assert time.monotonic() < deadline, "the worker published nothing"
            await asyncio.sleep(0.05)  # the worker is starting
        cursor = page.last_seq
        for n in range(writes):
            notified.clear()
            async with sessions() as s:
                row = await s.get_one(Topic, topic_id)
                row.title = f"latency {n}"
                await enqueue_changed(s, row)
                await s.commit()
            committed = time.perf_counter()
            while True:
                async with reads() as r:
                    page = await feed.read_feed(r, cursor, 10)
                if page.entries:
                    break
                await asyncio.wait_for(notified.wait(), 10)
                notified.clear()
            samples.append((time.perf_counter() - committed) * 1000)
            cursor = page.last_seq
    finally:
        worker.send_signal(signal.SIGTERM)
        await asyncio.wait_for(worker.wait(), 10)
        await engine.dispose()
        await conn.close()
    samples.sort()
    p50 = statistics.median(samples)
    p99 = samples[min(len(samples) - 1, int(len(samples) * 0.99))]
    print(
        f"commit-to-feed latency over {writes} writes: p50 {p50:.2f} ms, p99 {p99:.2f} ms, "
        f"max {samples[-1]:.2f} ms"
    )
    return {"p50_ms": round(p50, 2), "p99_ms": round(p99, 2), "max_ms": round(samples[-1], 2)}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--writes", type=int, default=1000)
    args = parser.parse_args()
    await create_schema()
    try:
        figures: dict[str, float] = {"rows": args.rows}
        figures |= await throughput(args.rows)
        figures |= await latency(args.writes)
    finally:
        await drop_database(DB_NAME)
    print(json.dumps(figures))


if __name__ == "__main__":
    asyncio.run(main())
