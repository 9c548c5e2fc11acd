"""Reading the published change feed: cursors, pages, the head, and tombstone retention.

The feed is the ``published`` table ordered by ``seq``: one row per (kind, id), each update
moving its row to a new seq. A consumer that reads ``seq > cursor`` page by page from ``0`` to
the head holds exactly the current state (the bootstrap), and keeps it by reading on.

A cursor is ``"<epoch>:<seq>"``, or ``"<epoch>.<floor>:<seq>"`` once tombstones have been
pruned; ``"0"`` means the start. The epoch changes when the feed is rebuilt (e.g. after a
restore), and the *floor* rises when tombstones are pruned: every seq <= floor may be gone. A
cursor of another epoch or below the floor could silently miss a deletion, so it gets
:class:`~studypub.errors.ResetRequired` instead: start again from 0. The floor in a cursor
is the one the server knew when it made the cursor; it is not checked (the current floor
is), it makes the URLs a consumer follows after a reset different from every URL it, or a
cache in front of the server, saw before the floor moved (see ``page_cache_control`` in the
API).

Entries go out over HTTP as they are encoded here (:func:`entry_json`, :func:`page_json`,
:func:`entry_event`): straight from the rows, the payload spliced in as stored.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy.ext.asyncio import AsyncSession

from studypub import checksums, store
from studypub.errors import InvalidInput, ResetRequired
from studypub.models import new_epoch, utcnow
from studypub.projection import KINDS, SHARED, iso_utc
from studypub.store import Head

__all__ = [
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "MIN_RETENTION",
    "PENDING_CAP",
    "START",
    "Cursor",
    "FeedPage",
    "Head",
    "check_retention",
    "decode_cursor",
    "encode_cursor",
    "entry_event",
    "entry_json",
    "entry_of",
    "event_of",
    "head",
    "page_body",
    "page_json",
    "parse_kinds",
    "prune_tombstones",
    "read_feed",
    "read_item",
]

START = "0"
DEFAULT_LIMIT = 100  # entries per page when the consumer does not say
MAX_LIMIT = 1000
# ``pending`` is exact up to here: counting further would cost each page of a bootstrap as
# much as the rest of the feed (an index scan of everything after it).
PENDING_CAP = 10_000
MIN_RETENTION = timedelta(hours=1)
MAX_CURSOR_LENGTH = 64
_NUMBER = r"(?:0|[1-9][0-9]{0,17})"  # under 2^63: a BIGINT on both databases
_EPOCH = r"[0-9A-Za-z_-]{1,32}"
_CURSOR = re.compile(rf"({_EPOCH})(?:\.({_NUMBER}))?:({_NUMBER})")
CURSOR_PATTERN = rf"^(?:{START}|{_EPOCH}(?:\.{_NUMBER})?:{_NUMBER})$"
"""Every cursor :func:`decode_cursor` accepts, for the OpenAPI schema."""


@dataclass(frozen=True, slots=True)
class FeedPage:
    """One page of the feed, and the head of the snapshot it was read in.

    ``last_seq`` is the cursor to resume from; ``pending`` how many entries (of the
    requested kinds) follow this page, exactly up to :data:`PENDING_CAP` (then at least that
    many).
    """

    entries: list[dict[str, Any]]
    last_seq: str
    pending: int
    head: Head
    # At the head (nothing pending): the state checksums of what this page's reader holds
    # once it applied everything up to here, per kind (see studypub.checksums).
    checksums: dict[str, checksums.State] | None = None


# Encoding, for entries read with ``raw_payload=True``: the payload is its JSON text and
# ``published_at`` its ISO text. This is the hot path of a bootstrap (see bench/feed.py):
# no entry is parsed or re-encoded, and no model is built per entry.


def entry_json(entry: Mapping[str, Any]) -> str:
    """One entry as JSON, its payload spliced in as stored (never parsed, never re-encoded).

    ``kind`` is one of a fixed set, ``hash`` hex and ``published_at`` ISO digits: none needs
    escaping.
    """
    return (
        f'{{"seq":{entry["seq"]},"kind":"{entry["kind"]}","id":{entry["id"]},'
        f'"version":{entry["version"]},"schema_version":{entry["schema_version"]},'
        f'"deleted":{"true" if entry["deleted"] else "false"},"hash":"{entry["hash"]}",'
        f'"payload":{entry["payload"]},"published_at":"{entry["published_at"]}"}}'
    )


def page_json(page: FeedPage) -> bytes:
    """The body of ``GET /v1/feed``: ``{"results": [...], "last_seq": ..., "pending": ...}``,
    and ``"checksums"`` at the head."""
    return page_body(
        [entry_json(entry).encode() for entry in page.entries],
        page.last_seq,
        page.pending,
        page.checksums,
    )


def page_body(
    entries: Sequence[bytes],
    last_seq: str,
    pending: int,
    states: Mapping[str, checksums.State] | None = None,
) -> bytes:
    """A page's body from entries already encoded (:func:`entry_json`, as UTF-8)."""
    tail = "" if states is None else f',"checksums":{checksums.to_json(states)}'
    return b"".join(
        (
            b'{"results":[',
            b",".join(entries),
            f'],"last_seq":{json.dumps(last_seq)},"pending":{pending}{tail}}}'.encode(),
        )
    )


