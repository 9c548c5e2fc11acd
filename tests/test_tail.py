"""The feed tail: one reader of the feed per process, and its window of the newest entries.

The window alone (no database): compaction, eviction, filters, pending. Then the tail on both
databases: a client inside the window and one behind it get every entry once, in order, and
end with the published state; a page inside the window costs no database statement.
"""

from __future__ import annotations

import json
import sys
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import feed, metrics
from studypub.projection import SHARED
from studypub.relay import Relay
from studypub.store import Head
from studypub.tail import COMPACT_MIN, Entry, FeedTail, Window
from tests.support.state import live_view, view_of
from tests.support.writes import create_topics, delete_topic, update_topic

Sessions = async_sessionmaker[AsyncSession]


def entry(seq: int, kind: str = "topic", id_: int | None = None, scope: str = SHARED) -> Entry:
    row = {**_row(seq), "kind": kind, "id": seq if id_ is None else id_}
    return Entry.encode(row, Head("e", seq, 0), scope)


def test_the_window_is_compacted_like_the_feed() -> None:
    window = Window("e", 0, size=100)
    window.append([entry(1, id_=7), entry(2, id_=8), entry(3, id_=7)], last=3)
    found, pending = window.select(0, 10, None)
    assert [e.seq for e in found] == [2, 3]  # seq 1 moved to seq 3
    assert pending == 0 and len(window) == 2


def test_the_window_keeps_the_newest_entries_and_covers_only_them() -> None:
    window = Window("e", 10, size=5)
    window.append([entry(seq) for seq in range(11, 21)], last=22)
    assert (window.start, window.last, len(window)) == (15, 22, 5)
    assert window.covers(15) and window.covers(22)
    assert not window.covers(14) and not window.covers(23)
    found, pending = window.select(15, 3, None)
    assert [e.seq for e in found] == [16, 17, 18] and pending == 2


def test_the_window_filters_per_client_and_counts_pending_to_the_cap() -> None:
    window = Window("e", 0, size=feed.PENDING_CAP * 3)
    kinds = ("card", "topic")
    window.append(
        [entry(seq, kind=kinds[seq % 2]) for seq in range(1, 2 * feed.PENDING_CAP + 10)],
        last=2 * feed.PENDING_CAP + 9,
    )
    cards, pending = window.select(0, 3, ("card",))
    assert [e.seq for e in cards] == [2, 4, 6]
    assert pending == feed.PENDING_CAP  # counted up to the cap, no further


def test_the_window_serves_a_learner_the_shared_entries_and_its_own() -> None:
    window = Window("e", 0, size=100)
    learners = ("ana", "ben", SHARED)
    window.append(
        [entry(seq, "card_progress", scope=learners[seq % 3]) for seq in range(1, 31)], last=30
    )
    ana, pending = window.select(0, 4, None, "ana")
    assert [(e.seq, e.scope) for e in ana] == [(2, ""), (3, "ana"), (5, ""), (6, "ana")]
    assert pending == 20 - 4
    ben, _ = window.select(25, 10, ("card_progress",), "ben")
    assert [e.scope for e in ben] == ["", "ben", ""]
    everyone, _ = window.select(0, 100, None, None)
    assert len(everyone) == 30


def test_an_unbounded_window_does_not_grow_with_updates() -> None:
    """An edge's window holds the whole feed: superseded entries must still go."""
    window = Window("e", 0, size=sys.maxsize)
    for seq in range(1, 20_001):
        window.append([entry(seq, id_=seq % 10)], last=seq)
    assert len(window) == 10
    assert len(window._entries) <= 10 + COMPACT_MIN + 1
    assert [e.id for e in window.select(0, 100, None)[0]] == [1, 2, 3, 4, 5, 6, 7, 8, 9, 0]


