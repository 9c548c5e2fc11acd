"""What the enqueue costs an authoring write, on PostgreSQL.

Transactions per second of a question update through the service layer
(``authoring.update_question``: read the row ``FOR UPDATE``, check, update, enqueue, commit),
sequential on one connection, twice in the same run:

1. with the enqueue (the product: a question row and an explanation row into the outbox);
2. without it: the same code path with ``outbox.enqueue_changed`` replaced by a plain flush.

For reference the same pair is measured in raw SQL on asyncpg (the SELECT FOR UPDATE and
UPDATE, then with the two-row outbox INSERT): that is what the outbox costs at the least.
The variants take turns in blocks of 50 transactions so that load from other processes
falls on all of them alike.
``--clients N`` adds a run with N concurrent writers (one question each, no lock waits).

Uses ``STUDYPUB_BENCH_PG_URL`` (an admin URL) to create and drop its own database
``studypub_bench_authoring``.

    python bench/authoring.py [--transactions 2000] [--rounds 3] [--clients 4]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import asyncpg
from benchdb import create_database, database_url, drop_database, peak_rss_mb, vacuum
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from studypub import authoring, migrate, outbox
from studypub.db import create_engine, session_factory
from studypub.models import SourceMixin
from studypub.notify import asyncpg_dsn

DB_NAME = "studypub_bench_authoring"
QUESTIONS = 1_000
WARMUP = 200
BLOCK = 50  # transactions per turn of one variant

# 300-char stems, four choices: an ordinary question.
SEED_SQL = """
INSERT INTO questions (id, topic_id, stem, choices, answer, explanation_status, version,
                       created_at, updated_at)
SELECT g, 1, 'Question ' || g || ': ' || repeat(md5(g::text) || ' ', 9),
       json_build_array('Choice A', 'Choice B', 'Choice C', 'Choice D'), 'Choice A',
       'pending', 1, now(), now()
FROM generate_series(1, :rows) AS g
"""

RAW_SELECT = "SELECT id, version FROM questions WHERE id = $1 AND deleted_at IS NULL FOR UPDATE"
RAW_UPDATE = (
    "UPDATE questions SET stem = $1, version = version + 1, updated_at = now() "
    "WHERE id = $2 AND version = $3 RETURNING version"
)
RAW_INSERT = """
INSERT INTO outbox (kind, source_id, source_version, schema_version, payload, payload_hash,
                    deleted, enqueued_at, attempts, available_at)
VALUES ('question', $1, $2, 1, $3::json, $4, false, now(), 0, now()),
       ('explanation', $1, $2, 1, '{}', $5, true, now(), 0, now())
