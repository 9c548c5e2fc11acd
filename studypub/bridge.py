"""The bridge: the feed, published entry by entry to a NATS JetStream stream.

One stream per feed epoch (``<PREFIX>_<epoch>``), one subject per entity
(``<prefix>.<epoch>.<kind>.<id>``) keeping only its newest message: a compacted log, like
the feed. Each message is the entry's JSON exactly as the HTTP feed serves it, with headers
``Nats-Msg-Id: <epoch>:<seq>`` (JetStream drops a message it already stored under that id
within the stream's duplicate window), ``Studypub-Seq``, ``Studypub-Deleted`` and, for a
learner's entry, ``Studypub-Scope``. The feed's head goes to a key-value bucket
(``<prefix>_feed``): key ``epoch`` the current epoch (put once its stream exists), key
``floor.<epoch>`` its floor. The tombstones a prune removed from the feed are purged from the
stream (those this bridge published since it started; an edge server drops the others by the
floor, see :mod:`studypub.edge`).

Never a dual write: the bridge follows the committed feed (its cursor, plus the feed's
wake-ups), like any consumer, and publishes in seq order. So a replay, after a crash, can
only publish an entity's current entry again: never an older version. It resumes from the
seq of the stream's last message, re-reading a window of entries before it, which the
message ids deduplicate.

Exactly one bridge publishes at a time: a PostgreSQL session advisory lock held on a
connection of its own (or, on SQLite, a lock on a file beside the database); a second bridge
waits as a standby and takes over when the first goes away. A bridge that loses its lock
connection stops publishing at once and goes back to standby.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg  # type: ignore[import-untyped]
import nats
from nats.js import JetStreamContext
from nats.js.api import DiscardPolicy, StorageType, StreamConfig
from nats.js.errors import NotFoundError
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import feed, store
from studypub.db import application_name, dialect_of, read_session_factory
from studypub.notify import FEED_CHANNEL, asyncpg_dsn, pg_listen
from studypub.waiting import wait_any

log = logging.getLogger("studypub.bridge")

PREFIX = "studypub"
BATCH = 1000
POLL_INTERVAL_S = 1.0  # the safety net under the feed's wake-ups
STANDBY_POLL_S = 1.0
RETRY_S = 1.0  # after a failure to publish
DUPLICATE_WINDOW_S = 120.0
LOCK_KEY = 0x5354_5542_5244  # "STUBRD": the bridge's advisory lock on PostgreSQL
EPOCH_KEY = "epoch"
SCOPE_HEADER = "Studypub-Scope"


def servers_of(nats_url: str) -> list[str]:
    """The servers of a NATS URL: one, or several separated by commas (a cluster)."""
    return [url.strip() for url in nats_url.split(",") if url.strip()]


def stream_name(prefix: str, epoch: str) -> str:
    return f"{prefix.upper()}_{epoch}"


def head_bucket(prefix: str) -> str:
    """The key-value bucket of the feed's head: the current epoch, and each epoch's floor."""
    return f"{prefix}_feed"


def floor_key(epoch: str) -> str:
    return f"floor.{epoch}"


def stream_config(prefix: str, epoch: str) -> StreamConfig:
    """The stream of one epoch: a compacted log (one message kept per subject)."""
    return StreamConfig(
        name=stream_name(prefix, epoch),
        subjects=[f"{prefix}.{epoch}.>"],
        storage=StorageType.FILE,
        max_msgs_per_subject=1,
        discard=DiscardPolicy.OLD,
        duplicate_window=DUPLICATE_WINDOW_S,
    )


def message_of(prefix: str, epoch: str, row: Any) -> tuple[str, bytes, dict[str, str]]:
    """The message of a feed row read with ``raw_payload``: (subject, body, headers)."""
    headers = {
        "Nats-Msg-Id": f"{epoch}:{row.seq}",
        "Studypub-Seq": str(row.seq),
        "Studypub-Deleted": "true" if row.deleted else "false",
    }
    if row.scope:
        headers[SCOPE_HEADER] = row.scope
    body = feed.entry_json(feed.entry_of(row, raw=True)).encode()
    return subject_of(prefix, epoch, row.kind, row.id), body, headers


def subject_of(prefix: str, epoch: str, kind: str, id_: int) -> str:
    return f"{prefix}.{epoch}.{kind}.{id_}"


@dataclass
class Sent:
    """A batch sent: its acks' futures, and its last seq."""

    acks: list[asyncio.Future[Any]]
    last_seq: int


@dataclass
class BridgeStats:
    published: int = 0  # messages sent (JetStream may drop repeats by their id)
    purged: int = 0  # tombstone subjects purged after prunes
    epoch: str | None = None
    bridged_seq: int = 0  # the last feed seq published
    active: bool = False