def entry_event(epoch: str, entry: Mapping[str, Any], floor: int = 0) -> str:
    """One entry as a Server-Sent Event: ``id:`` its cursor, ``event: entry``, ``data:`` its
    JSON on one line."""
    return event_of(epoch, entry["seq"], floor, entry_json(entry))


def event_of(epoch: str, seq: int, floor: int, data: str) -> str:
    """The Server-Sent Event of the entry at ``seq`` whose JSON is ``data``."""
    # A raw newline in JSON can only be whitespace between tokens: one data line.
    data = data.replace("\n", " ").replace("\r", " ")
    return f"id: {encode_cursor(epoch, seq, floor)}\nevent: entry\ndata: {data}\n\n"


def encode_cursor(epoch: str, seq: int, floor: int = 0) -> str:
    """The cursor of position ``seq`` in feed ``epoch``, made when the floor was ``floor``."""
    return f"{epoch}.{floor}:{seq}" if floor else f"{epoch}:{seq}"


class Cursor(NamedTuple):
    """A decoded cursor: the feed ``epoch`` (None: the start), the position ``seq``, and the
    ``floor`` the server knew when it made the cursor (0 for a cursor made before any
    prune, or written without one)."""

    epoch: str | None
    seq: int
    floor: int = 0


def decode_cursor(cursor: str) -> Cursor:
    """The :class:`Cursor` of a cursor string; ``Cursor(None, 0)`` for the start ``"0"``."""
    if cursor == START:
        return Cursor(None, 0)
    match = _CURSOR.fullmatch(cursor) if len(cursor) <= MAX_CURSOR_LENGTH else None
    if match is None:
        shown = cursor if len(cursor) <= MAX_CURSOR_LENGTH else cursor[:MAX_CURSOR_LENGTH] + "..."
        raise InvalidInput(
            f"invalid cursor {shown!r}: expected '0' or '<epoch>:<seq>' as returned in last_seq"
        )
    return Cursor(match.group(1), int(match.group(3)), int(match.group(2) or 0))


def parse_kinds(kinds: Sequence[str] | None) -> tuple[str, ...] | None:
    """Validate a kinds filter; ``None`` (or empty) means every kind."""
    if not kinds:
        return None
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        raise InvalidInput(
            f"unknown kind {', '.join(map(repr, unknown))}: allowed kinds are {', '.join(KINDS)}"
        )
    return tuple(dict.fromkeys(kinds))


async def head(session: AsyncSession) -> Head:
    """The feed head: epoch, last seq given, floor."""
    return await store.read_head(session)


async def start_new_epoch(session: AsyncSession) -> str:
    """Give the feed a new epoch, so that every consumer reads again from 0 (the caller
    commits). For a database restored from a backup: a consumer may have read entries that
    the backup lacks, and the seqs handed out after the restore would reuse their positions;
    only a new epoch tells such a consumer that its copy cannot be continued."""
    epoch = new_epoch()
    await store.set_epoch(session, epoch)
    return epoch


def check_cursor(cursor: Cursor, current: Head) -> None:
    """Raise :class:`ResetRequired` unless a consumer at this position misses nothing.

    Below the floor, a consumer may have missed a deletion: unless its cursor was made
    under the current floor, that is, its reading began after the last prune (a bootstrap
    from 0 after a prune passes seqs below the floor, and misses nothing: the entities of
    the pruned tombstones were gone before it began).
    """
    if cursor.epoch is None:
        return  # "0": the start is always complete
    if cursor.epoch != current.epoch:
        raise ResetRequired(
            f"cursor of feed epoch {cursor.epoch!r}, the feed is now epoch {current.epoch!r}: "
            "reset required, read again from 0"
        )
    if cursor.seq < current.floor and cursor.floor < current.floor:
        raise ResetRequired(
            f"cursor {cursor.seq} is below the feed floor {current.floor} (tombstones up to "
            "there were pruned since it was made): reset required, read again from 0"
        )
    if cursor.seq > current.last_seq:
        raise ResetRequired(
            f"cursor {cursor.seq} is beyond the feed head {current.last_seq} of this epoch: "
            "reset required, read again from 0"
        )


