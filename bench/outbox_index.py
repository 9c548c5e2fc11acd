"""The outbox's entity index (``ix_outbox_entity``): what it does for verify and prune.

PostgreSQL only. Creates ``studypub_bench_outbox_index`` through ``STUDYPUB_BENCH_PG_URL``
with a 1,000,000-row outbox (rows waiting behind a stuck relay: one per question, a few
dead) and 20,000 published tombstones, then measures, with the index and without it (dropped
in the same run, on the same data):

- verify's read of the waiting keys of one page of ids (``read_waiting_keys``, 1,000 ids, at
  20 places across the id range);
- a prune that keeps the tombstones whose entity still has a row waiting
  (``prune_tombstones``, in a transaction rolled back so that each run prunes the same).

The last line is one JSON object: milliseconds with and without the index.

    python bench/outbox_index.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

from benchdb import create_database, database_url, drop_database, vacuum
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import migrate, store, target_store
from studypub.db import create_engine, read_session_factory, session_factory

DB_NAME = "studypub_bench_outbox_index"
PAGE = 1000
PLACES = 20
TOMBSTONES = 20_000

OUTBOX_SQL = """
INSERT INTO outbox (kind, source_id, source_version, schema_version, payload, payload_hash,
                    deleted, scope, enqueued_at, attempts, available_at, dead_at)
SELECT 'question', g, 2, 1, json_build_object('id', g, 'stem', 'Question ' || g),
       md5(g::text) || md5(g::text), false, '', now(), 0, now(),
       CASE WHEN g % 1000 = 0 THEN now() END
FROM generate_series(1, :n) AS g
"""

# Tombstones of entities spread over the id range: one in ten still has a row waiting.
TOMBSTONES_SQL = """
INSERT INTO published (kind, id, version, schema_version, latest_version,
                       latest_schema_version, payload, hash, deleted, seq, published_at)
SELECT 'question', CASE WHEN g % 10 = 0 THEN g * 7 ELSE :n + g END, 1, 1, 1, 1, 'null',
       md5(g::text) || md5(g::text), true, g, now() - interval '2 days'
FROM generate_series(1, :tombstones) AS g
"""


async def seed(engine: AsyncEngine, rows: int) -> None:
    await migrate.upgrade(engine)
    async with engine.begin() as conn:
        await conn.execute(text(OUTBOX_SQL), {"n": rows})
        await conn.execute(text(TOMBSTONES_SQL), {"n": rows, "tombstones": TOMBSTONES})
        await conn.execute(text("UPDATE feed_head SET last_seq = :t"), {"t": TOMBSTONES})
    await vacuum(engine)


async def waiting_keys_ms(engine: AsyncEngine, rows: int) -> float:
    """The median time of one verify page's waiting-keys read."""
    times = []
    for place in range(PLACES):
        after = place * (rows // PLACES)
        async with read_session_factory(engine)() as session:
            started = time.perf_counter()
            keys = await target_store.read_waiting_keys(
                session, ["question"], after_id=after, up_to=after + PAGE
            )
            times.append((time.perf_counter() - started) * 1000)
        assert len(keys) >= PAGE - 2, len(keys)
    return statistics.median(times)


async def prune_ms(engine: AsyncEngine) -> tuple[float, int]:
    """One prune of every tombstone (rolled back): its time, and how many it deleted."""
    async with session_factory(engine)() as session:
        await session.begin()
        started = time.perf_counter()
        deleted, _floor = await store.prune_tombstones(
            session, published_before=None, up_to_seq=None
        )
        seconds = time.perf_counter() - started
        await session.rollback()
    return seconds * 1000, deleted


async def measure(engine: AsyncEngine, rows: int, label: str) -> dict[str, Any]:
    await waiting_keys_ms(engine, rows)  # warm the cache
    verify = await waiting_keys_ms(engine, rows)
    prune, deleted = min([await prune_ms(engine) for _ in range(3)])
    print(
        f"{label:>13}: verify page {verify:8.1f} ms (x {rows // PAGE} pages: "
        f"{verify * rows / PAGE / 1000:6.1f} s), prune {prune:8.1f} ms ({deleted} tombstones)",
        flush=True,
    )
    return {"verify_page_ms": round(verify, 2), "prune_ms": round(prune, 1)}


async def main(rows: int) -> dict[str, Any]:
    await create_database(DB_NAME)
    engine = create_engine(database_url(DB_NAME))
    try:
        await seed(engine, rows)
        indexed = await measure(engine, rows, "with index")
        async with engine.begin() as conn:
            await conn.execute(text("DROP INDEX ix_outbox_entity"))
        await vacuum(engine, "ANALYZE outbox")
        bare = await measure(engine, rows, "without index")
    finally:
        await engine.dispose()
        await drop_database(DB_NAME)
    return {"outbox_rows": rows, "with_index": indexed, "without_index": bare}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    print(json.dumps(asyncio.run(main(parser.parse_args().rows))))