"""

TOMBSTONE_HASH = hashlib.sha256(b"{}").hexdigest()

Transaction = Callable[[int], Awaitable[None]]

_real_enqueue = outbox.enqueue_changed


async def seed(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO topics (id, title, description, version, created_at, updated_at) "
                "VALUES (1, 'Bench', '', 1, now(), now())"
            )
        )
        await conn.execute(text(SEED_SQL), {"rows": QUESTIONS})
    await vacuum(engine)


async def _flush_only(session: AsyncSession, *rows: SourceMixin) -> None:
    await session.flush()


def service_update(engine: AsyncEngine, *, enqueue: bool) -> Transaction:
    """One question update through the service layer, in its own transaction."""
    sessions = session_factory(engine)

    async def transaction(i: int) -> None:
        # The switch is global, but transactions of one variant never overlap the other's.
        outbox.enqueue_changed = _real_enqueue if enqueue else _flush_only
        async with sessions() as session, session.begin():
            await authoring.update_question(
                session, 1 + i % QUESTIONS, stem=f"Question {i}: {'x' * 280}"
            )

    return transaction


def raw_update(conn: asyncpg.Connection, *, enqueue: bool) -> Transaction:
    """The same write in hand-written SQL: the floor under the service layer."""

    async def transaction(i: int) -> None:
        qid = 1 + i % QUESTIONS
        stem = f"Question {i}: {'x' * 280}"
        async with conn.transaction():
            row = await conn.fetchrow(RAW_SELECT, qid)
            version = await conn.fetchval(RAW_UPDATE, stem, qid, row["version"])
            if enqueue:
                payload = json.dumps({"id": qid, "stem": stem}, separators=(",", ":"))
                digest = hashlib.sha256(payload.encode()).hexdigest()
                await conn.execute(RAW_INSERT, qid, version, payload, digest, TOMBSTONE_HASH)

    return transaction


async def timed(transaction: Transaction, count: int, offset: int) -> tuple[float, list[float]]:
    """(transactions per second, latencies in ms) of ``count`` sequential transactions."""
    latencies = []
    start = time.perf_counter()
    for i in range(offset, offset + count):
        t0 = time.perf_counter()
        await transaction(i)
        latencies.append((time.perf_counter() - t0) * 1000)
    return count / (time.perf_counter() - start), latencies


async def concurrent(engine: AsyncEngine, clients: int, count: int, *, enqueue: bool) -> float:
    """Transactions per second of ``clients`` writers, each on its own question."""
    sessions = session_factory(engine)
    outbox.enqueue_changed = _real_enqueue if enqueue else _flush_only

    async def writer(client: int) -> None:
        for i in range(count // clients):
            async with sessions() as session, session.begin():
                await authoring.update_question(session, 1 + client, stem=f"Q {client} {i}")

    start = time.perf_counter()
    await asyncio.gather(*(writer(c) for c in range(clients)))
    return (count // clients * clients) / (time.perf_counter() - start)


def p99(latencies: list[float]) -> float:
    return statistics.quantiles(latencies, n=100)[98]


async def main(transactions: int, rounds: int, clients: int) -> dict[str, Any]:
    url = database_url(DB_NAME)
    await create_database(DB_NAME)
    engine = create_engine(url, pool_size=1, max_overflow=max(0, clients - 1))
    raw = None
    try:
        await migrate.upgrade(engine)
        await seed(engine)
        raw = await asyncpg.connect(asyncpg_dsn(url))
        variants: dict[str, Transaction] = {
            "service, with enqueue": service_update(engine, enqueue=True),
            "service, without enqueue": service_update(engine, enqueue=False),
            "raw SQL, with outbox insert": raw_update(raw, enqueue=True),
            "raw SQL, without": raw_update(raw, enqueue=False),
        }
        for transaction in variants.values():
            await timed(transaction, WARMUP, 0)
        # Small blocks, the variants taking turns: load from other processes, which comes
        # and goes over seconds, then falls on every variant alike.
        seconds = dict.fromkeys(variants, 0.0)
        done = dict.fromkeys(variants, 0)
        latencies: dict[str, list[float]] = {name: [] for name in variants}
        offset = WARMUP
        for r in range(rounds):
            for _ in range(transactions // BLOCK):
                for name, transaction in variants.items():
                    rate, lat = await timed(transaction, BLOCK, offset)
                    offset += BLOCK
                    seconds[name] += BLOCK / rate
                    done[name] += BLOCK
                    latencies[name] += lat
            line = ", ".join(f"{name} {done[name] / seconds[name]:,.0f}" for name in variants)
            print(f"after round {r + 1} (tx/s so far): {line}")
        rates = {name: done[name] / seconds[name] for name in variants}
        async with engine.connect() as conn:
            outbox_rows = (await conn.execute(text("SELECT count(*) FROM outbox"))).scalar_one()

        clients_with = clients_without = None
        if clients > 1:
            # Interleaved as well: turns of BLOCK transactions per client.
            spent = {True: 0.0, False: 0.0}
            for _ in range(rounds * transactions // (BLOCK * clients)):
                for enqueue in (True, False):
                    rate = await concurrent(engine, clients, BLOCK * clients, enqueue=enqueue)
                    spent[enqueue] += BLOCK * clients / rate
            total = rounds * transactions // (BLOCK * clients) * BLOCK * clients
            clients_with, clients_without = total / spent[True], total / spent[False]
    finally:
        outbox.enqueue_changed = _real_enqueue
        if raw is not None:
            await raw.close()
        await engine.dispose()
        await drop_database(DB_NAME)

    with_enqueue = rates["service, with enqueue"]
    without = rates["service, without enqueue"]
    overhead = 1 - with_enqueue / without
    raw_overhead = 1 - rates["raw SQL, with outbox insert"] / rates["raw SQL, without"]
    print()
    print(f"service layer: {with_enqueue:,.0f} tx/s with enqueue, {without:,.0f} without")
    print(f"enqueue overhead {overhead:.1%} of throughput (target <= 35%)")
    print(f"raw SQL: the outbox insert alone costs {raw_overhead:.1%}")
    print(f"outbox rows written: {outbox_rows:,} (2 per update with enqueue or insert)")
    if clients_with is not None and clients_without is not None:
        print(
            f"{clients} concurrent clients: {clients_with:,.0f} tx/s with enqueue, "
            f"{clients_without:,.0f} without ({1 - clients_with / clients_without:.1%})"
        )
    print("interleaved blocks; 2 cores shared with other work may depress figures")
    return {
        "tx_per_s_with_enqueue": round(with_enqueue, 1),
        "tx_per_s_without_enqueue": round(without, 1),
        "overhead": round(overhead, 3),
        "raw_tx_per_s_with_insert": round(rates["raw SQL, with outbox insert"], 1),
        "raw_tx_per_s_without": round(rates["raw SQL, without"], 1),
        "raw_overhead": round(raw_overhead, 3),
        "p99_ms_with_enqueue": round(p99(latencies["service, with enqueue"]), 2),
        "p99_ms_without_enqueue": round(p99(latencies["service, without enqueue"]), 2),
        "clients": clients,
        "clients_tx_per_s_with_enqueue": None if clients_with is None else round(clients_with, 1),
        "clients_tx_per_s_without_enqueue": (
            None if clients_without is None else round(clients_without, 1)
        ),
        "transactions_per_round": transactions,
        "rounds": rounds,
        "peak_rss_mb": peak_rss_mb(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--clients", type=int, default=4)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.transactions, args.rounds, args.clients))))
