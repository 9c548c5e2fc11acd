"""Backfill throughput on PostgreSQL against the raw-SQL limit, on the same data in one run.

200,000 questions (half with a ready explanation, realistic text sizes) are backfilled twice:

1. ``backfill.run_backfill(questions)``: the product path (Python projections, one
   transaction per page with its checkpoint);
2. the raw-SQL limit: ``INSERT INTO outbox (...) SELECT ...`` in keyset pages of the same
   size, building the same payloads with ``json_build_object`` and the same hashes with
   ``encode(sha256(convert_to(canonical, 'UTF8')), 'hex')``.

The outbox is truncated before each, the two outboxes are compared on a sample (same
hashes), so the limit does the same work, and both run in interleaved rounds (median
reported) so that other work on the machine weighs on both alike. Uses
``STUDYPUB_BENCH_PG_URL`` (an admin URL) to create and drop its own database
``studypub_bench_backfill``.

    python bench/backfill.py [--rows 200000] [--page 5000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time

from benchdb import create_database, database_url, drop_database, peak_rss_mb, vacuum
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import backfill, migrate
from studypub.db import create_engine
from studypub.targets import DEFAULT_PAGE, QUESTIONS

DB_NAME = "studypub_bench_backfill"

# ~300-char stems, four ~40-char choices, ~1,200-char explanations on every other row.
SEED_SQL = """
INSERT INTO questions (id, topic_id, stem, choices, answer, explanation, explanation_status,
                       version, created_at, updated_at)
SELECT g, 1 + g % 50,
       'Question ' || g || ': ' || repeat(md5(g::text) || ' ', 9),
       json_build_array('Choice A ' || md5((g + 1)::text), 'Choice B ' || md5((g + 2)::text),
                        'Choice C ' || md5((g + 3)::text), 'Choice D ' || md5((g + 4)::text)),
       'Choice A ' || md5((g + 1)::text),
       CASE WHEN g % 2 = 0 THEN 'Because ' || repeat(md5((g * 7)::text) || ' ', 36) END,
       CASE WHEN g % 2 = 0 THEN 'ready' ELSE 'pending' END,
       1, now(), now()
