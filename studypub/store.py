"""Every query the relay and the feed run; the one seam (with ``db.py``) where PostgreSQL and
SQLite differ. (Backfill's and verify's queries, over a source table, are in
``target_store.py``; an operator's queries over dead outbox rows are in ``dead.py``.)

Callers call verb-first functions and never build SQL. The statements whose text differs
between the databases, the relay's apply transaction, are whole in ``sql/postgresql.sql`` and
``sql/sqlite.sql``; the rest is SQLAlchemy Core. Hot paths are set-based: a relay batch is a
handful of statements whatever its size, and a feed page is one indexed range scan on
``published.seq``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Select,
    Text,
    TextClause,
    case,
    cast,
    delete,
    func,
    literal,
    select,
    type_coerce,
    union_all,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from studypub import checksums, sql
from studypub.db import dialect_of
from studypub.errors import SchemaNotMigrated
from studypub.models import FeedChecksum, FeedHead, Outbox, Published, UTCDateTime
from studypub.notify import (
    FEED_CHANNEL,
    OUTBOX_CHANNEL,
    feed_signal,
    fire_after_commit,
    outbox_signal,
)
from studypub.projection import KINDS, SHARED

_KINDS = list(KINDS)  # bound as one array (PostgreSQL) or JSON text (SQLite)
PG = "postgresql"


def _is_pg(session: AsyncSession) -> bool:
    return dialect_of(session) == PG


# ---------------------------------------------------------------- feed head


@dataclass(frozen=True, slots=True)
class Head:
    """The feed's counter row: its ``epoch``, the highest ``seq`` given, and the ``floor``.

    ``floor``: every seq <= floor may be gone (pruned tombstones); a consumer whose cursor is
    below the floor may have missed a deletion and must start again from 0.
    """

    epoch: str
    last_seq: int
    floor: int


async def read_head(session: AsyncSession) -> Head:
    row = (
        await session.execute(
            select(FeedHead.epoch, FeedHead.last_seq, FeedHead.floor).where(FeedHead.id == 1)
        )
    ).one_or_none()
    if row is None:
        raise SchemaNotMigrated("the feed_head row is missing: the database was not migrated")
    return Head(epoch=row.epoch, last_seq=row.last_seq, floor=row.floor)


async def set_epoch(session: AsyncSession, epoch: str) -> None:
    """Give the feed a new epoch (the caller commits)."""
    await session.execute(update(FeedHead).where(FeedHead.id == 1).values(epoch=epoch))
    await notify_feed(session)


async def notify_feed(session: AsyncSession) -> None:
    """Wake the feed tails (every server process's) when this transaction commits: the head
    changed in a way they must see at once (a new epoch, a higher floor)."""
    if _is_pg(session):
        await session.execute(select(func.pg_notify(FEED_CHANNEL, "")))
    fire_after_commit(session, feed_signal)


async def notify_relay(session: AsyncSession) -> None:
    """Wake the relays when this transaction commits: outbox rows became due by an update
    (dead rows replayed), which the enqueue trigger's NOTIFY, on inserts only, does not see."""
    if _is_pg(session):
        await session.execute(select(func.pg_notify(OUTBOX_CHANNEL, "")))
    fire_after_commit(session, outbox_signal)


# ---------------------------------------------------------------- feed reads

_published = Published.__table__

_FEED_COLUMNS = (
    _published.c.seq,
    _published.c.kind,
    _published.c.id,
    _published.c.version,
    _published.c.schema_version,
    _published.c.deleted,
    _published.c.hash,
    _published.c.payload,
    _published.c.published_at,
    _published.c.scope,  # not part of an entry: who may see it (the tail filters with it)
)


def _feed_raw_columns(session: AsyncSession) -> tuple[Any, ...]:
    """The feed columns with the payload as stored JSON text and ``published_at`` already
    spelled as :func:`studypub.projection.iso_utc` does: the HTTP feed copies both verbatim
    (parsing and re-encoding them was most of a bootstrap's cost)."""
    published_at: ColumnElement[Any]
    if _is_pg(session):
        published_at = func.to_char(
            func.timezone("UTC", _published.c.published_at), 'YYYY-MM-DD"T"HH24:MI:SS.US"Z"'
        )
    else:  # SQLite stores UTC as "YYYY-MM-DD HH:MM:SS.ffffff" (microseconds always present)
        published_at = func.replace(_published.c.published_at, " ", "T").concat("Z")
    return tuple(
        cast(c, Text).label("payload")
        if c.name == "payload"
        else type_coerce(published_at, Text).label("published_at")
        if c.name == "published_at"
        else c
        for c in _FEED_COLUMNS
    )


async def read_entries(
    session: AsyncSession,
    *,
    after_seq: int,
    limit: int,
    kinds: Sequence[str] | None,
    raw_payload: bool = False,
    scope: str | None = None,
) -> Sequence[Any]:
    """Published rows with ``seq > after_seq`` in seq order: a range scan of the seq index.

    Rows with a NULL seq (silent tombstones) never match ``seq > n``. ``raw_payload``: the
    payload as its stored JSON text and ``published_at`` as ISO text (see
    :func:`_feed_raw_columns`). ``scope``: only the shared rows and that learner's, in the
    same seq order (see :func:`_in_scope`).
    """
    columns = _feed_raw_columns(session) if raw_payload else _FEED_COLUMNS

    def after(query: Select[Any]) -> Select[Any]:
        query = query.where(_published.c.seq > after_seq)
        if kinds is not None:
            query = query.where(_published.c.kind.in_(kinds))
        return query.order_by(_published.c.seq).limit(limit)

    query = _in_scope(select(*columns), after, scope, "seq", limit)
    rows: Sequence[Any] = (await session.execute(query)).all()
    return rows


def _in_scope(
    query: Select[Any],
    after: Callable[[Select[Any]], Select[Any]],
    scope: str | None,
    order: str | None,
    limit: int,
) -> Select[Any]:
    """``after(query)``, or for a scope, the rows of two ``after`` reads merged: the shared
    rows and the learner's, each a range scan of the (scope, seq) index in seq order (one
    scan filtered by "shared or mine" would also read every other learner's rows)."""
    if scope is None:
        return after(query)
    # Each branch as a subquery: SQLite refuses ORDER BY and LIMIT inside a compound select.
    branches = [
        select(after(query.where(_published.c.scope == which)).subquery())
        for which in (SHARED, scope)
    ]
    both = union_all(*branches).subquery()
    merged = select(both)
    return merged.order_by(both.c[order]).limit(limit) if order else merged


async def read_entry(session: AsyncSession, *, kind: str, id: int) -> Any | None:
    """The feed entry of one (kind, id), tombstones included, with its ``scope``; None if
    never published."""
    query = select(*_FEED_COLUMNS).where(_published.c.kind == kind, _published.c.id == id)
    return (await session.execute(query)).one_or_none()


async def count_entries(
    session: AsyncSession,
    *,
    after_seq: int,
    kinds: Sequence[str] | None,
    cap: int,
    scope: str | None = None,
) -> int:
    """How many feed entries have ``seq > after_seq`` (in ``scope``, if given), counted up to
    ``cap``: the cost of the count is bounded by the cap, never by the size of the feed."""

    def after(query: Select[Any]) -> Select[Any]:
        query = query.where(_published.c.seq > after_seq)
        if kinds is not None:
            query = query.where(_published.c.kind.in_(kinds))
        return query.limit(cap)

    following = _in_scope(select(_published.c.seq), after, scope, None, cap).subquery()
    counted = int((await session.execute(select(func.count()).select_from(following))).scalar_one())
    return min(counted, cap)


# ---------------------------------------------------------------- state checksums

_checksums = FeedChecksum.__table__


async def read_checksums(
    session: AsyncSession, *, kinds: Sequence[str] | None, scope: str | None
) -> dict[str, checksums.State]:
    """The relay's state of the live entries per kind, of ``kinds`` (None: all), as a reader
    in ``scope`` sees them (the shared rows and that learner's; None: every scope). Kinds
    with no live entry are left out."""
    c = _checksums.c
    query = select(c.kind, func.sum(c.entries), func.sum(c.sum_hi), func.sum(c.sum_lo))
    if kinds is not None:
        query = query.where(c.kind.in_(kinds))
    if scope is not None:
        query = query.where(c.scope.in_([SHARED, scope]))
    rows = (await session.execute(query.group_by(c.kind))).all()
    return {kind: checksums.State(int(n), int(hi), int(lo)) for kind, n, hi, lo in rows if n}


async def read_head_and_checksums(
    session: AsyncSession, *, changed_after: int
) -> tuple[Head, dict[checksums.Key, checksums.State]]:
    """The head, and the checksum rows changed after seq ``changed_after`` (-1: every row),
    in one statement: the feed tail's first read at each catch-up."""
    h, c = FeedHead.__table__.c, _checksums.c
    query = (
        select(h.epoch, h.last_seq, h.floor, c.kind, c.scope, c.entries, c.sum_hi, c.sum_lo)
        .select_from(FeedHead.__table__.outerjoin(_checksums, c.changed_seq > changed_after))
        .where(h.id == 1)
    )
    rows = (await session.execute(query)).all()
    if not rows:
        raise SchemaNotMigrated("the feed_head row is missing: the database was not migrated")
    first = rows[0]
    changed = {
        (row.kind, row.scope): checksums.State(row.entries, row.sum_hi, row.sum_lo)
        for row in rows
        if row.kind is not None
    }
    return Head(epoch=first.epoch, last_seq=first.last_seq, floor=first.floor), changed


async def read_newest_entries(session: AsyncSession, *, count: int) -> Sequence[Any]:
    """The ``count`` feed entries with the highest seqs, in seq order, as
    :func:`read_entries` reads them with ``raw_payload``."""
    query = (
        select(*_feed_raw_columns(session))
        .where(_published.c.seq.is_not(None))
        .order_by(_published.c.seq.desc())
        .limit(count)
    )
    return list(reversed((await session.execute(query)).all()))


async def lock_head(session: AsyncSession) -> Head:
    """The head row, locked until commit (PostgreSQL: FOR UPDATE; SQLite: the write
    session's BEGIN IMMEDIATE already excludes every other writer). Every relay locks it
    before it hands out seqs or moves a checksum, so holding it keeps relays out."""
    query = select(FeedHead.epoch, FeedHead.last_seq, FeedHead.floor).where(FeedHead.id == 1)
    if _is_pg(session):
        query = query.with_for_update()
    row = (await session.execute(query)).one()
    return Head(epoch=row.epoch, last_seq=row.last_seq, floor=row.floor)


async def prune_tombstones(
    session: AsyncSession, *, published_before: datetime | None, up_to_seq: int | None
) -> tuple[int, int]:
    """Delete tombstones published before a time and/or up to a seq; raise the floor.

    Returns (tombstones deleted, new floor). The floor becomes the highest pruned seq, so
    that every seq <= floor may be gone and a cursor below it is refused.
    """
    # The head row is locked first (PostgreSQL: FOR UPDATE; SQLite: the write session's
    # BEGIN IMMEDIATE excludes every other writer), so that no relay hands out seqs while
    # the floor moves: a relay takes the head lock before it writes a new feed entry.
    floor = (await lock_head(session)).floor
    # A tombstone is what refuses an older snapshot of its entity. While any outbox row of
    # that entity waits (a late backfill snapshot, a row in backoff, a dead row that may be
    # requeued), the tombstone stays: pruning it could let that snapshot resurrect the entity.
    _outbox = Outbox.__table__
    waiting = (
        select(_outbox.c.id)
        .where(_outbox.c.kind == _published.c.kind, _outbox.c.source_id == _published.c.id)
        .exists()
    )
    condition: ColumnElement[bool] = _published.c.deleted.is_(True) & ~waiting
    if published_before is not None:
        condition &= _published.c.published_at < published_before
    if up_to_seq is not None:
        condition &= _published.c.seq <= up_to_seq
    # The floor and the count come from what the DELETE itself removed. The head lock does
    # not keep the outbox still: a relay batch of only stale or unchanged rows never takes
    # the head, and it may delete the outbox row that protected a tombstone at any moment.
    # A count taken in another statement could miss that tombstone, and a floor below a
    # deleted tombstone lets a consumer skip its deletion.
    pruned = (
        delete(Published)
        .where(condition)
        .returning(Published.seq)
        .execution_options(synchronize_session=False)
    )
    seqs = (await session.execute(pruned)).scalars().all()
    top = max((seq for seq in seqs if seq is not None), default=None)
    if top is not None and top > floor:
        floor = int(top)
        await session.execute(update(FeedHead).where(FeedHead.id == 1).values(floor=floor))
        await notify_feed(session)
    return len(seqs), floor


# ---------------------------------------------------------------- relay: one apply transaction
# The statements are in sql/postgresql.sql and sql/sqlite.sql, each with why it is shaped so.


class Verdict(StrEnum):
    """What the apply transaction does with a claimed row (the names the SQL returns)."""

    APPLY = "apply"  # published with the next seq
    UNCHANGED = "unchanged"  # same content as published: versions move forward, no feed entry
    STALE = "stale"  # older than published, or coalesced away by a newer row of its batch


@dataclass(frozen=True, slots=True)
class Claim:
    """The outbox rows one transaction claimed, in id order; which of them are of a kind this
    code does not publish (*refused*: see the relay); and how many due rows it left to
    another relay that holds their entity (*skipped*, PostgreSQL only)."""

    ids: list[int]
    refused: list[int]
    skipped: int = 0
    oldest_age_s: float | None = None  # how long the oldest claimed row waited, at claim


@dataclass(frozen=True, slots=True)
class OutboxRow:
    """One claimed outbox row, as much as the relay needs to count a failure and log it."""

    id: int
    kind: str
    source_id: int
    source_version: int
    attempts: int


def _sql(session: AsyncSession) -> Mapping[str, TextClause]:
    return sql.queries(dialect_of(session))


async def claim_batch(
    session: AsyncSession, *, now: datetime, limit: int, ids: Sequence[int] | None = None
) -> Claim:
    """Claim up to ``limit`` due outbox rows in id order (or the due ones among ``ids``).

    PostgreSQL: also locks their entities until commit (only tried: rows of entities another
    relay holds are skipped). SQLite: the write session's ``BEGIN IMMEDIATE`` is the lock.
    """
    params: dict[str, Any] = {"now": now, "kinds": _KINDS}
    if ids is None:
        query = _sql(session)["claim_next"]
        params["limit"] = limit
    else:
        query = _sql(session)["claim_ids"]
        params["ids"] = ids
    result = await session.execute(query, params)
    if _is_pg(session):
        claimed, refused, skipped, age = result.one()
        return Claim(
            ids=list(claimed),
            refused=list(refused),
            skipped=int(skipped),
            oldest_age_s=None if age is None else float(age),
        )
    rows = result.all()
    return Claim(
        ids=[oid for oid, _, _ in rows],
        refused=[oid for oid, ok, _ in rows if not ok],
        oldest_age_s=max((float(age) for _, _, age in rows), default=None),
    )


async def read_claimed(session: AsyncSession, ids: Sequence[int]) -> list[OutboxRow]:
    """The details of claimed rows, for the failure paths (not the hot path)."""
    result = await session.execute(_sql(session)["read_claimed"], {"ids": ids})
    return [OutboxRow(*row) for row in result.all()]


async def publish_claimed(session: AsyncSession, claim: Claim, *, now: datetime) -> Counter[str]:
    """Decide on the claimed outbox rows of publishable kinds and publish them.

    Returns how many rows got each :class:`Verdict`. Applied rows get the next seqs,
    unchanged ones are written without one, and all of them are deleted from the outbox
    (invariant 2). Refused rows are left alone. The caller commits.
    """
    queries = _sql(session)
    if _is_pg(session):
        params = {"claimed": claim.ids, "kinds": _KINDS, "channel": FEED_CHANNEL, "now": now}
        result = await session.execute(queries["publish"], params)
        counts: Counter[str] = Counter({verdict: int(n) for verdict, n in result.all()})
    else:
        result = await session.execute(
            queries["publish.decide"], {"claimed": claim.ids, "kinds": _KINDS}
        )
        verdicts: dict[int, str] = {oid: verdict for oid, verdict in result.all()}
        await _lite_publish(session, queries, verdicts, now)
        counts = Counter(verdicts.values())
    if counts[Verdict.APPLY]:
        # Feed readers in this process (all of them on SQLite) wake on commit.
        fire_after_commit(session, feed_signal)
    return counts


async def _lite_publish(
    session: AsyncSession,
    queries: Mapping[str, TextClause],
    verdicts: dict[int, str],
    now: datetime,
) -> None:
    applied = sorted(oid for oid, verdict in verdicts.items() if verdict == Verdict.APPLY)
    rows: list[tuple[int, int | None]] = [
        (oid, None) for oid, verdict in verdicts.items() if verdict == Verdict.UNCHANGED
    ]
    if applied:
        head = (
            await session.execute(queries["publish.take_seqs"], {"n": len(applied)})
        ).scalar_one()
        first = int(head) - len(applied) + 1
        rows += [(oid, first + n) for n, oid in enumerate(applied)]
        # Before the upsert: the checksums subtract the published rows it replaces.
        await session.execute(queries["publish.checksums"], {"applied": applied, "head": head})
    if rows:
        await session.execute(queries["publish.upsert"], {"now": now, "rows": rows})
    if verdicts:
        await session.execute(queries["publish.delete_outbox"], {"ids": list(verdicts)})


async def fail_row(
    session: AsyncSession,
    outbox_id: int,
    *,
    error: str,
    now: datetime,
    available_at: datetime,
    max_attempts: int,
) -> tuple[int, bool] | None:
    """Count a failed attempt: retry at ``available_at``, or dead-letter at ``max_attempts``.

    Returns (attempts, dead), or None when the row is gone (another relay applied it).
    """
    failed = (
        update(Outbox)
        .where(Outbox.id == outbox_id, Outbox.dead_at.is_(None))
        .values(
            attempts=Outbox.attempts + 1,
            last_error=error,
            available_at=available_at,
            # The right side reads the row before this update: the attempt counted now.
            dead_at=case(
                (Outbox.attempts + 1 >= max_attempts, literal(now, UTCDateTime())), else_=None
            ),
        )
        .returning(Outbox.attempts, Outbox.dead_at)
        .execution_options(synchronize_session=False)
    )
    row = (await session.execute(failed)).one_or_none()
    return None if row is None else (int(row[0]), row[1] is not None)


# ---------------------------------------------------------------- status


@dataclass(frozen=True, slots=True)
class Status:
    """What an operator asks first: is the relay keeping up, is anything dead."""

    pending: int
    oldest_pending_at: datetime | None
    dead: int
    head: Head
    published: dict[str, dict[str, int]]
    dead_by_kind: dict[str, int] = field(default_factory=dict)


async def read_status(session: AsyncSession) -> Status:
    outbox = Outbox.__table__
    pending, oldest = (
        await session.execute(
            select(func.count(), func.min(outbox.c.enqueued_at)).where(outbox.c.dead_at.is_(None))
        )
    ).one()
    dead_by_kind: dict[str, int] = {
        kind: int(count)
        for kind, count in await session.execute(
            select(outbox.c.kind, func.count())
            .where(outbox.c.dead_at.is_not(None))
            .group_by(outbox.c.kind)
        )
    }
    counts = await session.execute(
        select(_published.c.kind, _published.c.deleted, func.count()).group_by(
            _published.c.kind, _published.c.deleted
        )
    )
    published = {kind: {"live": 0, "tombstones": 0} for kind in KINDS}
    for kind, deleted, count in counts.all():
        published.setdefault(kind, {"live": 0, "tombstones": 0})
        published[kind]["tombstones" if deleted else "live"] = int(count)
    return Status(
        pending=int(pending),
        oldest_pending_at=oldest,
        dead=sum(dead_by_kind.values()),
        head=await read_head(session),
        published=published,
        dead_by_kind=dead_by_kind,
    )
