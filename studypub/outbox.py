"""Enqueue: add outbox rows to the caller's session; the caller commits.

Callers only say "this row changed" (:func:`enqueue_changed`). Which kinds a source row
feeds, and whether each is a publication or a tombstone, is decided by the projections
alone. Each outbox row carries the source version, so the relay can order the states of one
entity whatever order they arrive in.

Backfill pages (:func:`read_backfill_page`, then :func:`insert_backfill_page`) enqueue
existing source rows of a target in keyset order, ``id > after_id ORDER BY id LIMIT n``,
reading only the projected columns and inserting the page with multi-row statements: this
is a hot path.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any

from sqlalchemy import Dialect, bindparam, insert
from sqlalchemy.ext.asyncio import AsyncSession

from studypub import target_store
from studypub.errors import InvalidInput
from studypub.models import Outbox, SourceMixin, utcnow
from studypub.notify import fire_after_commit, outbox_signal
from studypub.projection import (
    KINDS,
    PROJECTORS,
    SCHEMA_VERSION,
    SHARED,
    TOMBSTONE,
    Payload,
    canonical_json,
    payload_hash,
    scope_of,
)
from studypub.targets import DEFAULT_PAGE, KINDS_OF, Target


def outbox_values(
    kind: str, row: Any, *, schema_version: int = SCHEMA_VERSION, now: datetime | None = None
) -> dict[str, Any]:
    """The outbox row for ``kind`` of source ``row``: a snapshot, or a tombstone if ineligible."""
    payload = PROJECTORS[kind](row)
    return snapshot_values(
        kind=kind,
        source_id=row.id,
        source_version=row.version,
        payload=payload,
        scope=scope_of(kind, row),
        schema_version=schema_version,
        now=now,
    )


def snapshot_values(
    *,
    kind: str,
    source_id: int,
    source_version: int,
    payload: Payload | None,
    scope: str = SHARED,
    schema_version: int = SCHEMA_VERSION,
    now: datetime | None = None,
) -> dict[str, Any]:
    deleted = payload is None
    body = TOMBSTONE if payload is None else payload
    now = now or utcnow()
    return {
        "kind": kind,
        "source_id": source_id,
        "source_version": source_version,
        "schema_version": schema_version,
        "payload": body,
        "payload_hash": payload_hash(body),
        "deleted": deleted,
        "scope": scope,
        "enqueued_at": now,
        "available_at": now,
    }


async def insert_outbox(session: AsyncSession, values: Sequence[dict[str, Any]]) -> None:
    """Insert prepared outbox rows in one statement and wake the relay once this commits."""
    if not values:
        return
    await session.execute(insert(Outbox), list(values))
    fire_after_commit(session, outbox_signal)


async def enqueue_publish(
    session: AsyncSession,
    *,
    kind: str,
    source_id: int,
    source_version: int,
    payload: Payload | None,
    deleted: bool = False,
    scope: str = SHARED,
) -> None:
    """Enqueue one snapshot as given. ``deleted=True`` (or ``payload=None``) is a tombstone."""
    if kind not in PROJECTORS:
        raise InvalidInput(f"unknown kind {kind!r}: choose one of {', '.join(KINDS)}")
    values = snapshot_values(
        kind=kind,
        source_id=source_id,
        source_version=source_version,
        payload=None if deleted else payload,
        scope=scope,
    )
    await insert_outbox(session, [values])


async def enqueue_changed(session: AsyncSession, *rows: SourceMixin) -> None:
    """Say that source ``rows`` changed: enqueue every kind each one feeds.

    Flushes first, so that new rows have their id and updated rows their new version.
    """
    await session.flush()
    now = utcnow()
    values = [outbox_values(kind, row, now=now) for row in rows for kind in KINDS_OF[type(row)]]
    await insert_outbox(session, values)


# ---------------------------------------------------------------- backfill pages

# The page insert: multi-row VALUES statements of up to _INSERT_ROWS outbox rows, compiled once
# per database and row count, then sent with plain positional parameters. SQLAlchemy's own
# executemany path spent about a third of the backfill's CPU on per-row parameter handling;
# this sends the same statements without it (measured by bench/backfill.py). One statement
# per 1,000 rows, not one per row, also runs PostgreSQL's statement trigger (pg_notify) once
# per statement. The payload is bound as its canonical text, already built for the hash.
_INSERT_ROWS = 1_000
_INSERT_COLUMNS = (
    "kind",
    "source_id",
    "source_version",
    "schema_version",
    "payload",
    "payload_hash",
    "deleted",
    "scope",
    "enqueued_at",
    "available_at",
    "attempts",
)
_Processor = Callable[[Any], Any] | None


@lru_cache(maxsize=64)
def _compiled_insert(dialect: Dialect, rows: int) -> tuple[str, list[str], list[_Processor]]:
    """(SQL, column of each parameter of a row, its bind processor) for ``rows`` rows."""
    table = Outbox.__table__
    statement = insert(table).values(  # type: ignore[arg-type]
        [
            {c: bindparam(f"r{i}_{c}", type_=table.c[c].type) for c in _INSERT_COLUMNS}
            for i in range(rows)
        ]
    )
    compiled = statement.compile(dialect=dialect)
    positions = list(compiled.positiontup or ())
    width = len(_INSERT_COLUMNS)
    order = [name.split("_", 1)[1] for name in positions[:width]]
    if positions != [f"r{n // width}_{order[n % width]}" for n in range(rows * width)]:
        raise NotImplementedError(f"{dialect.name}: expected positional parameters, row by row")
    # No processor for the payload: it is bound as the JSON text itself.
    processors: list[_Processor] = [
        None if c == "payload" else table.c[c].type.dialect_impl(dialect).bind_processor(dialect)
        for c in order
    ]
    return compiled.string, order, processors


async def _insert_rows(session: AsyncSession, values: list[dict[str, Any]]) -> None:
    conn = await session.connection()
    for start in range(0, len(values), _INSERT_ROWS):
        chunk = values[start : start + _INSERT_ROWS]
        sql, order, processors = _compiled_insert(conn.dialect, len(chunk))
        columns = list(zip(order, processors, strict=True))
        params: list[Any] = []
        for row in chunk:
            for column, process in columns:
                value = row[column]
                params.append(value if process is None else process(value))
        await conn.exec_driver_sql(sql, tuple(params))


# Projecting yields to the event loop every this many source rows, so that a page read ahead
# (see backfill.py) does not hold up the statements of the page being written.
_YIELD_EVERY = 500


@dataclass(frozen=True, slots=True)
class BackfillPage:
    """One keyset page of source rows, projected into outbox rows and ready to insert."""

    after_id: int
    rows: int  # source rows read; fewer than the limit means this is the last page
    last_id: int
    values: list[dict[str, Any]]


async def read_backfill_page(
    session: AsyncSession,
    target: Target,
    *,
    after_id: int = 0,
    limit: int = DEFAULT_PAGE,
    schema_version: int = SCHEMA_VERSION,
) -> BackfillPage:
    """Read the page of ``target`` after ``after_id`` and project it (no write)."""
    rows = await target_store.read_sources(
        session, target, after_id=after_id, limit=limit, eligible_only=True
    )
    now = utcnow()
    kinds = target.kinds
    values = []
    for n, row in enumerate(rows, 1):
        for kind in kinds:
            payload = PROJECTORS[kind](row)
            text = canonical_json(TOMBSTONE if payload is None else payload)
            values.append(
                {
                    "kind": kind,
                    "source_id": row.id,
                    "source_version": row.version,
                    "schema_version": schema_version,
                    "payload": text,
                    "payload_hash": hashlib.sha256(text.encode("utf-8")).hexdigest(),
                    "deleted": payload is None,
                    "scope": scope_of(kind, row),
                    "enqueued_at": now,
                    "available_at": now,
                    "attempts": 0,
                }
            )
        if n % _YIELD_EVERY == 0:
            await asyncio.sleep(0)
    last_id = rows[-1].id if rows else after_id
    return BackfillPage(after_id=after_id, rows=len(rows), last_id=last_id, values=values)


async def insert_backfill_page(session: AsyncSession, page: BackfillPage) -> None:
    """Insert the outbox rows of ``page`` in the caller's transaction."""
    if page.values:
        await _insert_rows(session, page.values)
        fire_after_commit(session, outbox_signal)