FROM generate_series(1, :rows) AS g
"""

# One keyset page: the question and explanation rows of up to :page questions in one
# statement. The canonical text (sorted keys, no spaces) is spelled out so that the hash
# equals projection.payload_hash of the same payload.
RAW_PAGE_SQL = """
WITH page AS (
    SELECT id, version, topic_id, stem, choices, answer, explanation, explanation_status,
           (SELECT '[' || coalesce(string_agg(to_json(c)::text, ',' ORDER BY n), '') || ']'
              FROM json_array_elements_text(choices) WITH ORDINALITY AS e(c, n)) AS choices_c
    FROM questions
    WHERE deleted_at IS NULL AND id > :after_id
    ORDER BY id
    LIMIT :page
), snapshot AS (
    SELECT 'question' AS kind, id, version, false AS deleted,
           json_build_object('id', id, 'topic_id', topic_id, 'stem', stem,
                             'choices', choices, 'answer', answer) AS payload,
           '{"answer":' || to_json(answer)::text || ',"choices":' || choices_c
             || ',"id":' || id || ',"stem":' || to_json(stem)::text
             || ',"topic_id":' || topic_id || '}' AS canonical
    FROM page
    UNION ALL
    SELECT 'explanation', id, version, explanation_status <> 'ready',
           CASE WHEN explanation_status = 'ready'
                THEN json_build_object('id', id, 'question_id', id, 'body', explanation)
                ELSE '{}'::json END,
           CASE WHEN explanation_status = 'ready'
                THEN '{"body":' || to_json(explanation)::text || ',"id":' || id
                     || ',"question_id":' || id || '}'
                ELSE '{}' END
    FROM page
), inserted AS (
    INSERT INTO outbox (kind, source_id, source_version, schema_version, payload,
                        payload_hash, deleted, enqueued_at, attempts, available_at)
    SELECT kind, id, version, :schema_version, payload,
           encode(sha256(convert_to(canonical, 'UTF8')), 'hex'), deleted, now(), 0, now()
    FROM snapshot
    RETURNING 1
)
SELECT (SELECT count(*) FROM page), (SELECT max(id) FROM page), (SELECT count(*) FROM inserted)
"""


async def seed(engine: AsyncEngine, rows: int) -> None:
    async with engine.begin() as conn:
        await conn.execute(
            text(
                "INSERT INTO topics (id, title, description, version, created_at, updated_at) "
                "SELECT g, 'Topic ' || g, '', 1, now(), now() FROM generate_series(1, 50) g"
            )
        )
        await conn.execute(text(SEED_SQL), {"rows": rows})
    await vacuum(engine, "VACUUM ANALYZE questions")


async def truncate_outbox(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("TRUNCATE outbox RESTART IDENTITY"))
    await vacuum(engine, "VACUUM outbox")


async def sample_hashes(engine: AsyncEngine) -> dict[tuple[str, int], str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT kind, source_id, payload_hash FROM outbox WHERE source_id % 997 = 0")
        )
        return {(r.kind, r.source_id): r.payload_hash for r in rows}


async def raw_limit(engine: AsyncEngine, page: int) -> tuple[int, int]:
    """Keyset pages of INSERT ... SELECT, one transaction each; (source rows, outbox rows)."""
    after_id, rows, outbox_rows = 0, 0, 0
    while True:
        async with engine.begin() as conn:
            count, last_id, inserted = (
                await conn.execute(
                    text(RAW_PAGE_SQL),
                    {"after_id": after_id, "page": page, "schema_version": 1},
                )
            ).one()
        rows += count
        outbox_rows += inserted
        if count < page:
            return rows, outbox_rows
        after_id = last_id


async def main(rows: int, page: int, rounds: int) -> dict[str, float | int]:
    url = database_url(DB_NAME)
    await create_database(DB_NAME)
    engine = create_engine(url)
    try:
        await migrate.upgrade(engine)
        t0 = time.perf_counter()
        await seed(engine, rows)
        print(f"seeded {rows:,} questions in {time.perf_counter() - t0:.1f} s")

        product_times, raw_times = [], []
        for n in range(1, rounds + 1):  # interleaved rounds: a load spike hits both sides
            await truncate_outbox(engine)
            t0 = time.perf_counter()
            (summary,) = await backfill.run_backfill(engine, [QUESTIONS], page=page)
            product_times.append(time.perf_counter() - t0)
            product_hashes = await sample_hashes(engine)
            print(
                f"round {n}: backfill.run_backfill: {summary.rows:,} rows "
                f"({summary.outbox_rows:,} outbox rows) in {product_times[-1]:.2f} s "
                f"= {summary.rows / product_times[-1]:,.0f} rows/s"
            )

            await truncate_outbox(engine)
            t0 = time.perf_counter()
            raw_rows, raw_outbox = await raw_limit(engine, page)
            raw_times.append(time.perf_counter() - t0)
            raw_hashes = await sample_hashes(engine)
            print(
                f"round {n}: raw INSERT ... SELECT: {raw_rows:,} rows ({raw_outbox:,} outbox "
                f"rows) in {raw_times[-1]:.2f} s = {raw_rows / raw_times[-1]:,.0f} rows/s"
            )
            if raw_rows != summary.rows or raw_hashes != product_hashes:
                raise SystemExit("the raw-SQL limit did not produce the same outbox")
        print(f"same rows and same payload hashes on a {len(raw_hashes):,}-row sample")
    finally:
        await engine.dispose()
        await drop_database(DB_NAME)

    product_s, raw_s = statistics.median(product_times), statistics.median(raw_times)
    rows_per_s = summary.rows / product_s
    raw_per_s = raw_rows / raw_s
    ratio = rows_per_s / raw_per_s
    print(
        f"median of {rounds}: {rows_per_s:,.0f} rows/s against the raw-SQL limit's "
        f"{raw_per_s:,.0f} rows/s: ratio {ratio:.2f} (target >= 0.5); page {page:,}. "
        "Other work on the machine may depress these figures."
    )
    return {
        "rows_per_s": round(rows_per_s, 1),
        "raw_limit_rows_per_s": round(raw_per_s, 1),
        "ratio": round(ratio, 3),
        "rows": summary.rows,
        "outbox_rows": summary.outbox_rows,
        "page": page,
        "rounds": rounds,
        "seconds": round(product_s, 2),
        "raw_limit_seconds": round(raw_s, 2),
        "peak_rss_mb": peak_rss_mb(),
    }


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--page", type=int, default=DEFAULT_PAGE)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(json.dumps(asyncio.run(main(args.rows, args.page, args.rounds))))
