"""What ``synchronous=FULL`` costs the embedded SQLite database, against ``NORMAL``.

studypub's own SQLite file runs with ``PRAGMA synchronous=FULL``: every commit is on disk
before a consumer can read it (``NORMAL`` in WAL mode may lose the last commits on power
loss, after consumers read them; the next writes would reuse their seqs). This measures the
price, in the same run, on the same file, with two engines that differ only in that pragma
(it is a per-connection setting), taking turns in small blocks:

1. authoring: a question update through the service layer (read ``FOR UPDATE``, update,
   enqueue the question and its explanation, commit), sequential: one commit per write;
2. relay: draining outbox rows into the feed (one commit per batch of 500).

    python bench/sqlite_durability.py [--transactions 1000] [--rows 20000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

from benchdb import peak_rss_mb
from sqlalchemy import insert, select, text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import authoring, migrate
from studypub.db import create_engine, session_factory
from studypub.models import Outbox, Topic, utcnow
from studypub.outbox import outbox_values
from studypub.relay import Relay

QUESTIONS = 200
BLOCK = 50  # transactions per turn of one setting
SETTINGS = ("NORMAL", "FULL")


async def seed(engine: AsyncEngine) -> None:
    async with session_factory(engine)() as session, session.begin():
        topic = await authoring.create_topic(session, title="Bench")
        for i in range(QUESTIONS):
            await authoring.create_question(
                session, topic_id=topic.id, stem=f"Question {i}?", choices=["a", "b"], answer="a"
            )
    await Relay(engine, listen=False).run_once()


async def updates(engine: AsyncEngine, count: int, offset: int) -> float:
    """Seconds for ``count`` sequential question updates, each its own transaction."""
    sessions = session_factory(engine)
    start = time.perf_counter()
    for i in range(offset, offset + count):
        async with sessions() as session, session.begin():
            await authoring.update_question(session, 1 + i % QUESTIONS, stem=f"Q {i} {'x' * 280}")
    return time.perf_counter() - start


async def fill(engine: AsyncEngine, rows: int, round_: int) -> None:
    """``rows`` outbox rows of topic updates (new payloads, so every one is applied)."""
    now = utcnow()
    async with engine.begin() as conn:
        topics = (await conn.execute(select(Topic.__table__))).all()
        values = [
            outbox_values("topic", topic, now=now)
            | {"payload": {"id": topic.id, "title": f"{topic.title} {round_}.{n}"}}
            | {"source_version": topic.version + round_ * rows + n}
            for n in range(rows // len(topics))
            for topic in topics
        ]
        await conn.execute(insert(Outbox), values)


async def drain(engine: AsyncEngine) -> tuple[float, int]:
    start = time.perf_counter()
    outcomes = await Relay(engine, listen=False).run_once()
    return time.perf_counter() - start, outcomes.claimed


async def main(transactions: int, rows: int, rounds: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite+aiosqlite:///{Path(tmp) / 'bench.db'}"
        engines = {s: create_engine(url, sqlite_synchronous=s) for s in SETTINGS}
        try:
            await migrate.upgrade(engines["FULL"])
            await seed(engines["FULL"])
            async with engines["FULL"].begin() as conn:  # 100 topics for the relay rows
                await conn.execute(
                    text(
                        "INSERT INTO topics (title, description, version, created_at, updated_at)"
                        " SELECT 'topic ' || value, '', 1, datetime('now'), datetime('now')"
                        " FROM json_each(json_array(" + ",".join(map(str, range(100))) + "))"
                    )
                )
            for engine in engines.values():  # warm-up
                await updates(engine, BLOCK, 0)
                await drain(engine)
            seconds = dict.fromkeys(SETTINGS, 0.0)
            done = dict.fromkeys(SETTINGS, 0)
            relay_seconds = dict.fromkeys(SETTINGS, 0.0)
            relayed = dict.fromkeys(SETTINGS, 0)
            offset = BLOCK
            for r in range(rounds):
                for _ in range(transactions // BLOCK):
                    for setting, engine in engines.items():
                        seconds[setting] += await updates(engine, BLOCK, offset)
                        done[setting] += BLOCK
                        offset += BLOCK
                for n, (setting, engine) in enumerate(engines.items()):
                    await fill(engine, rows, r * len(SETTINGS) + n + 1)
                    spent, count = await drain(engine)
                    relay_seconds[setting] += spent
                    relayed[setting] += count
                line = ", ".join(
                    f"{s}: {done[s] / seconds[s]:,.0f} tx/s, "
                    f"{relayed[s] / relay_seconds[s]:,.0f} events/s"
                    for s in SETTINGS
                )
                print(f"after round {r + 1}: {line}")
        finally:
            for engine in engines.values():
                await engine.dispose()

    tx = {s: done[s] / seconds[s] for s in SETTINGS}
    events = {s: relayed[s] / relay_seconds[s] for s in SETTINGS}
    tx_cost = 1 - tx["FULL"] / tx["NORMAL"]
    relay_cost = 1 - events["FULL"] / events["NORMAL"]
    print()
    print(f"authoring: {tx['FULL']:,.0f} tx/s FULL, {tx['NORMAL']:,.0f} NORMAL ({tx_cost:.1%})")
    print(f"relay: {events['FULL']:,.0f} events/s FULL, {events['NORMAL']:,.0f} NORMAL")
    print(f"FULL costs {relay_cost:.1%} of the relay's throughput")
    return {
        "authoring_tx_per_s_full": round(tx["FULL"], 1),
        "authoring_tx_per_s_normal": round(tx["NORMAL"], 1),
        "authoring_cost": round(tx_cost, 3),
        "relay_events_per_s_full": round(events["FULL"]),
        "relay_events_per_s_normal": round(events["NORMAL"]),
        "relay_cost": round(relay_cost, 3),
        "transactions_per_round": transactions,
        "relay_rows_per_round": rows,
        "rounds": rounds,
        "peak_rss_mb": peak_rss_mb(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--transactions", type=int, default=1_000)
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.transactions, args.rows, args.rounds))))
