"""Every query the relay and the feed run, and the one seam where PostgreSQL and SQLite differ.

Callers (``relay.py``, ``feed.py``, the CLI) call verb-first functions and never build SQL.
Hot paths are set-based: a relay batch is a handful of statements whatever its size, and a
feed page is one indexed range scan on ``published.seq``. Lists are passed to PostgreSQL as
arrays (``unnest``) and to SQLite as one JSON text (``json_each``), so each statement keeps
the same text, and its cached plan, whatever the batch size.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    ColumnElement,
    Text,
    bindparam,
    cast,
    delete,
    func,
    select,
    text,
    type_coerce,
    update,
)
from sqlalchemy.ext.asyncio import AsyncSession

from studypub.db import dialect_of
from studypub.models import FeedHead, Outbox, Published, UTCDateTime
from studypub.notify import FEED_CHANNEL, feed_signal, fire_after_commit
from studypub.projection import KINDS

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
        raise LookupError("the feed_head row is missing: the database was not migrated")
    return Head(epoch=row.epoch, last_seq=row.last_seq, floor=row.floor)


async def set_epoch(session: AsyncSession, epoch: str) -> None:
    """Give the feed a new epoch (the caller commits)."""
    await session.execute(update(FeedHead).where(FeedHead.id == 1).values(epoch=epoch))


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
) -> Sequence[Any]:
    """Published rows with ``seq > after_seq`` in seq order: a range scan of the seq index.

    Rows with a NULL seq (silent tombstones) never match ``seq > n``. ``raw_payload``: the
    payload as its stored JSON text and ``published_at`` as ISO text (see
    :func:`_feed_raw_columns`).
    """
    columns = _feed_raw_columns(session) if raw_payload else _FEED_COLUMNS
    query = select(*columns).where(_published.c.seq > after_seq)
    if kinds is not None:
        query = query.where(_published.c.kind.in_(kinds))
    query = query.order_by(_published.c.seq).limit(limit)
    return (await session.execute(query)).all()


async def read_entry(session: AsyncSession, *, kind: str, id: int) -> Any | None:
    """The feed entry of one (kind, id), tombstones included; None if never published."""
    query = select(*_FEED_COLUMNS).where(_published.c.kind == kind, _published.c.id == id)
    return (await session.execute(query)).one_or_none()


async def count_entries(
    session: AsyncSession, *, after_seq: int, kinds: Sequence[str] | None
) -> int:
    """How many feed entries have ``seq > after_seq`` (an index-only count)."""
    query = select(func.count()).select_from(_published).where(_published.c.seq > after_seq)
    if kinds is not None:
        query = query.where(_published.c.kind.in_(kinds))
    return int((await session.execute(query)).scalar_one())


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
    head_query = select(FeedHead.floor).where(FeedHead.id == 1)
    if _is_pg(session):
        head_query = head_query.with_for_update()
    floor = int((await session.execute(head_query)).scalar_one())
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
    return len(seqs), floor


# ---------------------------------------------------------------- relay: one apply transaction


@dataclass(frozen=True, slots=True)
class Claim:
    """The outbox rows one transaction claimed, in id order; which of them are of a kind this
    code does not publish (*refused*: see the relay); and how many due rows it left to
    another relay that holds their entity (*skipped*, PostgreSQL only)."""

    ids: list[int]
    refused: list[int]
    skipped: int = 0


@dataclass(frozen=True, slots=True)
class Claimed:
    """One claimed outbox row, as much as the relay needs to count a failure and log it."""

    id: int
    kind: str
    source_id: int
    source_version: int
    attempts: int


APPLY = "apply"
UNCHANGED = "unchanged"
STALE = "stale"

_NOW = bindparam("now", type_=UTCDateTime())


def _publishable(alias: str) -> str:
    return f"{alias}.kind IN ({', '.join(repr(kind) for kind in KINDS)})"


_PUBLISHABLE_O = _publishable("o")


_CLAIM_ROWS = "outbox WHERE dead_at IS NULL AND available_at <= :now"
# PostgreSQL: rows another relay holds are skipped, not waited for; the row locks last until
# commit, and die with the connection if the relay crashes (no leases to expire).
#
# The same statement takes a transaction-scoped advisory lock per claimed (kind, id), which
# serializes relays per entity until commit. ``SELECT ... FOR UPDATE`` on ``published``
# would lock only the rows that exist: two relays could both find no row for a new key,
# decide on it, and the later upsert would overwrite the newer version. The locks are only
# *tried*: an entity another relay holds (an older outbox row of it in that relay's batch) is
# left out of this batch, and its rows stay in the outbox for a later one. So a relay never
# waits for another here: no lock order to keep, no deadlock, and a relay that stops while
# holding its locks (SIGSTOP, a hung host; its transaction ends by the server's
# idle-in-transaction timeout) does not stall the others. The lock CTE is MATERIALIZED so
# each lock is tried exactly once. The published rows are read only after this statement,
# in a new statement, so in a new READ COMMITTED snapshot that sees whatever the previous
# holder of a lock committed.
#
# The answer is one row: the hot path needs the ids, not the rows.
_PG_CLAIM = f"""
WITH claimed AS (
    SELECT id, kind, source_id, hashtextextended(kind || ':' || source_id, 0) AS k
    FROM {_CLAIM_ROWS} {{where}}
    ORDER BY id {{limit}} FOR UPDATE SKIP LOCKED
),
locks AS MATERIALIZED (
    SELECT k, pg_try_advisory_xact_lock(k) AS mine FROM (SELECT DISTINCT k FROM claimed) AS keys
)
SELECT coalesce(array_agg(c.id ORDER BY c.id) FILTER (WHERE l.mine), ARRAY[]::bigint[]),
       coalesce(array_agg(c.id ORDER BY c.id) FILTER (WHERE l.mine AND NOT {_publishable("c")}),
                ARRAY[]::bigint[]),
       count(*) FILTER (WHERE NOT l.mine)