class Bridge:
    """Follows the feed of ``engine`` and publishes it to JetStream at ``nats_url``."""

    def __init__(
        self,
        engine: AsyncEngine,
        nats_url: str,
        *,
        prefix: str = PREFIX,
        batch: int = BATCH,
        poll_interval_s: float = POLL_INTERVAL_S,
        on_state: Callable[[str], None] | None = None,
    ) -> None:
        self.engine = engine
        self.nats_url = nats_url
        self.prefix = prefix
        self.batch = batch
        self.poll_interval_s = poll_interval_s
        self.on_state = on_state or (lambda _state: None)
        self.stats = BridgeStats()
        self._reads = read_session_factory(engine)
        self._url = engine.url.render_as_string(hide_password=False)
        self._woken = asyncio.Event()
        self._tombstones: dict[str, int] = {}  # subject -> seq, of tombstones published

    def stream_name(self, epoch: str) -> str:
        return stream_name(self.prefix, epoch)

    @property
    def bucket(self) -> str:
        return head_bucket(self.prefix)

    # ------------------------------------------------------------ running

    async def run(self, stop: asyncio.Event) -> None:
        """Standby until this bridge holds the lock, then publish until ``stop``; back to
        standby if the lock is lost."""
        while not stop.is_set():
            async with self._leadership(stop) as lost:
                if stop.is_set():
                    return
                self.stats.active = True
                self.on_state("active")
                try:
                    await self._publish_until_lost(stop, lost)
                finally:
                    self.stats.active = False
            if not stop.is_set():
                self.on_state("standby")

    async def _publish_until_lost(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        """Publish; after a failure (NATS or the database away), resume from the stream."""
        while not (stop.is_set() or lost.is_set()):
            try:
                await self._publish_while(stop, lost)
            except Exception as exc:
                log.warning("publishing stopped (%s); resuming in %.0f s", exc, RETRY_S)
                await wait_any(stop, lost, timeout_s=RETRY_S)

    async def _publish_while(self, stop: asyncio.Event, lost: asyncio.Event) -> None:
        nc = await nats.connect(servers_of(self.nats_url), max_reconnect_attempts=-1)
        listener = None
        if dialect_of(self.engine) == "postgresql":
            listener = asyncio.create_task(pg_listen(self._url, FEED_CHANNEL, self._woken.set))
        try:
            js = nc.jetstream()
            kv = await js.create_key_value(bucket=self.bucket, history=1)
            while not (stop.is_set() or lost.is_set()):
                await self._bridge_epoch(js, kv, stop, lost)
        finally:
            if listener is not None:
                listener.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await listener
            await nc.close()

    async def _bridge_epoch(
        self, js: JetStreamContext, kv: Any, stop: asyncio.Event, lost: asyncio.Event
    ) -> None:
        """Publish the current epoch's feed until the epoch changes (or a stop)."""
        async with self._reads() as session:
            head = await store.read_head(session)
        epoch = head.epoch
        name = self.stream_name(epoch)
        # Resuming, entries are re-read before the stream's last one: two batches, the most
        # that can be unacknowledged when a publication fails (see _acknowledged).
        after = max(0, await self._resume_point(js, name, epoch) - 2 * self.batch)
        # The floor first, then the epoch: an edge that sees the new epoch finds its stream
        # and its floor there.
        await kv.put(floor_key(epoch), str(head.floor).encode())
        await kv.put(EPOCH_KEY, epoch.encode())
        self.stats.epoch, floor = epoch, head.floor
        self._tombstones.clear()
        log.info("bridging feed epoch %s to stream %s from seq %d", epoch, name, after)
        # A batch sent, its acks not awaited yet: the next batch is read from the database
        # meanwhile. So at most two batches are unacknowledged (see the resume point above).
        sent: Sent | None = None
        while not (stop.is_set() or lost.is_set()):
            self._woken.clear()  # before the read: a commit during it wakes the next one
            async with self._reads() as session:
                head = await store.read_head(session)
                rows = await store.read_entries(
                    session, after_seq=after, limit=self.batch, kinds=None, raw_payload=True
                )
            if sent is not None:
                await self._acknowledged(sent)
                sent = None
            if head.epoch != epoch:
                return  # a new epoch: a new stream
            if rows:
                sent = await self._send(js, epoch, rows)
                after = rows[-1].seq
                if len(rows) == self.batch:
                    continue
                await self._acknowledged(sent)
                sent = None
            if head.floor != floor:
                await self._raise_floor(js, kv, name, epoch, head.floor)
                floor = head.floor
            await wait_any(self._woken, stop, lost, timeout_s=self.poll_interval_s)

    async def _resume_point(self, js: JetStreamContext, name: str, epoch: str) -> int:
        """The seq of the stream's last message (0 for a new stream, created here)."""
        config = stream_config(self.prefix, epoch)
        try:
            info = await js.stream_info(name)
        except NotFoundError:
            await js.add_stream(config)
            return 0
        if not info.state.last_seq:
            return 0
        try:
            last = await js.get_msg(name, seq=info.state.last_seq)
        except NotFoundError:  # the last message was purged: replay everything (safe)
            return 0
        return int((last.headers or {}).get("Studypub-Seq", 0))

    async def _send(self, js: JetStreamContext, epoch: str, rows: Any) -> Sent:
        """One batch, pipelined; :meth:`_acknowledged` awaits its acks."""
        acks = []
        for row in rows:
            subject, body, headers = message_of(self.prefix, epoch, row)
            acks.append(await js.publish_async(subject, body, headers=headers))
            if row.deleted:
                self._tombstones[subject] = row.seq
            else:
                self._tombstones.pop(subject, None)
        return Sent(acks, rows[-1].seq)

    async def _acknowledged(self, sent: Sent) -> None:
        """Every ack of a batch: a failure raises, and the bridge resumes from the stream,
        re-reading two batches before its last message (messages are stored in the order
        they were sent, and their ids drop what was stored already)."""
        await asyncio.gather(*sent.acks)
        self.stats.published += len(sent.acks)
        self.stats.bridged_seq = sent.last_seq

    async def _raise_floor(
        self, js: JetStreamContext, kv: Any, name: str, epoch: str, floor: int
    ) -> None:
        """Publish the floor; purge the pruned tombstones this bridge knows of."""
        pruned = [subject for subject, seq in self._tombstones.items() if seq <= floor]
        for subject in pruned:
            await js.purge_stream(name, subject=subject)
            del self._tombstones[subject]
        self.stats.purged += len(pruned)
        await kv.put(floor_key(epoch), str(floor).encode())

    # ------------------------------------------------------------ one bridge at a time

    @contextlib.asynccontextmanager
    async def _leadership(self, stop: asyncio.Event) -> AsyncIterator[asyncio.Event]:
        """Wait until this bridge holds the lock; yields an event set if it is lost."""
        if dialect_of(self.engine) == "postgresql":
            async with self._pg_lock(stop) as lost:
                yield lost
        else:
            async with self._file_lock(stop) as lost:
                yield lost

    @contextlib.asynccontextmanager
    async def _pg_lock(self, stop: asyncio.Event) -> AsyncIterator[asyncio.Event]:
        lost = asyncio.Event()
        conn = None
        said = False
        while not stop.is_set():
            try:
                conn = conn or await asyncpg.connect(
                    asyncpg_dsn(self._url),
                    timeout=10,
                    server_settings={"application_name": application_name("bridge")},
                )
                if await conn.fetchval("SELECT pg_try_advisory_lock($1)", LOCK_KEY):
                    break
            except (OSError, asyncpg.PostgresError) as exc:
                log.warning("cannot reach the database for the bridge lock: %s", exc)
                conn = None
            if not said:
                self.on_state("standby")
                said = True
            await wait_any(stop, timeout_s=STANDBY_POLL_S)
        if stop.is_set() or conn is None:
            if conn is not None:
                await conn.close()
            yield lost
            return
        watch = asyncio.create_task(self._watch(conn, lost))
        try:
            yield lost
        finally:
            watch.cancel()
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await watch
            with contextlib.suppress(Exception):
                await conn.close()  # the session lock goes with the connection

    async def _watch(self, conn: Any, lost: asyncio.Event) -> None:
        """The lock lives as long as its connection: check it every poll."""
        while True:
            await asyncio.sleep(STANDBY_POLL_S)
            try:
                await asyncio.wait_for(conn.fetchval("SELECT 1"), timeout=5)
            except Exception:
                log.warning("lost the bridge lock's connection: back to standby")
                lost.set()
                return

    @contextlib.asynccontextmanager
    async def _file_lock(self, stop: asyncio.Event) -> AsyncIterator[asyncio.Event]:
        database = self.engine.url.database or "studypub.db"
        path = Path(f"{database}-bridge.lock")
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        said = False
        try:
            while not stop.is_set():
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if not said:
                        self.on_state("standby")
                        said = True
                    await wait_any(stop, timeout_s=STANDBY_POLL_S)
            yield asyncio.Event()  # a file lock is not lost while the process lives
        finally:
            os.close(fd)  # releases the lock