def test_a_prunes_tombstones_leave_the_window() -> None:
    window = Window("e", 0, size=100)
    tombstone = Entry.encode({**_row(2), "deleted": True}, Head("e", 2, 0))
    later = Entry.encode({**_row(5), "id": 9, "deleted": True}, Head("e", 5, 0))
    window.append([entry(1), tombstone, entry(3), later], last=5)
    window.drop_tombstones(3)
    window.drop_tombstones(3)  # again: nothing more goes
    found, _ = window.select(0, 10, None)
    assert [e.seq for e in found] == [1, 3, 5]  # the one above the floor stays
    assert window.get("topic", 2) is None and len(window) == 3
    window.drop_tombstones(5)
    assert [e.seq for e in window.select(0, 10, None)[0]] == [1, 3]


def test_an_entry_is_encoded_once_as_json_and_as_an_event() -> None:
    e = Entry.encode(
        {**_row(5), "payload": '{"a":1}'},
        Head("e1", 5, 3),
    )
    assert e.json.startswith(b'{"seq":5,"kind":"topic"')
    assert e.event.startswith(b"id: e1.3:5\nevent: entry\ndata: {")  # the floor in the cursor


def _row(seq: int) -> dict[str, Any]:
    return {
        "seq": seq,
        "kind": "topic",
        "id": seq,
        "version": 1,
        "schema_version": 1,
        "deleted": False,
        "hash": "0" * 64,
        "payload": "{}",
        "published_at": "2026-01-01T00:00:00.000000Z",
    }


async def read_to_end(tail: FeedTail, since: str) -> tuple[list[dict[str, Any]], str]:
    """Every page from ``since`` until nothing is pending, as a consumer reads them."""
    entries: list[dict[str, Any]] = []
    cursor = since
    while True:
        page = await tail.page(cursor, 3, None)
        entries += json.loads(page.body())["results"]
        cursor = page.last_seq
        if not page.pending:
            return entries, cursor


async def test_clients_inside_and_behind_the_window_get_every_entry_once(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    ids = await create_topics(sessions, [f"t{i}" for i in range(12)])
    relay = Relay(engine, listen=False)
    await relay.run_once()
    tail = FeedTail(engine, window=5)
    await tail.start()
    try:
        await tail.catch_up()
        early, _ = await read_to_end(tail, feed.START)  # from 0: the database, then...
        middle = early[8]["seq"]
        epoch = tail.head.epoch if tail.head else ""
        for topic in ids[:4]:
            await update_topic(sessions, topic, title="edited")
        await delete_topic(sessions, ids[5])
        await relay.run_once()
        await tail.catch_up()
        assert tail.window is not None and tail.head is not None
        assert tail.window.start > middle, "the window must not reach back to the middle"

        statements = metrics.FEED_DB_STATEMENTS.labels(reader="page")
        before = statements._value.get()
        inside, cursor = await read_to_end(tail, f"{epoch}:{tail.window.start}")
        assert statements._value.get() == before, "a page inside the window read the database"
        behind, _ = await read_to_end(tail, feed.encode_cursor(epoch, middle))
        fresh, _ = await read_to_end(tail, feed.START)
    finally:
        await tail.stop()

    for entries in (inside, behind, fresh, early[:9] + behind):
        seqs = [e["seq"] for e in entries]
        assert seqs == sorted(set(seqs)), "in order, no entry twice"
    expected = await live_view(engine)
    assert view_of(fresh) == expected
    assert view_of(early[:9] + behind) == expected  # a consumer that stopped, then came back
    assert inside and cursor.startswith(f"{epoch}:")


async def test_a_write_is_visible_to_the_next_read_of_this_process(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    [topic] = await create_topics(sessions, ["first"])
    relay = Relay(engine, listen=False)
    await relay.run_once()
    tail = FeedTail(engine)
    await tail.start()
    try:
        await tail.catch_up()
        cursor = (await tail.page(feed.START, 100, None)).last_seq
        await update_topic(sessions, topic, title="second")
        await relay.run_once()  # commits: the tail hears of it, and reads before answering
        page = await tail.page(cursor, 100, None)
    finally:
        await tail.stop()
    assert [e.id for e in page.entries] == [topic]