FROM claimed c JOIN locks l ON l.k = c.k
"""
_PG_CLAIM_NEXT = text(_PG_CLAIM.format(where="", limit="LIMIT :limit")).bindparams(_NOW)
_PG_CLAIM_IDS = text(
    _PG_CLAIM.format(where="AND id = ANY(CAST(:ids AS bigint[]))", limit="")
).bindparams(_NOW)
# SQLite: the write session began with BEGIN IMMEDIATE, so this relay is the only writer.
_LITE_CLAIM = text(f"SELECT id, kind FROM {_CLAIM_ROWS} ORDER BY id LIMIT :limit").bindparams(_NOW)
_LITE_CLAIM_IDS = text(
    f"SELECT id, kind FROM {_CLAIM_ROWS} AND id IN (SELECT value FROM json_each(:ids)) ORDER BY id"
).bindparams(_NOW)


async def claim_batch(
    session: AsyncSession, *, now: datetime, limit: int, ids: Sequence[int] | None = None
) -> Claim:
    """Claim up to ``limit`` due outbox rows in id order (or the due ones among ``ids``).

    PostgreSQL: also locks their entities until commit, see above.
    """
    pg = _is_pg(session)
    params: dict[str, Any] = {"now": now}
    if ids is None:
        query = _PG_CLAIM_NEXT if pg else _LITE_CLAIM
        params["limit"] = limit
    else:
        query = _PG_CLAIM_IDS if pg else _LITE_CLAIM_IDS
        params["ids"] = list(ids) if pg else json.dumps(list(ids))
    result = await session.execute(query, params)
    if pg:
        claimed, refused, skipped = result.one()
        return Claim(ids=list(claimed), refused=list(refused), skipped=int(skipped))
    rows = result.all()
    return Claim(
        ids=[oid for oid, _ in rows], refused=[oid for oid, kind in rows if kind not in KINDS]
    )


_READ_CLAIMED = "SELECT id, kind, source_id, source_version, attempts FROM outbox WHERE id IN ({})"
_PG_READ_CLAIMED = text(_READ_CLAIMED.format("SELECT unnest(CAST(:ids AS bigint[]))"))
_LITE_READ_CLAIMED = text(_READ_CLAIMED.format("SELECT value FROM json_each(:ids)"))


async def read_claimed(session: AsyncSession, ids: Sequence[int]) -> list[Claimed]:
    """The details of claimed rows, for the failure paths (not the hot path)."""
    pg = _is_pg(session)
    params = {"ids": list(ids) if pg else json.dumps(list(ids))}
    result = await session.execute(_PG_READ_CLAIMED if pg else _LITE_READ_CLAIMED, params)
    return [Claimed(*row) for row in result.all()]


# The verdict on each claimed row of a kind this code publishes, against the published rows
# (DESIGN "Relay apply transaction", steps 2 and 3), in one query both databases run:
# - stale: coalesced away by a newer row of the same (kind, id) in the batch (the highest
#   (source_version, schema_version, id) wins), or older than the newest version the relay
#   has seen for the entity (published.latest_*);
# - unchanged: same payload hash and deleted flag as the published row, or a tombstone of an
#   entity never published (stored with a NULL seq: never in the feed, but it refuses late
#   snapshots); no new seq and the feed entry stays as it is, but latest_* move forward, so
#   that a later stale snapshot with another payload cannot slip in below them;
# - apply: everything else, which gets the next seqs in claim (outbox id) order.
# Rows of other kinds are *refused* (see the relay) and stay in the outbox.
_DECIDE = f"""
ranked AS (
    SELECT o.id, o.kind, o.source_id, o.source_version, o.schema_version, o.payload_hash,
           o.deleted,
           row_number() OVER (PARTITION BY o.kind, o.source_id
                              ORDER BY o.source_version DESC, o.schema_version DESC, o.id DESC)
               AS rank
    FROM {{source}}
),
verdicts AS (
    SELECT r.id, CASE
        WHEN r.rank > 1 THEN '{STALE}'
        WHEN p.kind IS NULL THEN CASE WHEN r.deleted THEN '{UNCHANGED}' ELSE '{APPLY}' END
        WHEN (r.source_version, r.schema_version) < (p.latest_version, p.latest_schema_version)
            THEN '{STALE}'
        WHEN r.payload_hash = p.hash AND r.deleted = p.deleted THEN '{UNCHANGED}'
        ELSE '{APPLY}'
    END AS verdict
    FROM ranked r LEFT JOIN published p ON p.kind = r.kind AND p.id = r.source_id
)"""

# The published rows of a batch are written in one statement, their payloads copied inside
# the database from the claimed outbox rows. A NULL seq means "no new feed entry": on an
# existing row (unchanged) the feed entry stays as it is and only latest_* move forward; on
# a new row (a tombstone of an entity never published) the seq stays NULL.
_UPSERT_TAIL = (
    " ON CONFLICT (kind, id) DO UPDATE SET"
    " latest_version = excluded.latest_version,"
    " latest_schema_version = excluded.latest_schema_version,"
    " version = CASE WHEN excluded.seq IS NULL"
    " THEN published.version ELSE excluded.version END,"
    " schema_version = CASE WHEN excluded.seq IS NULL"
    " THEN published.schema_version ELSE excluded.schema_version END,"
    " payload = CASE WHEN excluded.seq IS NULL THEN published.payload ELSE excluded.payload END,"
    " hash = excluded.hash, deleted = excluded.deleted,"
    " seq = COALESCE(excluded.seq, published.seq),"
    " published_at = CASE WHEN excluded.seq IS NULL"
    " THEN published.published_at ELSE excluded.published_at END"
)
_UPSERT_HEAD = (
    "INSERT INTO published"
    " (kind, id, version, schema_version, latest_version, latest_schema_version, payload,"
    " hash, deleted, seq, published_at)"
    " SELECT o.kind, o.source_id, o.source_version, o.schema_version, o.source_version,"
    " o.schema_version, o.payload, o.payload_hash, o.deleted, v.seq, :now"
)
# PostgreSQL: the rest of the apply transaction is this one statement, after the claim. Its
# snapshot is taken after the claim locked the entities, so it decides on what the previous
# holders committed. It deletes the claimed outbox rows (all but refused ones) and decides
# on what it deleted, so the outbox is read once; it takes the seqs from the head row (with
# the feed NOTIFY, sent on commit) and upserts the published rows. The head row is locked as
# late as it can be, at the very end of the transaction (invariant 5: it stays locked until
# commit, so the next relay waits for this commit, seqs become visible in commit order, and
# a rollback gives them back).
_PG_PUBLISH = text(
    f"""
