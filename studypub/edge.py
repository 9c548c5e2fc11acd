"""Edge feed servers: the feed served from the NATS JetStream stream, with no database.

``studypub serve --edge --nats URL`` runs a feed server that reads what the bridge
(:mod:`studypub.bridge`) publishes instead of the database: ``/v1/feed`` with long-poll, the
Server-Sent Events stream and ``/v1/items``, with the origin's cursors, 410s and scopes, so
that a client moves between origin and edge servers freely. Serving is the origin's
(:class:`studypub.tail.Tail`): only the follower differs.

:class:`EdgeTail` watches the head bucket (``<prefix>_feed``: the current epoch, each
epoch's floor) and follows the current epoch's stream with one ordered consumer per process.
Its window holds the whole stream, that is the feed's current state (the stream is compacted
like the feed), so it answers every cursor: there is no database behind it to page from. Its
memory grows with the feed's state, as a replica's does.

The edge does not answer (503, with a retry hint) until its consumer has delivered what the
stream held when it began: a bootstrap from a half-read stream would look complete and miss
entities. Nor while NATS is unreachable: it cannot know what it misses meanwhile.

Where the origin answers from the database, the edge answers the same from the stream:
- a cursor of another epoch, or below the floor, is a 410 (the floor comes from the bucket;
  the tombstones at or under it leave the window, as they left the feed);
- a page at the head carries the state checksums, kept from the entries the edge holds;
- a cursor of this epoch beyond the edge's head (a client that read further on the origin
  or on another edge) is no error: the page is empty, and a long-poll or a stream waits for
  the edge to catch up.

Entries come in the stream's order, which is the feed's seq order (the bridge publishes in
seq order, and a replay after a crash republishes a suffix); an entry at or below the seq the
edge holds is a replay, and is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import math
import sys
from collections.abc import Coroutine
from typing import Any

import nats
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import DeliverPolicy
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from studypub import bridge, checksums, feed, health, metrics, replica_store
from studypub.errors import FeedUnavailable
from studypub.projection import SHARED
from studypub.store import Head
from studypub.tail import Entry, FeedScope, Kinds, Page, Tail, Window
from studypub.waiting import wait_any

log = logging.getLogger("studypub.edge")

RETRY_S = 1.0  # between attempts to reach NATS, or to find the bridge's bucket
READY_POLL_S = 0.25  # while loading: is the consumer through the stream?
LOAD_TIMEOUT_S = 30.0  # a replica waits this long for the stream to load
HEARTBEAT_S = 2.0  # the consumer's idle heartbeat: a lost consumer is made again after two


class EdgeTail(Tail):
    """Follows the feed's stream on the NATS server at ``nats_url`` (see the module)."""

    def __init__(self, nats_url: str, *, prefix: str = bridge.PREFIX, **options: Any) -> None:
        super().__init__(window=sys.maxsize, **options)
        self.nats_url = nats_url
        self.prefix = prefix
        self.ready = False  # the window holds everything the stream held when we began
        self.connected = False
        self._floors: dict[str, int] = {}  # per epoch, from the bucket
        self._sub: Any = None  # the consumer of the current epoch's stream
        self._following: str | None = None  # the epoch it consumes
        self._loading: asyncio.Task[None] | None = None
        self._received: list[Msg] = []  # delivered, not yet in the window
        self._applying: asyncio.Handle | None = None
        self.unavailable = "not connected to NATS yet"  # why the edge does not answer

    # ------------------------------------------------------------ following the stream

    def _followers(self) -> list[Coroutine[Any, Any, None]]:
        return [self._follow()]

    async def _follow(self) -> None:
        said = False
        while not self.closing.is_set():
            try:
                nc = await nats.connect(
                    bridge.servers_of(self.nats_url),
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=RETRY_S,
                    connect_timeout=5,
                    disconnected_cb=self._disconnected,
                    reconnected_cb=self._reconnected,
                )
            except Exception as exc:
                if not said:
                    log.warning("cannot reach NATS at %s (%s); trying again", self.nats_url, exc)
                    said = True
                await wait_any(self.closing, timeout_s=RETRY_S)
                continue
            self.connected, said = True, False
            try:
                await self._follow_head(nc.jetstream())
            except Exception:
                log.exception("the edge lost the feed's stream; starting again")
                self._set_unavailable("lost the feed's stream; starting again")
                await wait_any(self.closing, timeout_s=RETRY_S)
            finally:
                await self._unsubscribe()
                with contextlib.suppress(Exception):
                    await nc.close()
                self.connected = False

    async def _follow_head(self, js: JetStreamContext) -> None:
        """Watch the head bucket: switch streams on a new epoch, drop tombstones on a floor."""
        kv = await self._bucket(js)
        watcher = await kv.watchall()
        async for update in watcher:
            if update is None or update.value is None or update.operation is not None:
                continue  # the end of the initial values, or a deletion
            value = update.value.decode()
            if update.key == bridge.EPOCH_KEY:
                if value != self._following:
                    await self._switch(js, value)
            elif update.key.startswith("floor."):
                epoch = update.key.removeprefix("floor.")
                self._floors[epoch] = int(value)
                if self.head is not None and epoch == self.head.epoch:
                    self._raise_floor(int(value))

    async def _bucket(self, js: JetStreamContext) -> KeyValue:
        name = bridge.head_bucket(self.prefix)
        said = False
        while True:
            try:
                return await js.key_value(name)
            except (BucketNotFoundError, NotFoundError):
                self.unavailable = "nothing published to NATS yet"
                if not said:
                    log.warning("no bucket %s in NATS: is `studypub bridge` running?", name)
                    said = True
                await wait_any(self.closing, timeout_s=RETRY_S)

    async def _switch(self, js: JetStreamContext, epoch: str) -> None:
        """Start afresh on ``epoch``'s stream: cursors of the old epoch get a 410 from now."""
        await self._unsubscribe()
        self._received.clear()
        self.head = Head(epoch, 0, self._floors.get(epoch, 0))
        self.window = Window(epoch, 0, self.window_size)
        self.book = checksums.Book()
        self.ready = False
        self._set_unavailable(f"loading feed epoch {epoch} from NATS")
        name = bridge.stream_name(self.prefix, epoch)
        info = await js.stream_info(name)
        self._sub = await js.subscribe(
            f"{self.prefix}.{epoch}.>",
            stream=name,
            cb=self._deliver,
            ordered_consumer=True,
            deliver_policy=DeliverPolicy.ALL,
            idle_heartbeat=HEARTBEAT_S,
        )
        self._following = epoch
        log.info("following stream %s (%d messages)", name, info.state.messages)
        if info.state.messages:
            self._loading = asyncio.create_task(self._until_loaded(self._sub))
        else:
            self._set_ready()

    async def _until_loaded(self, sub: Any) -> None:
        """Ready once the consumer has nothing more to deliver and all it delivered is in
        the window (the common case is caught sooner, in :meth:`_apply`; this one also sees
        a stream whose last messages were purged while we read it)."""
        while not self.ready:
            await asyncio.sleep(READY_POLL_S)
            with contextlib.suppress(Exception):
                info = await sub.consumer_info()
                if info.num_pending == 0 and not self._received and not sub.pending_msgs:
                    self._set_ready()

    async def _unsubscribe(self) -> None:
        if self._loading is not None:
            self._loading.cancel()
            self._loading = None
        sub, self._sub = self._sub, None
        self._following = None  # the next pass loads the stream again
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()

    async def _deliver(self, msg: Msg) -> None:
        """The consumer's callback: entries delivered together are applied together, once
        the deliveries already queued are through (one change of the tail, not one each)."""
        self._received.append(msg)
        if self._applying is None:
            self._applying = asyncio.get_running_loop().call_soon(self._apply)

    def _apply(self) -> None:
        self._applying = None
        received, self._received = self._received, []
        head, window = self.head, self.window
        if head is None or window is None:
            return
        subjects = f"{self.prefix}.{head.epoch}."
        last, loaded = head.last_seq, False
        for msg in received:
            if not msg.subject.startswith(subjects):
                continue  # from the previous epoch's consumer
            body = json.loads(msg.data)
            seq = body["seq"]
            if seq <= last:
                continue  # a replay of an entry held already
            last = seq
            loaded = loaded or msg.metadata.num_pending == 0
            if body["deleted"] and seq <= head.floor:
                continue  # a tombstone pruned from the feed, not yet from the stream
            entry = Entry(
                seq=seq,
                kind=body["kind"],
                id=body["id"],
                scope=(msg.headers or {}).get(bridge.SCOPE_HEADER, SHARED),
                json=msg.data,
                event=feed.event_of(head.epoch, seq, head.floor, msg.data.decode()).encode(),
                hash=body["hash"],
                deleted=body["deleted"],
            )
            older = window.get(entry.kind, entry.id)
            if older is not None and older.live and not older.deleted:
                self.book.add((older.kind, older.scope), older.hash, -1)
            if not entry.deleted:
                self.book.add((entry.kind, entry.scope), entry.hash)
            window.append([entry], seq)
        window.append([], last)
        if last == head.last_seq and not loaded:
            return
        self.head = Head(head.epoch, last, head.floor)
        metrics.FEED_WINDOW_ENTRIES.set(len(window))
        if loaded and not self.ready:
            self._set_ready()
        self._notify()

    def _raise_floor(self, floor: int) -> None:
        head, window = self.head, self.window
        if head is None or window is None or floor <= head.floor:
            return
        self.head = Head(head.epoch, head.last_seq, floor)
        window.drop_tombstones(floor)
        self._notify()

    def _set_ready(self) -> None:
        self.ready = True
        if self.connected:
            self._fresh_until = math.inf
        self._notify()

    def _set_unavailable(self, why: str) -> None:
        self.unavailable = why
        self._fresh_until = 0.0
        self._notify()

    async def _disconnected(self) -> None:
        self.connected = False
        log.warning("lost NATS at %s; reconnecting", self.nats_url)
        self._set_unavailable("the edge lost NATS; reconnecting")

    async def _reconnected(self) -> None:
        self.connected = True
        if self.ready:
            self._set_ready()

    async def _closed(self) -> None:
        await self._unsubscribe()

    def readiness(self) -> health.Checks:
        return {"feed": health.OK if self._answers() else self.unavailable}

    async def loaded(self, timeout_s: float) -> bool:
        """Wait until the edge answers (connected, the stream loaded), up to ``timeout_s``."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while not self._answers():
            if asyncio.get_running_loop().time() > deadline or self.closing.is_set():
                return False
            await asyncio.sleep(READY_POLL_S / 5)
        return True

    # ------------------------------------------------------------ serving

    async def read(
        self, cursor: feed.Cursor, limit: int, kinds: Kinds, scope: FeedScope = None
    ) -> Page:
        """From the window; there is nothing behind it (see the module)."""
        page = self.from_window(cursor, limit, kinds, scope)
        if page is not None:
            return page
        head = self.head
        if head is None:
            raise FeedUnavailable(f"the edge has no feed yet: {self.unavailable}")
        # The 410s first: a client of an old epoch hears of it even while a new one loads.
        if cursor.epoch is not None and cursor.epoch != head.epoch:
            feed.check_cursor(cursor, head)
        if not self._answers():
            raise FeedUnavailable(f"the edge cannot answer now: {self.unavailable}")
        # Beyond our head is the only case left that the window does not cover.
        feed.check_cursor(cursor, Head(head.epoch, max(head.last_seq, cursor.seq), head.floor))
        return Page(
            entries=[],
            pending=0,
            epoch=head.epoch,
            floor=head.floor,
            seen=cursor.seq,
            full=False,
            since=feed.encode_cursor(head.epoch, cursor.seq, cursor.floor),
        )

    async def item(self, kind: str, id_: int, scope: FeedScope = None) -> dict[str, Any] | None:
        feed.parse_kinds([kind])
        if self.window is None or not self._answers():
            raise FeedUnavailable(f"the edge cannot answer now: {self.unavailable}")
        entry = self.window.get(kind, id_)
        if entry is None or entry.deleted:
            return None
        if scope is not None and entry.scope not in (SHARED, scope):
            return None  # another learner's: exactly as if unknown
        item: dict[str, Any] = json.loads(entry.json)
        return item


class StreamFeed:
    """The feed read straight from the NATS stream, for a replica (``studypub replicate
    --from nats://...``): an :class:`EdgeTail` in this process, paged as a server pages it
    (see :class:`studypub.replica.Feed`). It loads the stream when it starts: a replica that
    resumes reads it again, and applies only what follows its cursor."""

    def __init__(self, nats_url: str, *, prefix: str = bridge.PREFIX) -> None:
        self.nats_url = nats_url
        self.tail = EdgeTail(nats_url, prefix=prefix)

    async def page(
        self, since: str, *, limit: int, wait_s: int, kinds: str | None
    ) -> replica_store.Page:
        await self.tail.start()  # once: it returns at once when started
        if not await self.tail.loaded(LOAD_TIMEOUT_S):
            raise FeedUnavailable(
                f"no feed from {self.nats_url} within {LOAD_TIMEOUT_S:.0f} s: "
                f"{self.tail.unavailable}"
            )
        page = await self.tail.page(
            since, limit, feed.parse_kinds(kinds.split(",") if kinds else None), wait_s=wait_s
        )
        states = page.checksums
        return replica_store.Page(
            since=since,
            results=[json.loads(entry.json) for entry in page.entries],
            last_seq=page.last_seq,
            pending=page.pending,
            checksums=None if states is None else {k: v.as_json() for k, v in states.items()},
        )

    async def aclose(self) -> None:
        await self.tail.stop()
