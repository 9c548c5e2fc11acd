"""The states the tests compare, each keyed by (kind, id):

- ``expected_state``: the projection of every source row now (what should be published);
- ``decided_state``: what the relay decided for every key it has seen, silent tombstones
  and the newest version it refused to go below included;
- ``visible_state``: the published rows that are feed entries (those with a seq);
- ``live_view``: the live entries a consumer ends up holding (tombstones dropped), to compare
  with what a consumer built from the feed (``view_of``, ``replica_view``).

``FeedConsumer`` is a consumer in process (``read_feed``, no HTTP), for the relay's tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import feed
from studypub.db import read_session_factory
from studypub.models import SOURCE_MODELS, Published
from studypub.outbox import outbox_values
from studypub.replica import Replica
from studypub.targets import KINDS_OF

Key = tuple[str, int]
RelayState = dict[Key, tuple[str, bool, int]]  # (hash, deleted, version)
LiveView = dict[Key, tuple[int, str]]  # (version, hash) of live entries only

# ---------------------------------------------------------------- sources, relay, feed


async def expected_state(engine: AsyncEngine) -> RelayState:
    """(hash, deleted, version) per (kind, id): the projection of every source row now."""
    state: RelayState = {}
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


async def decided_state(engine: AsyncEngine) -> RelayState:
    """(hash, deleted, the newest source version the relay has seen) per key the relay has
    decided on: every published row, silent tombstones included."""
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


async def visible_state(engine: AsyncEngine) -> RelayState:
    """The published rows a consumer can see (those with a seq), at the version of the entry."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(
                Published.kind, Published.id, Published.hash, Published.deleted, Published.version
            ).where(Published.seq.is_not(None))
        )
        return {(r.kind, r.id): (r.hash, bool(r.deleted), r.version) for r in rows}


async def the_published_row(engine: AsyncEngine) -> Any:
    """The only row of the published store (of a test that published one entity)."""
    async with engine.connect() as conn:
        return (await conn.execute(select(Published))).one()


async def feed_seqs(engine: AsyncEngine) -> list[int]:
    """The seqs present in the published store (compacted: superseded ones are gone)."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Published.seq).where(Published.seq.is_not(None)).order_by(Published.seq)
        )
        return [r.seq for r in rows]


async def head_of(engine: AsyncEngine) -> feed.Head:
    async with read_session_factory(engine)() as s:
        return await feed.head(s)


async def wait_for_head(engine: AsyncEngine, seq: int, timeout_s: float = 10.0) -> None:
    """Wait until the relay has published up to ``seq``."""
    deadline = time.monotonic() + timeout_s
    while (await head_of(engine)).last_seq < seq:
        assert time.monotonic() < deadline, f"the feed head did not reach {seq}"
        await asyncio.sleep(0.02)


class FeedConsumer:
    """A consumer in process: follows the feed with ``read_feed`` and applies entries by
    version (not ``studypub.replica.Replica``, the HTTP client, tested in test_replica.py)."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.reads = read_session_factory(engine)
        self.cursor = feed.START
        self.state: RelayState = {}
        self.versions: dict[Key, tuple[int, int]] = {}
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


# ---------------------------------------------------------------- what a consumer holds


async def live_view(engine: AsyncEngine) -> LiveView:
    """The live published rows: what a consumer that follows the feed must end up holding."""
    async with engine.connect() as conn:
        rows = await conn.execute(
            select(Published.kind, Published.id, Published.version, Published.hash).where(
                Published.deleted.is_(False)
            )
        )
        return {(r.kind, r.id): (r.version, r.hash) for r in rows}


def view_of(entries: Iterable[Mapping[str, Any]]) -> LiveView:
    """What any consumer holds after applying ``entries`` in order: live entries upserted,
    tombstones dropped."""
    view: LiveView = {}
    for e in entries:
        key = (e["kind"], e["id"])
        if e["deleted"]:
            view.pop(key, None)
        else:
            view[key] = (e["version"], e["hash"])
    return view


def replica_view(rows: Mapping[Key, Mapping[str, object]]) -> LiveView:
    """The live view of a ``studypub.replica.Replica``'s ``state()``."""
    return {key: (int(str(e["version"])), str(e["hash"])) for key, e in rows.items()}


async def replica_cursor(path: Path, url: str) -> str:
    """The cursor stored in the replica file at ``path``."""
    async with Replica(path, url) as peek:
        return await peek.cursor()
