"""Idempotency keys: a retried write answers with its first result instead of running twice.

A client that lost a response resends the request with the same ``Idempotency-Key``. The key
is *claimed* (inserted) at the start of the write's transaction, before the write locks
anything, and the response is stored in the same row before commit: the key commits or rolls
back with the write and its outbox rows. Only successful results are stored; a request that
fails rolls back, key included, so its retry runs again.

Concurrent duplicates: on SQLite, ``BEGIN IMMEDIATE`` serializes writers, so the second finds
the first's committed row. On PostgreSQL the second's insert waits on the primary key until
the first transaction ends: if it commits, the insert fails and the second replays the stored
row; if it rolls back, the insert goes through and the second runs the write itself.

No HTTP here: the API turns a :class:`StoredResponse` into a response.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from studypub.errors import Conflict, InvalidInput
from studypub.models import IdempotencyKey, utcnow
from studypub.projection import payload_hash

KEY_TTL = timedelta(hours=24)
"""How long a key is remembered; after that it may be reused for any request."""
MAX_KEY = 255
KEY_PATTERN = rf"^[\x21-\x7e]{{1,{MAX_KEY}}}$"
_KEY = re.compile(KEY_PATTERN)


@dataclass(frozen=True)
class StoredResponse:
    """What the first request with a key answered, replayed as is to its repeats."""

    status: int
    body: dict[str, Any]
    etag: str | None = None


def check_key(key: str) -> str:
    """Keys are opaque to studypub, but short and printable (they travel in a header)."""
    if not _KEY.match(key):
        raise InvalidInput(
            f"Idempotency-Key must be 1 to {MAX_KEY} visible ASCII characters"
            f" ('!' to '~', no spaces); got {key[:40]!r}"
        )
    return key


def request_fingerprint(method: str, path: str, body: Any) -> str:
    """sha256 hex of the request's canonical JSON: a key reused for another request is told
    apart from a retry, whatever the key order or spacing of the body."""
    return payload_hash({"method": method.upper(), "path": path, "body": body})


async def claim(
    session: AsyncSession, key: str, fingerprint: str, *, now: datetime | None = None
) -> StoredResponse | None:
    """Take ``key`` for this request, or get the response of the first request that took it.

    ``None``: the key is this transaction's; run the write, then :func:`save` its response.
    A :class:`StoredResponse`: replay it and write nothing. :class:`Conflict`: the key was
    used for another request (another fingerprint).
    """
    now = now or utcnow()
    await _forget_expired(session, key, now)
    stored = await _get(session, key)
    if stored is None:
        if await _insert(session, key, fingerprint, now):
            return None
        stored = await _get(session, key)
    return _replay(key, stored, fingerprint)


async def save(session: AsyncSession, key: str, response: StoredResponse) -> None:
    """Store the response of the request that claimed ``key``; it commits with the write."""
    row = await session.get(IdempotencyKey, key)
    if row is None or row.status is not None:
        raise RuntimeError(f"Idempotency-Key {key!r} was not claimed by this transaction")
    row.status, row.body, row.etag = response.status, response.body, response.etag
    await session.flush()


async def delete_expired(session: AsyncSession, *, now: datetime) -> int:
    """Delete the keys older than :data:`KEY_TTL`; returns how many. The caller commits."""
    result = await session.execute(delete(IdempotencyKey).where(_expired(now)))
    return int(cast(CursorResult[Any], result).rowcount)


async def _forget_expired(session: AsyncSession, key: str, now: datetime) -> None:
    """An expired key is gone even before a prune deletes it.

    A conditional DELETE, not a read then a write: a concurrent duplicate waits for our row
    lock, then finds the row we renewed no longer expired, and leaves it.
    """
    statement = delete(IdempotencyKey).where(IdempotencyKey.key == key, _expired(now))
    await session.execute(statement.execution_options(synchronize_session=False))


async def _get(session: AsyncSession, key: str) -> IdempotencyKey | None:
    statement = (
        select(IdempotencyKey)
        .where(IdempotencyKey.key == key)
        .execution_options(populate_existing=True)
    )
    return await session.scalar(statement)


async def _insert(session: AsyncSession, key: str, fingerprint: str, now: datetime) -> bool:
    """Insert the key; ``False`` when a concurrent request holding it has committed.

    In a savepoint, so that the failed insert leaves the request's transaction usable. The
    caller then reads the winner's row in a new statement: write sessions run at READ
    COMMITTED (PostgreSQL's default), where each statement sees every transaction committed
    before it began, as a fresh transaction would, without taking a second connection.
    """
    try:
        async with session.begin_nested():
            session.add(IdempotencyKey(key=key, fingerprint=fingerprint, created_at=now))
    except IntegrityError:
        return False
    return True


def _replay(key: str, stored: IdempotencyKey | None, fingerprint: str) -> StoredResponse:
    if stored is not None and stored.fingerprint != fingerprint:
        raise Conflict(
            f"Idempotency-Key {key!r} was already used for another request"
            " (another method, path or body); use a new key for a new request"
        )
    if stored is None or stored.status is None or stored.body is None:
        # Not reachable at READ COMMITTED (a committed row has its response); never a 500.
        raise Conflict(f"a request with Idempotency-Key {key!r} is still running; retry it")
    return StoredResponse(status=stored.status, body=stored.body, etag=stored.etag)


def _expired(now: datetime) -> ColumnElement[bool]:
    return IdempotencyKey.created_at < now - KEY_TTL