async def read_feed(
    session: AsyncSession,
    since: str,
    limit: int,
    kinds: Sequence[str] | None = None,
    *,
    raw_payload: bool = False,
    scope: str | None = None,
) -> FeedPage:
    """Up to ``limit`` entries after cursor ``since``, in seq order; with ``scope``, only the
    shared entries and that learner's (the same seq order, so cursors mean the same).

    Use a read session (``db.read_session_factory``): the floor check, the entries and the
    pending count then come from ONE snapshot (SQLite: a deferred transaction; PostgreSQL:
    REPEATABLE READ). In two snapshots, a prune committing in between could delete
    tombstones after the cursor passed the floor check, and the page would skip them with no
    reset: the deletions would never reach the consumer. ``raw_payload``:
    each entry's payload is its JSON text, unparsed, and ``published_at`` its ISO text, for
    the HTTP feed to splice in as is.
    """
    if not 1 <= limit <= MAX_LIMIT:
        raise InvalidInput(f"invalid limit {limit}: allowed 1..{MAX_LIMIT}")
    kind_filter = parse_kinds(kinds)
    cursor = decode_cursor(since)
    current = await store.read_head(session)
    check_cursor(cursor, current)
    rows = await store.read_entries(
        session,
        after_seq=cursor.seq,
        limit=limit,
        kinds=kind_filter,
        raw_payload=raw_payload,
        scope=scope,
    )
    entries = [entry_of(row, raw=raw_payload) for row in rows]
    if not entries:
        states = await store.read_checksums(session, kinds=kind_filter, scope=scope)
        return FeedPage(entries=[], last_seq=since, pending=0, head=current, checksums=states)
    last = entries[-1]["seq"]
    # A short page is the end of the feed (of this snapshot): no need to count.
    pending = (
        await store.count_entries(
            session, after_seq=last, kinds=kind_filter, cap=PENDING_CAP, scope=scope
        )
        if len(entries) == limit
        else 0
    )
    last_seq = encode_cursor(current.epoch, last, current.floor)
    # At the head: the checksums, from the same snapshot as the entries.
    at_head = (
        None if pending else await store.read_checksums(session, kinds=kind_filter, scope=scope)
    )
    return FeedPage(
        entries=entries, last_seq=last_seq, pending=pending, head=current, checksums=at_head
    )


async def read_item(
    session: AsyncSession, kind: str, id: int, *, scope: str | None = None
) -> dict[str, Any] | None:
    """The published entry of one (kind, id); None when unknown or deleted (a tombstone), or
    outside ``scope`` (another learner's: exactly as if unknown)."""
    parse_kinds([kind])
    row = await store.read_entry(session, kind=kind, id=id)
    if row is None or row.deleted or (scope is not None and row.scope not in (SHARED, scope)):
        return None
    return entry_of(row)


def entry_of(row: Any, *, raw: bool = False) -> dict[str, Any]:
    """A feed entry from a published row; ``raw``: read with ``raw_payload`` (see
    :func:`store.read_entries`)."""
    return {
        "seq": row.seq,
        "kind": row.kind,
        "id": row.id,
        "version": row.version,
        "schema_version": row.schema_version,
        "deleted": row.deleted,
        "hash": row.hash,
        "payload": row.payload,
        "published_at": row.published_at if raw else iso_utc(row.published_at),
    }


async def prune_tombstones(
    session: AsyncSession,
    *,
    older_than: timedelta,
    up_to_seq: int | None = None,
    now: datetime | None = None,
) -> int:
    """Delete tombstones by retention; returns how many. The caller commits.

    Tombstones published more than ``older_than`` ago (and, if given, with seq <=
    ``up_to_seq``) go. The floor rises to the highest pruned seq: every seq <= floor may be
    gone, so cursors below it get :class:`ResetRequired`. A tombstone whose entity still has
    an outbox row waiting is kept: it is what refuses that row if the row is older.

    ``older_than`` is at least :data:`MIN_RETENTION`: a backfill snapshot is read before its
    page commits, so a tombstone must outlive any page in flight, or an older snapshot of its
    entity, not yet visible to the prune, could resurrect it. It must also outlast the
    slowest consumer's time away. ``now`` is the clock (for tests).
    """
    check_retention(older_than)
    if up_to_seq is not None and up_to_seq < 0:
        raise InvalidInput(f"invalid up_to_seq {up_to_seq}: must be zero or more")
    cutoff = (now or utcnow()) - older_than
    deleted, _floor = await store.prune_tombstones(
        session, published_before=cutoff, up_to_seq=up_to_seq
    )
    return deleted


def check_retention(older_than: timedelta) -> timedelta:
    """``older_than`` if it is a safe tombstone retention (see :func:`prune_tombstones`)."""
    if older_than < MIN_RETENTION:
        raise InvalidInput(
            f"retention {_spell(older_than)} is too short: at least {_spell(MIN_RETENTION)}"
            " (tombstones must outlive a backfill page in flight and your slowest consumer)"
        )
    return older_than


def _spell(duration: timedelta) -> str:
    seconds = int(duration.total_seconds())
    for unit, size in (("d", 86_400), ("h", 3_600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
