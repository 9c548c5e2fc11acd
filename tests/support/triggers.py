"""Triggers added to a test database: ``seq_audit`` and ``poison_rule`` drop theirs afterwards
(the session's PostgreSQL database is shared); ``install`` keeps them, in a database of the
test's own.

The seq audit records every seq a commit hands out, so that "gap-free" is checked on what
was committed, not on what survived compaction; the poison rule makes the database refuse one
payload, a genuine apply failure without mocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

AUDIT_DDL = {
    "postgresql": (
        [
            "CREATE TABLE seq_audit (seq bigint PRIMARY KEY, kind text, id bigint, version int)",
            """CREATE FUNCTION seq_audit_fn() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.seq IS NOT NULL AND (TG_OP = 'INSERT' OR NEW.seq IS DISTINCT FROM OLD.seq)
                THEN INSERT INTO seq_audit VALUES (NEW.seq, NEW.kind, NEW.id, NEW.version);
                END IF;
                RETURN NULL;
            END $$""",
            "CREATE TRIGGER seq_audit_tr AFTER INSERT OR UPDATE ON published"
            " FOR EACH ROW EXECUTE FUNCTION seq_audit_fn()",
        ],
        [
            "DROP TRIGGER IF EXISTS seq_audit_tr ON published",
            "DROP FUNCTION IF EXISTS seq_audit_fn()",
            "DROP TABLE IF EXISTS seq_audit",
        ],
    ),
    "sqlite": (
        [
            "CREATE TABLE seq_audit"
            " (seq INTEGER PRIMARY KEY, kind TEXT, id INTEGER, version INTEGER)",
            "CREATE TRIGGER seq_audit_ins AFTER INSERT ON published WHEN NEW.seq IS NOT NULL"
            " BEGIN INSERT INTO seq_audit VALUES (NEW.seq, NEW.kind, NEW.id, NEW.version); END",
            "CREATE TRIGGER seq_audit_upd AFTER UPDATE ON published"
            " WHEN NEW.seq IS NOT NULL AND NEW.seq IS NOT OLD.seq"
            " BEGIN INSERT INTO seq_audit VALUES (NEW.seq, NEW.kind, NEW.id, NEW.version); END",
        ],
        [
            "DROP TRIGGER IF EXISTS seq_audit_ins",
            "DROP TRIGGER IF EXISTS seq_audit_upd",
            "DROP TABLE IF EXISTS seq_audit",
        ],
    ),
}

POISON_TITLE = "poison"
POISON_ERROR = "payload refused by a database rule"
_POISON = {
    "postgresql": (
        [
            f"""CREATE FUNCTION poison_fn() RETURNS trigger LANGUAGE plpgsql AS $$
            BEGIN
                IF NEW.payload->>'title' = '{POISON_TITLE}'
                THEN RAISE EXCEPTION '{POISON_ERROR}'; END IF;
                RETURN NEW;
            END $$""",
            "CREATE TRIGGER poison_tr BEFORE INSERT OR UPDATE ON published"
            " FOR EACH ROW EXECUTE FUNCTION poison_fn()",
        ],
        ["DROP TRIGGER IF EXISTS poison_tr ON published", "DROP FUNCTION IF EXISTS poison_fn()"],
    ),
    "sqlite": (
        [
            f"CREATE TRIGGER poison_{op.lower()} BEFORE {op} ON published"
            f" WHEN json_extract(NEW.payload, '$.title') = '{POISON_TITLE}'"
            f" BEGIN SELECT RAISE(ABORT, '{POISON_ERROR}'); END"
            for op in ("INSERT", "UPDATE")
        ],
        ["DROP TRIGGER IF EXISTS poison_insert", "DROP TRIGGER IF EXISTS poison_update"],
    ),
}


async def install(engine: AsyncEngine, ddl: dict[str, tuple[list[str], list[str]]]) -> None:
    """Create the triggers of ``ddl`` (dropped first if they are there), for good."""
    create, drop = ddl[engine.dialect.name]
    async with engine.begin() as conn:
        for statement in drop + create:
            await conn.execute(text(statement))


@asynccontextmanager
async def _installed(
    engine: AsyncEngine, ddl: dict[str, tuple[list[str], list[str]]]
) -> AsyncIterator[None]:
    await install(engine, ddl)
    try:
        yield
    finally:
        async with engine.begin() as conn:
            for statement in ddl[engine.dialect.name][1]:
                await conn.execute(text(statement))


def seq_audit(engine: AsyncEngine) -> Any:
    """Record every seq committed into ``published`` (context manager)."""
    return _installed(engine, AUDIT_DDL)


def poison_rule(engine: AsyncEngine) -> Any:
    """Make the database refuse published payloads titled ``POISON_TITLE`` (context manager)."""
    return _installed(engine, _POISON)


async def audited_seqs(engine: AsyncEngine) -> list[int]:
    """Every seq committed so far, in order."""
    return [seq for seq, _ in await audited_entries(engine)]


async def audited_entries(engine: AsyncEngine) -> list[tuple[int, tuple[str, int, int]]]:
    """(seq, (kind, id, version)) of every feed entry committed so far, in seq order."""
    async with engine.connect() as conn:
        rows = await conn.execute(text("SELECT seq, kind, id, version FROM seq_audit ORDER BY seq"))
        return [(r[0], (r[1], r[2], r[3])) for r in rows]
