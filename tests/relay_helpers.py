"""Helpers of the relay tests: authoring writes, expected and published state, audit triggers.

The audit and poison triggers are real database objects added to the test database (and
dropped afterwards): the seq audit records every seq a commit hands out, so that "gap-free"
is checked on what was committed, not on what survived compaction; the poison trigger makes
the database refuse one payload, a genuine apply failure without mocks.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import feed
from studypub.db import read_session_factory
from studypub.models import (
    SOURCE_MODELS,
    CardProgress,
    MemoCard,
    Outbox,
    Published,
    Question,
    Topic,
    utcnow,
)
from studypub.outbox import enqueue_changed, outbox_values
from studypub.targets import KINDS_OF

State = dict[tuple[str, int], tuple[str, bool, int]]

# For behaviour only PostgreSQL has (LISTEN, killed backends, truly concurrent writers).
PG_ONLY = pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)

# ---------------------------------------------------------------- authoring writes


async def create_topics(
    sessions: async_sessionmaker[AsyncSession], titles: Sequence[str]
) -> list[int]:
    async with sessions() as s:
        topics = [Topic(title=t, description="") for t in titles]
        s.add_all(topics)
        await enqueue_changed(s, *topics)
        await s.commit()
        return [t.id for t in topics]


async def update_topic(
    sessions: async_sessionmaker[AsyncSession], topic_id: int, **changes: Any
) -> int:
    """Apply ``changes`` to a topic and enqueue it; returns its new version."""
    async with sessions() as s:
        topic = await s.get_one(Topic, topic_id)
        for name, value in changes.items():
            setattr(topic, name, value)
        await enqueue_changed(s, topic)
        await s.commit()
        return topic.version


async def delete_topic(sessions: async_sessionmaker[AsyncSession], topic_id: int) -> int:
    return await update_topic(sessions, topic_id, deleted_at=utcnow())


async def create_content(sessions: async_sessionmaker[AsyncSession], n: int) -> None:
    """``n`` topics, each with a question (ready explanation), an approved card and progress."""
    async with sessions() as s:
        topics = [Topic(title=f"topic {i}", description="d") for i in range(n)]
        s.add_all(topics)
        await s.flush()
        questions = [
            Question(
                topic_id=t.id,
                stem=f"stem {t.id}",
                choices=["a", "b"],
                answer="a",
                explanation=f"because {t.id}",
                explanation_status="ready",
            )
            for t in topics
        ]
        s.add_all(questions)
        await s.flush()
        cards = [
            MemoCard(topic_id=q.topic_id, question_id=q.id, front="f", back="b", needs_review=False)
            for q in questions
        ]
        s.add_all(cards)
        await s.flush()
        progress = [CardProgress(card_id=c.id, learner="ann") for c in cards]
        s.add_all(progress)
        await enqueue_changed(s, *topics, *questions, *cards, *progress)
        await s.commit()


# ---------------------------------------------------------------- state


async def expected_state(engine: AsyncEngine) -> State:
    """(hash, deleted, version) per (kind, id): the projection of every source row now."""
    state: State = {}
    async with engine.connect() as conn:
        for model in SOURCE_MODELS:
            table = model.__table__  # type: ignore[attr-defined]
            for row in (await conn.execute(select(table))).all():
                for kind in KINDS_OF[model]:
                    values = outbox_values(kind, row)
                    state[(kind, row.id)] = (
                        values["payload_hash"],
                        values["deleted"],
                        row.version,
                    )
    return state


async def published_state(engine: AsyncEngine) -> State:
    """(hash, deleted, the newest source version the relay has seen) per published key."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                Published.kind,
                Published.id,
                Published.hash,
                Published.deleted,
                Published.latest_version.label("version"),
            )
        )
        return {(r.kind, r.id): (r.hash, bool(r.deleted), r.version) for r in rows}


async def feed_seqs(engine: AsyncEngine) -> list[int]:
    """The seqs present in the published store (compacted: superseded ones are gone)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Published.seq).where(Published.seq.is_not(None)).order_by(Published.seq)
        )
        return [r.seq for r in rows]


async def outbox_count(engine: AsyncEngine, *, dead: bool | None = None) -> int:
    query = select(func.count()).select_from(Outbox)
    if dead is True:
        query = query.where(Outbox.dead_at.is_not(None))
    elif dead is False:
        query = query.where(Outbox.dead_at.is_(None))
    async with engine.connect() as conn:
        return int((await conn.execute(query)).scalar_one())


async def head_of(engine: AsyncEngine) -> feed.Head:
    async with read_session_factory(engine)() as s:
        return await feed.head(s)


class Replica:
    """A consumer: follows the feed with ``read_feed`` and applies entries by version."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.reads = read_session_factory(engine)
        self.cursor = feed.START
        self.state: State = {}
        self.versions: dict[tuple[str, int], tuple[int, int]] = {}
        self.seen_seqs: list[int] = []

    async def poll(self, limit: int = 100) -> int:
        """Read pages until the end; returns how many entries arrived."""
        got = 0
        while True:
            async with self.reads() as s:
                page = await feed.read_feed(s, self.cursor, limit)
            for e in page.entries:
                key = (e["kind"], e["id"])
                order = (e["version"], e["schema_version"])
                self.seen_seqs.append(e["seq"])
                if key not in self.versions or order >= self.versions[key]:
                    self.versions[key] = order
                    self.state[key] = (e["hash"], e["deleted"], e["version"])
            self.cursor = page.last_seq
            got += len(page.entries)
            if not page.entries or page.pending == 0:
                return got


# ---------------------------------------------------------------- audit and poison triggers

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
    create, drop = ddl[engine.dialect.name]
    async with engine.begin() as conn:
        for statement in drop + create:
            await conn.execute(text(statement))


@asynccontextmanager
async def _installed(
    engine: AsyncEngine, ddl: dict[str, tuple[list[str], list[str]]]
) -> AsyncIterator[None]:
    create, drop = ddl[engine.dialect.name]
    async with engine.begin() as conn:
        for statement in drop + create:
            await conn.execute(text(statement))
    try:
        yield
    finally:
        async with engine.begin() as conn:
            for statement in drop:
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


async def visible_state(engine: AsyncEngine) -> State:
    """The published rows a consumer can see (those with a seq)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                Published.kind, Published.id, Published.hash, Published.deleted, Published.version
            ).where(Published.seq.is_not(None))
        )
        return {(r.kind, r.id): (r.hash, bool(r.deleted), r.version) for r in rows}
