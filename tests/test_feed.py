"""Feed reads: cursors, pages, kinds, pending, reset required, tombstone pruning."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import feed
from studypub.errors import InvalidInput, ResetRequired
from studypub.models import FeedHead, Published, utcnow
from studypub.outbox import enqueue_publish
from studypub.projection import payload_hash
from studypub.relay import Outcomes, Relay

T0 = datetime(2026, 1, 1, tzinfo=UTC)


async def publish_rows(session: AsyncSession, rows: list[tuple[str, int, bool]]) -> None:
    """Write published rows (kind, id, deleted) at the next seqs, as the relay would."""
    head = (await session.execute(select(FeedHead.last_seq))).scalar_one()
    values: list[dict[str, Any]] = []
    for n, (kind, ident, deleted) in enumerate(rows, start=1):
        payload: dict[str, Any] = {} if deleted else {"id": ident, "title": f"t{ident}"}
        values.append(
            {
                "kind": kind,
                "id": ident,
                "version": 1,
                "schema_version": 1,
                "latest_version": 1,
                "latest_schema_version": 1,
                "payload": payload,
                "hash": payload_hash(payload),
                "deleted": deleted,
                "seq": head + n,
                "published_at": T0 + timedelta(seconds=head + n),
            }
        )
    await session.execute(insert(Published), values)
    await session.execute(update(FeedHead).values(last_seq=head + len(rows)))
    await session.commit()


def test_cursor_round_trip() -> None:
    assert feed.encode_cursor("abc", 42) == "abc:42"
    assert feed.decode_cursor("abc:42") == ("abc", 42, 0)
    assert feed.decode_cursor("abc.7:42") == ("abc", 42, 7)
    assert feed.decode_cursor("0") == (None, 0, 0)


@pytest.mark.parametrize(
    "bad", ["", "x", "abc:", ":5", "abc:-1", "abc:01", "a:b:1", "abc:1x", "é:1", "a" * 100 + ":1"]
)
def test_malformed_cursor_is_invalid_input(bad: str) -> None:
    with pytest.raises(InvalidInput, match="invalid cursor"):
        feed.decode_cursor(bad)


def test_entries_are_encoded_with_their_stored_payload_text() -> None:
    """A page splices each payload in as stored; an SSE event carries it on one data line."""
    stored = '{"stem": "a\\nb",\n "n": 1}'  # an escaped newline inside, a raw one between
    entry = {
        "seq": 7,
        "kind": "question",
        "id": 3,
        "version": 2,
        "schema_version": 1,
        "deleted": False,
        "hash": "ab" * 32,
        "payload": stored,
        "published_at": "2026-01-01T00:00:00.000000Z",
    }
    page = feed.FeedPage(entries=[entry], last_seq="e1:7", pending=2, head=feed.Head("e1", 7, 0))
    body = json.loads(feed.page_json(page))
    decoded = {**entry, "payload": {"stem": "a\nb", "n": 1}}
    assert body == {"results": [decoded], "last_seq": "e1:7", "pending": 2}
    lines = feed.entry_event("e1", entry).split("\n")
    assert lines[:2] == ["id: e1:7", "event: entry"]
    assert lines[2].startswith("data: ")
    assert lines[3:] == ["", ""]
    assert json.loads(lines[2].removeprefix("data: ")) == decoded


async def test_empty_feed_from_start(
    session: AsyncSession, reads: async_sessionmaker[AsyncSession]
) -> None:
    async with reads() as r:
        page = await feed.read_feed(r, "0", 10)
        current = await feed.head(r)
    assert page.entries == [] and page.pending == 0 and page.last_seq == "0"
    assert current.last_seq == 0 and current.floor == 0 and current.epoch


async def test_pages_in_seq_order_with_pending(
    session: AsyncSession, reads: async_sessionmaker[AsyncSession]
) -> None:
    await publish_rows(session, [("topic", i, False) for i in range(1, 8)])
    async with reads() as r:
        epoch = (await feed.head(r)).epoch
        first = await feed.read_feed(r, "0", 3)
        second = await feed.read_feed(r, first.last_seq, 3)
        third = await feed.read_feed(r, second.last_seq, 3)
        after = await feed.read_feed(r, third.last_seq, 3)
    assert [e["seq"] for e in first.entries] == [1, 2, 3]
    assert first.last_seq == f"{epoch}:3" and first.pending == 4
    assert [e["seq"] for e in second.entries] == [4, 5, 6] and second.pending == 1
    assert [e["seq"] for e in third.entries] == [7] and third.pending == 0
    assert after.entries == [] and after.last_seq == third.last_seq and after.pending == 0
    entry = first.entries[0]
    assert entry == {
        "seq": 1,
        "kind": "topic",
        "id": 1,
        "version": 1,
        "schema_version": 1,
        "deleted": False,
        "hash": payload_hash({"id": 1, "title": "t1"}),
        "payload": {"id": 1, "title": "t1"},
        "published_at": "2026-01-01T00:00:01.000000Z",
    }


async def test_kinds_filter_and_its_pending(
    session: AsyncSession, reads: async_sessionmaker[AsyncSession]
) -> None:
    await publish_rows(
        session,
        [
            ("topic", 1, False),
            ("card", 1, False),
            ("topic", 2, False),
            ("card", 2, False),
            ("question", 3, False),
            ("card", 3, False),
        ],
    )
    async with reads() as r:
        page = await feed.read_feed(r, "0", 2, kinds=["card"])
        rest = await feed.read_feed(r, page.last_seq, 2, kinds=["card"])
        both = await feed.read_feed(r, "0", 10, kinds=["topic", "question"])
    assert [(e["kind"], e["seq"]) for e in page.entries] == [("card", 2), ("card", 4)]
    assert page.pending == 1
    assert [e["seq"] for e in rest.entries] == [6] and rest.pending == 0
    assert [e["seq"] for e in both.entries] == [1, 3, 5]


async def test_silent_tombstones_are_not_in_the_feed(
    session: AsyncSession, reads: async_sessionmaker[AsyncSession]
) -> None:
    await publish_rows(session, [("topic", 1, False)])
    await session.execute(
        insert(Published).values(
            kind="topic",
            id=2,
            version=3,
            schema_version=1,
            latest_version=3,
            latest_schema_version=1,
            payload={},
            hash=payload_hash({}),
            deleted=True,
            seq=None,
            published_at=T0,
        )
    )
    await session.commit()
    async with reads() as r:
        page = await feed.read_feed(r, "0", 10)
    assert [e["id"] for e in page.entries] == [1]


@pytest.mark.parametrize("limit", [0, -1, 1001])
async def test_limit_out_of_range(reads: async_sessionmaker[AsyncSession], limit: int) -> None:
    async with reads() as r:
        with pytest.raises(InvalidInput, match=r"allowed 1\.\.1000"):
            await feed.read_feed(r, "0", limit)


async def test_unknown_kind(reads: async_sessionmaker[AsyncSession]) -> None:
    async with reads() as r:
        with pytest.raises(InvalidInput, match="allowed kinds are topic, question"):
            await feed.read_feed(r, "0", 10, kinds=["topic", "bogus"])


async def test_cursor_of_another_epoch_needs_reset(
    session: AsyncSession, reads: async_sessionmaker[AsyncSession]
) -> None:
    await publish_rows(session, [("topic", 1, False)])
    async with reads() as r:
        with pytest.raises(ResetRequired, match="epoch"):
            await feed.read_feed(r, "otherepoch:1", 10)


async def test_cursor_beyond_head_needs_reset(
    session: AsyncSession, reads: async_sessionmaker[AsyncSession]
) -> None:
    await publish_rows(session, [("topic", 1, False)])
    async with reads() as r:
        epoch = (await feed.head(r)).epoch
        with pytest.raises(ResetRequired, match="beyond the feed head"):
            await feed.read_feed(r, f"{epoch}:2", 10)


async def test_prune_raises_floor_and_refuses_cursors_below_it(
    session: AsyncSession, reads: async_sessionmaker[AsyncSession]
) -> None:
    # Topics 1 to 5 at seqs 1 to 5: 2, 3 and 4 are tombstones.
    await publish_rows(session, [("topic", i, i in (2, 3, 4)) for i in range(1, 6)])
    deleted = await feed.prune_tombstones(session, older_than=feed.MIN_RETENTION, up_to_seq=3)
    await session.commit()
    assert deleted == 2
    async with reads() as r:
        current = await feed.head(r)
        assert current.floor == 3 and current.last_seq == 5
        epoch = current.epoch
        with pytest.raises(ResetRequired, match="below the feed floor 3"):
            await feed.read_feed(r, f"{epoch}:2", 10)
        at_floor = await feed.read_feed(r, f"{epoch}:3", 10)
        from_start = await feed.read_feed(r, "0", 10)
    assert [e["seq"] for e in at_floor.entries] == [4, 5]
    assert [(e["id"], e["deleted"]) for e in from_start.entries] == [
        (1, False),
        (4, True),
        (5, False),
    ]


async def test_a_bootstrap_after_a_prune_passes_below_the_floor(
    session: AsyncSession, reads: async_sessionmaker[AsyncSession]
) -> None:
    # Live entries below the floor: a consumer reading from 0 after the prune pages through
    # them (it cannot have missed a deletion), while a cursor from before the prune is
    # refused. (Refusing both made every bootstrap after a prune loop on 410.)
    await publish_rows(session, [("topic", 1, False), ("topic", 2, True), ("topic", 3, False)])
    async with reads() as r:
        old = (await feed.read_feed(r, "0", 1)).last_seq
    await feed.prune_tombstones(session, older_than=feed.MIN_RETENTION)
    await session.commit()
    seqs, cursor = [], "0"
    while True:
        async with reads() as r:
            page = await feed.read_feed(r, cursor, 1)
        seqs += [e["seq"] for e in page.entries]
        cursor = page.last_seq
        if not page.pending:
            break
    assert seqs == [1, 3]
    async with reads() as r:
        with pytest.raises(ResetRequired, match="below the feed floor 2"):
            await feed.read_feed(r, old, 1)


async def test_prune_by_age_keeps_recent_tombstones(
    session: AsyncSession, reads: async_sessionmaker[AsyncSession]
) -> None:
    await publish_rows(session, [("card", 1, True), ("card", 2, False), ("card", 3, True)])
    # seq 1 was published at T0+1s, seq 3 at T0+3s; keep those newer than T0+2s.
    now = T0 + timedelta(seconds=2) + feed.MIN_RETENTION
    assert await feed.prune_tombstones(session, older_than=feed.MIN_RETENTION, now=now) == 1
    await session.commit()
    async with reads() as r:
        assert (await feed.head(r)).floor == 1
        page = await feed.read_feed(r, "0", 10)
    assert [e["seq"] for e in page.entries] == [2, 3]


async def test_prune_nothing_keeps_floor(session: AsyncSession) -> None:
    await publish_rows(session, [("card", 1, False)])
    assert await feed.prune_tombstones(session, older_than=feed.MIN_RETENTION, up_to_seq=1) == 0
    await session.commit()
    assert (await feed.head(session)).floor == 0


async def test_prune_refuses_a_retention_under_an_hour(session: AsyncSession) -> None:
    # Shorter than a backfill page may live: a late snapshot could resurrect an entity.
    with pytest.raises(InvalidInput, match="retention 59m is too short: at least 1h"):
        await feed.prune_tombstones(session, older_than=timedelta(minutes=59))


async def test_prune_keeps_a_tombstone_while_its_entity_has_an_outbox_row_waiting(
    engine: AsyncEngine, session: AsyncSession, reads: async_sessionmaker[AsyncSession]
) -> None:
    # Topic 1 was deleted at version 3 (tombstone published); a late snapshot of version 2
    # still waits in the outbox. Pruning must keep the tombstone that refuses it.
    await publish_rows(session, [("topic", 1, True), ("topic", 2, True)])
    await session.execute(update(Published).values(version=3, latest_version=3))
    await enqueue_publish(
        session, kind="topic", source_id=1, source_version=2, payload={"id": 1, "title": "old"}
    )
    await session.commit()

    assert (
        await feed.prune_tombstones(
            session, older_than=feed.MIN_RETENTION, now=utcnow() + 2 * feed.MIN_RETENTION
        )
        == 1
    )  # topic 2 only
    await session.commit()
    assert await Relay(engine).run_once() == Outcomes(stale=1)
    async with reads() as r:
        page = await feed.read_feed(r, "0", 10)
    assert [(e["id"], e["deleted"]) for e in page.entries] == [(1, True)]

    # Once nothing waits for it, the tombstone can go.
    assert (
        await feed.prune_tombstones(
            session, older_than=feed.MIN_RETENTION, now=utcnow() + 2 * feed.MIN_RETENTION
        )
        == 1
    )
    await session.commit()