WITH gone AS (
    DELETE FROM outbox o WHERE o.id = ANY(CAST(:claimed AS bigint[])) AND {_PUBLISHABLE_O}
    RETURNING *
),
{_DECIDE.format(source="gone o")},
applied AS (
    SELECT id, row_number() OVER (ORDER BY id) AS n FROM verdicts WHERE verdict = '{APPLY}'
),
head AS (
    UPDATE feed_head SET last_seq = last_seq + (SELECT count(*) FROM applied)
    WHERE id = 1 AND EXISTS (SELECT FROM applied)
    RETURNING last_seq - (SELECT count(*) FROM applied) AS base, pg_notify(:channel, '')
),
v AS (
    SELECT a.id AS oid, (SELECT base FROM head) + a.n AS seq FROM applied a
    UNION ALL
    SELECT id, NULL FROM verdicts WHERE verdict = '{UNCHANGED}'
),
written AS ({_UPSERT_HEAD} FROM v JOIN gone o ON o.id = v.oid{_UPSERT_TAIL} RETURNING 1)
SELECT verdict, count(*) FROM verdicts GROUP BY verdict"""
).bindparams(_NOW)
# SQLite: no UPDATE or DELETE in a WITH clause, so a few statements (in-process calls, not
# round trips). An INSERT ... SELECT with an upsert clause needs a WHERE (parsing ambiguity).
_LITE_CLAIMED = (
    f"outbox o WHERE o.id IN (SELECT value FROM json_each(:claimed)) AND {_PUBLISHABLE_O}"
)
_LITE_DECIDE = text(f"WITH {_DECIDE.format(source=_LITE_CLAIMED)} SELECT id, verdict FROM verdicts")
_LITE_TAKE_SEQS = text(
    "UPDATE feed_head SET last_seq = last_seq + :n WHERE id = 1 RETURNING last_seq"
)
_LITE_UPSERT = text(
    f"{_UPSERT_HEAD} FROM (SELECT value ->> 0 AS oid, value ->> 1 AS seq FROM json_each(:rows))"
    f" AS v JOIN outbox o ON o.id = v.oid WHERE true{_UPSERT_TAIL}"
).bindparams(_NOW)
_LITE_DELETE_OUTBOX = text("DELETE FROM outbox WHERE id IN (SELECT value FROM json_each(:ids))")


async def publish_claimed(
    session: AsyncSession, claimed: Sequence[int], *, now: datetime
) -> Counter[str]:
    """Decide on the ``claimed`` outbox rows of publishable kinds and publish them.

    Returns how many rows got each verdict. Applied rows get the next seqs, unchanged ones
    are written without one, and all of them are deleted from the outbox (invariant 2).
    Rows of other kinds are left alone. The caller commits.
    """
    if _is_pg(session):
        params = {"claimed": list(claimed), "channel": FEED_CHANNEL, "now": now}
        result = await session.execute(_PG_PUBLISH, params)
        counts: Counter[str] = Counter({verdict: int(n) for verdict, n in result.all()})
    else:
        result = await session.execute(_LITE_DECIDE, {"claimed": json.dumps(list(claimed))})
        verdicts: dict[int, str] = {oid: verdict for oid, verdict in result.all()}
        await _lite_publish(session, verdicts, now)
        counts = Counter(verdicts.values())
    if counts[APPLY]:
        # Feed readers in this process (all of them on SQLite) wake on commit.
        fire_after_commit(session, feed_signal)
    return counts


async def _lite_publish(session: AsyncSession, verdicts: dict[int, str], now: datetime) -> None:
    applied = sorted(oid for oid, verdict in verdicts.items() if verdict == APPLY)
    rows: list[tuple[int, int | None]] = [
        (oid, None) for oid, verdict in verdicts.items() if verdict == UNCHANGED
    ]
    if applied:
        head = (await session.execute(_LITE_TAKE_SEQS, {"n": len(applied)})).scalar_one()
        first = int(head) - len(applied) + 1
        rows += [(oid, first + n) for n, oid in enumerate(applied)]
    if rows:
        await session.execute(_LITE_UPSERT, {"now": now, "rows": json.dumps(rows)})
    if verdicts:
        await session.execute(_LITE_DELETE_OUTBOX, {"ids": json.dumps(list(verdicts))})


_FAIL_ROW = text(
    "UPDATE outbox SET attempts = attempts + 1, last_error = :error, available_at = :available,"
    " dead_at = CASE WHEN attempts + 1 >= :max_attempts THEN :now ELSE NULL END"
    " WHERE id = :id AND dead_at IS NULL RETURNING attempts, dead_at"
).bindparams(_NOW, bindparam("available", type_=UTCDateTime()))


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
    row = (
        await session.execute(
            _FAIL_ROW,
            {
                "id": outbox_id,
                "error": error,
                "now": now,
                "available": available_at,
                "max_attempts": max_attempts,
            },
        )
    ).one_or_none()
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


async def read_status(session: AsyncSession) -> Status:
    outbox = Outbox.__table__
    pending, oldest = (
        await session.execute(
            select(func.count(), func.min(outbox.c.enqueued_at)).where(outbox.c.dead_at.is_(None))
        )
    ).one()
    dead = (
        await session.execute(
            select(func.count()).select_from(outbox).where(outbox.c.dead_at.is_not(None))
        )
    ).scalar_one()
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
        dead=int(dead),
        head=await read_head(session),
        published=published,
    )
