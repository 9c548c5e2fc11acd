"""The feed tail: each server process reads the feed once, and serves every viewer from memory.

One task per process follows the feed: it wakes on the feed notification (PostgreSQL
``LISTEN``, or the in-process signal of an embedded relay on SQLite) and polls as the safety
net; it reads each new range of entries once, in one read transaction (the head, then the
entries after the last one it holds: two statements per commit), and keeps a :class:`Window`
of the newest entries, each encoded once as page JSON and as a Server-Sent Event. Every
page, long-poll and stream whose cursor falls inside the window is answered from it,
filtered per client in memory (``kinds`` today; any per-client rule tomorrow); a client
behind the window pages from the database (:func:`studypub.feed.read_feed`) until it reaches
the window. So the database work per commit, and while idle, is the same for one viewer or
ten thousand.

The window is compacted like the feed: when an entity moves to a new seq its older entry
leaves the window, and a prune's tombstones leave it when the tail reads the new floor. A
page from the window is then the page the database would have answered when the tail last
read it.

Waiters never poll the database. Long-polls wait on one future per change of the tail
(:meth:`Tail.wait`), shared by all of them, which costs one callback per waiter. Streams at
the head park (:meth:`Tail.park`): the tail writes each new entry to their sockets itself,
one write per stream and no task woken (:meth:`Tail._serve_parked`).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import enum
import functools
import logging
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, AsyncSession

from studypub import checksums, feed, health, metrics, store
from studypub.db import dialect_of, read_only, read_session_factory
from studypub.errors import TransientError
from studypub.notify import FEED_CHANNEL, feed_signal, pg_listen
from studypub.projection import SHARED
from studypub.store import Head
from studypub.waiting import wait_any

WINDOW_ENTRIES = 10_000
READ_BATCH = 1_000
COMPACT_MIN = 1_000  # superseded entries a window keeps before it compacts
POLL_INTERVAL_S = 1.0
HEARTBEAT_S = 15.0  # streams send a comment after this long of silence (see Beat)
TICK_S = 1.0
SEND_TIMEOUT_S = 10.0
WRITE_LIMIT = 1_000  # entries the tail writes to a parked stream at once (more: it reads on)
HEARTBEAT = b": heartbeat\n\n"
# The window answers only while the tail's last read is this recent and did not fail: when
# the database is away, every read goes to it and gets the 503 of the failure contract.
FRESH_FOR_S = 5.0

log = logging.getLogger("studypub.tail")

Kinds = tuple[str, ...] | None
FeedScope = str | None  # a learner's scope, or None: every scope (see studypub.tokens.Viewer)


# ---------------------------------------------------------------- entries and the window


@dataclass(slots=True, eq=False)
class Entry:
    """One feed entry, encoded once for every client: ``json`` as it stands in a page,
    ``event`` as a Server-Sent Event (its ``id:`` is the cursor after it)."""

    seq: int
    kind: str
    id: int
    scope: str  # projection.SHARED ('') or a learner: who may see it (tokens.Viewer)
    json: bytes
    event: bytes
    hash: str = ""  # the payload hash (the edge keeps the state checksums from it)
    deleted: bool = False
    live: bool = True  # False once a newer entry of the same entity is in the window

    @classmethod
    def encode(cls, entry: Mapping[str, Any], head: Head, scope: str = SHARED) -> Entry:
        """From a feed entry read with ``raw_payload`` (:func:`studypub.feed.entry_of`).
        ``scope`` matters to the window only: a page read from the database for one client
        is filtered already, and its entries never enter the window."""
        return cls(
            seq=entry["seq"],
            kind=entry["kind"],
            id=entry["id"],
            scope=scope,
            json=feed.entry_json(entry).encode(),
            event=feed.entry_event(head.epoch, entry, head.floor).encode(),
            hash=entry["hash"],
            deleted=entry["deleted"],
        )


class Window:
    """The newest entries of one epoch, in seq order, compacted, at most ``size`` of them.

    It covers the cursors from ``start`` to ``last``: every entry the feed holds with a seq
    in ``(start, last]`` (as of the tail's last read) is in the window.
    """

    def __init__(self, epoch: str, start: int, size: int = WINDOW_ENTRIES) -> None:
        self.epoch = epoch
        self.start = start
        self.last = start
        self.size = size
        self._entries: list[Entry] = []
        self._seqs: list[int] = []  # the entries' seqs, for bisect
        self._first = 0  # index of the oldest entry kept (older ones are evicted)
        self._by_key: dict[tuple[str, int], Entry] = {}
        self._dead = 0
        self._dropped_through = 0  # tombstones up to here are forgotten (drop_tombstones)

    def __len__(self) -> int:
        return len(self._entries) - self._first - self._dead

    def covers(self, after: int) -> bool:
        return self.start <= after <= self.last

    def append(self, entries: Sequence[Entry], last: int) -> None:
        """Add entries newer than every entry held; ``last``: the head they were read up to."""
        for entry in entries:
            key = (entry.kind, entry.id)
            older = self._by_key.get(key)
            if older is not None and older.live:
                older.live = False
                self._dead += 1
            self._by_key[key] = entry
            self._entries.append(entry)
            self._seqs.append(entry.seq)
        self.last = max(self.last, last)
        self._evict()

    def get(self, kind: str, id_: int) -> Entry | None:
        """The entity's newest entry in the window, if it has one."""
        return self._by_key.get((kind, id_))

    def drop_tombstones(self, through: int) -> None:
        """Forget the tombstones with seq <= ``through`` (pruned from the feed); each entry
        is looked at once, whatever the number of calls."""
        if through <= self._dropped_through:
            return
        first = bisect.bisect_right(self._seqs, self._dropped_through, lo=self._first)
        self._dropped_through = through
        entries = self._entries
        for i in range(first, len(entries)):  # by index: islice would walk from 0
            entry = entries[i]
            if entry.seq > through:
                break
            if entry.live and entry.deleted:
                entry.live = False
                self._dead += 1
                del self._by_key[(entry.kind, entry.id)]

    def select(
        self, after: int, limit: int, kinds: Kinds, scope: FeedScope = None
    ) -> tuple[list[Entry], int]:
        """Up to ``limit`` live entries after ``after`` (of ``kinds``; with ``scope``, only
        the shared ones and that learner's), and how many more follow them, counted up to
        :data:`studypub.feed.PENDING_CAP`."""
        # Every stream runs this at every change: the common cases (nothing new, or one
        # entry) stay a bisect and a few comparisons. SHARED is '': falsy.
        first = bisect.bisect_right(self._seqs, after, lo=self._first)
        found: list[Entry] = []
        pending = 0
        entries = self._entries
        # By index, not islice: islice would step through every entry before ``first``, and
        # a stream at the head reads after nearly all of them.
        for i in range(first, len(entries)):
            entry = entries[i]
            if (
                not entry.live
                or (kinds is not None and entry.kind not in kinds)
                or (scope is not None and entry.scope and entry.scope != scope)
            ):
                continue
            if len(found) < limit:
                found.append(entry)
            else:
                pending += 1
                if pending == feed.PENDING_CAP:
                    break
        return found, pending

    def _evict(self) -> None:
        while len(self._entries) - self._first > self.size:
            entry = self._entries[self._first]
            self._first += 1
            self.start = entry.seq
            if entry.live:
                del self._by_key[(entry.kind, entry.id)]
            else:
                self._dead -= 1
        # Compact now and then: the lists keep their evicted and superseded entries until
        # then, so that appending stays cheap. Superseded ones, once they outnumber the live
        # ones: a window as large as the feed (an edge's) must not grow with every update.
        if self._first > self.size or self._dead > max(len(self), COMPACT_MIN):
            kept = [e for e in self._entries[self._first :] if e.live]
            self._dead = 0
            self._first = 0
            self._entries = kept
            self._seqs = [e.seq for e in kept]


# ---------------------------------------------------------------- pages served


@dataclass(frozen=True, slots=True)
class Page:
    """A page for one client: encoded entries, the cursor after them, how many follow.

    ``seen``: the head this page looked up to (a client waiting for more waits for an entry
    after it); ``full``: as many entries as asked for. ``cursor(seq)``: a client's position
    within this page's reading.
    """

    entries: list[Entry]
    pending: int
    epoch: str
    floor: int  # the floor it was read under: a client reading on carries it
    seen: int
    full: bool
    since: str  # the cursor it was read after
    # At the head (see feed.FeedPage): the checksums, made only when a page body asks (a
    # stream never does: thousands of streams at the head must not each build them).
    at_head: Callable[[], dict[str, checksums.State]] | None = None

    @property
    def checksums(self) -> dict[str, checksums.State] | None:
        return None if self.at_head is None else self.at_head()

    @property
    def last_seq(self) -> str:
        """The cursor after this page (made only when asked: a stream never needs it)."""
        if not self.entries:
            return self.since
        return feed.encode_cursor(self.epoch, self.entries[-1].seq, self.floor)

    def body(self) -> bytes:
        return feed.page_body(
            [entry.json for entry in self.entries], self.last_seq, self.pending, self.checksums
        )

    def events(self) -> bytes:
        return b"".join(entry.event for entry in self.entries)

    def cursor(self, seq: int) -> feed.Cursor:
        return feed.Cursor(self.epoch, seq, self.floor)


# Counting the statements the feed costs (studypub_feed_db_statements_total): the engine's
# statements are counted while a tail read or a database page is being read, whichever
# coroutine runs them (a context variable follows the coroutine into SQLAlchemy's greenlet).
_READER: ContextVar[str | None] = ContextVar("studypub_feed_reader", default=None)


def _count_statement(*_args: Any) -> None:
    reader = _READER.get()
    if reader is not None:
        metrics.FEED_DB_STATEMENTS.labels(reader=reader).inc()


@contextlib.contextmanager
def _reading(reader: str) -> Iterator[None]:
    token = _READER.set(reader)
    try:
        yield
    finally:
        _READER.reset(token)


# ---------------------------------------------------------------- streams


class Stream:
    """What the tail knows of one open stream: enough to end it from outside.

    A stream sets ``sending_since`` while a send of its is under way; one that stays in a
    send longer than ``send_timeout_s`` (its socket buffer full: a client that reads
    nothing) is ended by the tail's ticker. One check a second for every stream costs less
    than a timer for every send.
    """

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.sending_since: float | None = None
        self.ended: str | None = None

    def end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
            self.task.cancel()


class Written(enum.Enum):
    """What a direct write to a parked stream's socket did (see :class:`Parked`)."""

    NOTHING = "nothing"  # the buffer was full or the client gone: the stream sends it itself
    DONE = "done"
    FILLED = "filled"  # written, and the client's buffer is now full


class Parked:
    """A stream waiting at the head (:meth:`Tail.park`): what the tail needs to serve it
    without waking it.

    ``write``, when the server lets the stream write to its socket directly (see
    :func:`studypub.api.stream.direct_writer`), sends bytes at once and says what it did
    (:class:`Written`). The tail then writes each new entry and heartbeat itself, the same
    bytes to every stream of the same filter, and moves ``cursor`` on; it wakes the stream
    (sets ``woken``) only for what it cannot do alone: an entry or heartbeat it could not
    write, a page longer than one write, a cursor the window no longer answers (a reset, the
    database away), the server stopping, and a client buffer that a write filled.
    ``heartbeat``: the stream was woken to send a heartbeat itself. ``drain``: it was woken
    to wait for its client to read what the tail wrote, under the send timeout like any
    send of its own: else a client that reads nothing would hold its full buffer, unnoticed,
    until something else is written to it. ``sent``: something was sent since the last
    beat, ``beat`` the last beat it saw.
    """

    __slots__ = ("beat", "cursor", "drain", "heartbeat", "kinds", "scope", "sent", "woken", "write")

    def __init__(
        self,
        cursor: feed.Cursor,
        kinds: Kinds,
        scope: FeedScope,
        write: Callable[[bytes], Written] | None,
        *,
        beat: int,
        sent: bool,
    ) -> None:
        self.cursor, self.kinds, self.scope, self.write = cursor, kinds, scope, write
        self.beat, self.sent, self.heartbeat, self.drain = beat, sent, False, False
        self.woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(self) -> None:
        if not self.woken.done():
            self.woken.set_result(None)


# ---------------------------------------------------------------- the tail


class Tail:
    """What serves the feed's readers from a window: the part common to the tail that
    follows the database (:class:`FeedTail`) and the one that follows a NATS stream
    (:class:`studypub.edge.EdgeTail`).

    A subclass follows its source in the tasks :meth:`_followers` returns, keeps
    :attr:`head`, :attr:`window` and :attr:`book`, calls :meth:`_notify` when they change,
    and answers what the window cannot (:meth:`read` behind the window, :meth:`item`).
    ``start()`` and ``stop()`` belong to the app's lifespan; ``stop()`` is idempotent.
    """

    def __init__(
        self,
        *,
        window: int = WINDOW_ENTRIES,
        poll_interval_s: float = POLL_INTERVAL_S,
        heartbeat_s: float | None = None,
        send_timeout_s: float = SEND_TIMEOUT_S,
    ) -> None:
        self.poll_interval_s = poll_interval_s
        self.heartbeat_s = heartbeat_s or HEARTBEAT_S
        self.send_timeout_s = send_timeout_s
        # Raised every heartbeat_s: a stream silent since the last beat gets a heartbeat
        # comment, written by the tail to a parked stream (no timer per stream).
        self.beat = 0
        self.streams: set[Stream] = set()
        self._parked: set[Parked] = set()
        self._beat_served = 0
        self.window_size = window
        self.head: Head | None = None
        self.window: Window | None = None
        # The state checksums as of the window's last read (read in the same transaction).
        self.book = checksums.Book()
        self.closing = asyncio.Event()  # the server shuts down: waiters answer now
        self._tasks: list[asyncio.Task[None]] = []
        # One event per change of the tail, shared by every waiter (an Event: each waiter
        # waits on a future of its own, so a cancelled waiter touches no one else's).
        self._changed = asyncio.Event()
        # The window answers only until then (see FRESH_FOR_S): a subclass moves it on.
        self._fresh_until = 0.0

    # ------------------------------------------------------------ lifecycle

    def _followers(self) -> list[Coroutine[Any, Any, None]]:
        """The tasks that follow the source, started by :meth:`start`."""
        raise NotImplementedError

    async def _closed(self) -> None:
        """Release what the followers held, after they stopped."""

    def readiness(self) -> health.Checks:
        """The tail's readiness checks (see :mod:`studypub.health`)."""
        return {}

    async def start(self) -> None:
        if self._tasks:
            return
        for follower in self._followers():
            self._tasks.append(asyncio.create_task(follower, name="studypub-feed-follower"))
        self._tasks.append(asyncio.create_task(self._tick(), name="studypub-feed-ticker"))

    async def stop(self) -> None:
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._closed()

    def close_waiters(self) -> None:
        """Answer every long-poll now and end every stream (the server is shutting down):
        open streams would otherwise hold the shutdown until its grace period ends, and
        clients reconnect faster to a server that is up."""
        self.closing.set()
        self._notify()

    async def _tick(self) -> None:
        """Every second: end the streams stuck in a send; every heartbeat: a beat."""
        loop = asyncio.get_running_loop()
        next_beat = loop.time() + self.heartbeat_s
        while True:
            await asyncio.sleep(min(TICK_S, self.heartbeat_s))
            now = loop.time()
            for stream in list(self.streams):
                since = stream.sending_since
                if since is not None and now - since > self.send_timeout_s:
                    stream.end("cut off")
            if now >= next_beat:
                next_beat = now + self.heartbeat_s
                self.beat += 1
                self._notify()

    def _notify(self) -> None:
        """Wake every waiter: the generation's event is set, and a new one takes its place;
        serve the parked streams (:meth:`_serve_parked`)."""
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()
        self._serve_parked()

    def _serve_parked(self) -> None:
        """Give every parked stream what the tail now holds after its cursor.

        The streams are grouped by what they read (cursor, kinds, scope): each group's page
        is selected and encoded once, and written to each socket of the group in one pass,
        with no task woken. At the head every stream of a filter shares one cursor, so a
        new entry costs one page per filter and one write per stream. Wakes whoever needs
        its own loop (see :class:`Parked`).
        """
        if not self._parked:
            return
        if self.closing.is_set():
            for parked in self._parked:
                parked.wake()
            return
        groups: dict[tuple[feed.Cursor, Kinds, FeedScope], list[Parked]] = {}
        for parked in self._parked:
            if not parked.woken.done():  # a woken stream goes on by itself
                groups.setdefault((parked.cursor, parked.kinds, parked.scope), []).append(parked)
        written = 0
        for (cursor, kinds, scope), members in groups.items():
            page = self.from_window(cursor, WRITE_LIMIT, kinds, scope, settled=False)
            if page is None or page.pending:
                for parked in members:  # the stream reads on by itself (or is reset)
                    parked.wake()
                continue
            chunk = page.events() if page.entries else b""
            last = page.entries[-1].seq if page.entries else max(cursor.seq, page.seen)
            after = page.cursor(last)
            for parked in members:
                if not chunk:
                    parked.cursor = after
                elif self._write(parked, chunk):
                    parked.cursor, parked.sent = after, True
                    written += 1
                else:
                    parked.wake()
        if self.beat != self._beat_served:
            self._serve_beat()
        metrics.FEED_TAIL_WRITES.inc(written)

    def _serve_beat(self) -> None:
        """A heartbeat went by: one comment to each parked stream silent since the last."""
        self._beat_served = self.beat
        written = 0
        for parked in self._parked:
            if parked.beat != self.beat and not parked.woken.done():
                if not parked.sent:
                    if self._write(parked, HEARTBEAT):
                        written += 1
                    else:
                        parked.heartbeat = True
                        parked.wake()
                parked.beat, parked.sent = self.beat, False
        metrics.FEED_TAIL_WRITES.inc(written)

    @staticmethod
    def _write(parked: Parked, chunk: bytes) -> bool:
        """Write ``chunk`` to a parked stream's socket; False if it was not written. A
        write that fills the client's buffer wakes the stream to wait for it to drain."""
        done = parked.write(chunk) if parked.write is not None else Written.NOTHING
        if done is Written.FILLED:
            parked.drain = True
            parked.wake()
        return done is not Written.NOTHING

    async def park(self, parked: Parked) -> None:
        """Wait at the head, served by the tail (:meth:`_serve_parked`), until the stream
        must go on by itself; ``parked`` then says where it is. Returns at once if the feed
        already moved past its cursor or the server is stopping."""
        head = self.head
        if self.closing.is_set() or (head is not None and head.last_seq > parked.cursor.seq):
            return
        if not self._tasks:  # nobody follows the feed nor beats: poll
            await asyncio.sleep(self.poll_interval_s)
            self.beat += 1
            return
        self._parked.add(parked)
        try:
            await parked.woken
        finally:
            self._parked.discard(parked)

    # ------------------------------------------------------------ serving

    async def wait(
        self, seen: int, timeout_s: float, disconnected: asyncio.Future[Any] | None = None
    ) -> None:
        """Return when the feed moved past ``seen`` (or its epoch or floor changed), the
        server is shutting down, the client went away, or after ``timeout_s``; a wait is a
        hint, the caller reads again."""
        if self.closing.is_set() or (self.head is not None and self.head.last_seq > seen):
            return
        if not self._tasks:
            timeout_s = min(timeout_s, self.poll_interval_s)  # nobody follows: poll
        waitables: list[asyncio.Event | asyncio.Future[Any]] = [self._changed]
        if disconnected is not None:
            waitables.append(disconnected)
        await wait_any(*waitables, timeout_s=timeout_s)

    def _answers(self, *, settled: bool = True) -> bool:
        """Whether the window may answer now: the tail is fresh (see FRESH_FOR_S) and, if
        ``settled``, knows of nothing newer to read."""
        fresh = asyncio.get_running_loop().time() < self._fresh_until
        return fresh and (not settled or self._settled())

    def _settled(self) -> bool:
        """False while the tail knows it is about to read again (a subclass says when)."""
        return True

    def from_window(
        self,
        cursor: feed.Cursor,
        limit: int,
        kinds: Kinds,
        scope: FeedScope = None,
        *,
        settled: bool = True,
    ) -> Page | None:
        """The page after ``cursor`` if the window can answer it now (:meth:`_answers`, the
        cursor inside the window and current), else None. No await: a stream at the head
        takes its entries straight from here. ``settled=False``: also while the tail knows
        of newer entries to read (what the window holds is still right to send; a page
        that says what follows, a long-poll's, is not)."""
        head, window = self.head, self.window
        if head is None or window is None or not self._answers(settled=settled):
            return None
        epoch, after = cursor.epoch, cursor.seq
        # See check_cursor: the start is always complete; any other cursor below the floor
        # is, if it was made under this floor.
        current = epoch is None or after >= head.floor or cursor.floor >= head.floor
        if epoch is None and window.start == 0:
            epoch = head.epoch  # "0" in a feed the window holds from its beginning
        if epoch != head.epoch or not window.covers(after) or not current:
            return None
        entries, pending = window.select(after, limit, kinds, scope)
        return Page(
            entries=entries,
            pending=pending,
            epoch=head.epoch,
            floor=head.floor,
            seen=window.last,
            full=len(entries) == limit,
            since=feed.encode_cursor(head.epoch, after, head.floor),
            at_head=None if pending else functools.partial(self.book.for_reader, kinds, scope),
        )

    async def read(
        self, cursor: feed.Cursor, limit: int, kinds: Kinds, scope: FeedScope = None
    ) -> Page:
        """The page after ``cursor`` (of ``kinds``, in ``scope``); raises
        :class:`~studypub.errors.ResetRequired` for a cursor that needs a reset, and
        :class:`~studypub.errors.TransientError` when the source is away."""
        raise NotImplementedError

    async def item(self, kind: str, id_: int, scope: FeedScope = None) -> dict[str, Any] | None:
        """The current published entry of (kind, id), None when unknown, deleted, or outside
        ``scope`` (see :func:`studypub.feed.read_item`)."""
        raise NotImplementedError

    async def page(
        self,
        since: str,
        limit: int,
        kinds: Kinds,
        *,
        scope: FeedScope = None,
        wait_s: float = 0,
        disconnected: asyncio.Future[Any] | None = None,
    ) -> Page:
        """``GET /v1/feed``: the page after ``since``; with ``wait_s``, an empty answer is held
        until an entry (of ``kinds``) arrives or the time is up, and then it is empty with
        ``last_seq`` still ``since``."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        cursor = feed.decode_cursor(since)
        while True:
            page = await self.read(cursor, limit, kinds, scope)
            remaining = deadline - loop.time()
            if page.entries or remaining <= 0 or self.closing.is_set():
                break
            if disconnected is not None and disconnected.done():
                break
            # Nothing of ours up to what the page saw: wait for an entry after that.
            cursor = page.cursor(max(cursor.seq, page.seen))
            await self.wait(cursor.seq, remaining, disconnected)
        if page.entries:
            return page
        return Page(
            [],
            0,
            page.epoch,
            page.floor,
            page.seen,
            full=False,
            since=since,
            at_head=page.at_head,
        )


class FeedTail(Tail):
    """The process's follower of the database feed (see the module).

    Without ``start()`` every read goes to the database (and waiters only poll): slower,
    never wrong.
    """

    def __init__(self, engine: AsyncEngine, **options: Any) -> None:
        super().__init__(**options)
        self.listening = asyncio.Event()  # set while the LISTEN connection is up
        self._url = engine.url.render_as_string(hide_password=False)
        self._is_pg = dialect_of(engine) == "postgresql"
        self._reads = read_session_factory(engine)
        self._engine = read_only(engine)
        self._conn: AsyncConnection | None = None
        # A commit this process heard of (feed_signal) that the tail has not read yet; and
        # one read at a time, whether the follower or a reader that cannot wait runs it.
        self._woken = feed_signal.subscribe()
        self._reading = asyncio.Lock()
        if not event.contains(engine.sync_engine, "before_cursor_execute", _count_statement):
            event.listen(engine.sync_engine, "before_cursor_execute", _count_statement)

    # ------------------------------------------------------------ following the feed

    def _followers(self) -> list[Coroutine[Any, Any, None]]:
        followers = [self._follow()]
        if self._is_pg:
            followers.append(
                pg_listen(self._url, FEED_CHANNEL, feed_signal.fire, connected=self.listening)
            )
        return followers

    def readiness(self) -> health.Checks:
        return health.listener_check(self.listening) if self._is_pg else {}

    async def _closed(self) -> None:
        self.listening.clear()
        if self._conn is not None:
            with contextlib.suppress(Exception):
                await self._conn.close()
            self._conn = None

    async def _follow(self) -> None:
        try:
            while not self.closing.is_set():
                try:
                    await self.catch_up()
                except TransientError:
                    pass  # the database is away (logged once by the engine): look again
                except Exception:
                    log.exception("the feed tail could not read the feed; trying again")
                await wait_any(self._woken, self.closing, timeout_s=self.poll_interval_s)
        finally:
            feed_signal.unsubscribe(self._woken)

    async def catch_up(self, *, if_woken: bool = False) -> None:
        """Read what the feed gained since the last read, in one read transaction.

        ``if_woken``: only if a commit was heard of since the last read began (the readers
        that queue behind one read must not each read again).
        """
        async with self._reading:
            if if_woken and not self._woken.is_set():
                return
            # Cleared before the read: a commit during the read wakes the next one.
            self._woken.clear()
            try:
                changed = await self._catch_up()
            except BaseException:
                self._fresh_until = 0.0
                if self._conn is not None:
                    with contextlib.suppress(Exception):
                        await self._conn.close()
                    self._conn = None
                raise
            self._fresh_until = asyncio.get_running_loop().time() + FRESH_FOR_S
        if changed:
            # Fresh, and out of the read (the window answers only then): the parked streams
            # are served from it at once.
            self._notify()

    async def _catch_up(self) -> bool:
        """One read of the head and what follows the window; whether anything changed."""
        # One connection kept between reads: a read costs no pool checkout and no liveness
        # ping (the idle database load is then one transaction per poll). After a failure
        # it is dropped, and the next read opens another.
        self._conn = self._conn or await self._engine.connect()
        with _reading("tail"):
            async with AsyncSession(bind=self._conn) as session:
                window, book = self.window, self.book
                # The head, and the checksums changed since the last read, in one statement.
                head, rows = await store.read_head_and_checksums(
                    session, changed_after=-1 if window is None else window.last
                )
                if window is None or head.epoch != window.epoch or head.last_seq < window.last:
                    # The first read, a new epoch, or a restored database: start afresh at
                    # the head (cursors of another epoch go to the database, and get a 410).
                    window = Window(head.epoch, head.last_seq, self.window_size)
                    if self.window is not None:
                        _, rows = await store.read_head_and_checksums(session, changed_after=-1)
                    book = checksums.Book()
                elif head.last_seq - window.last > 2 * self.window_size:
                    window = await self._newest(session, head)
                else:
                    await self._read_after(session, window, head)
                # A prune since the last read: its tombstones leave the window too.
                window.drop_tombstones(head.floor)
        # Only once the whole read succeeded: the book and the window move together.
        book.update(rows)
        changed = head != self.head or window is not self.window or bool(rows)
        self.head, self.window, self.book = head, window, book
        metrics.FEED_WINDOW_ENTRIES.set(len(window))
        return changed

    async def _read_after(self, session: Any, window: Window, head: Head) -> None:
        after = window.last
        while after < head.last_seq:
            rows = await store.read_entries(
                session, after_seq=after, limit=READ_BATCH, kinds=None, raw_payload=True
            )
            entries = [Entry.encode(feed.entry_of(row, raw=True), head, row.scope) for row in rows]
            window.append(entries, entries[-1].seq if entries else after)
            if len(rows) < READ_BATCH:
                break
            after = rows[-1].seq
        window.append([], head.last_seq)

    async def _newest(self, session: Any, head: Head) -> Window:
        """Far behind (a bulk publication): keep only the newest entries, read at once."""
        rows = await store.read_newest_entries(session, count=self.window_size + 1)
        oldest, rows = (rows[0].seq, rows[1:]) if len(rows) > self.window_size else (0, rows)
        window = Window(head.epoch, oldest, self.window_size)
        window.append(
            [Entry.encode(feed.entry_of(row, raw=True), head, row.scope) for row in rows],
            head.last_seq,
        )
        return window

    # ------------------------------------------------------------ serving

    def _settled(self) -> bool:
        # Not while a commit this process heard of is unread, or being read.
        return not (self._woken.is_set() or self._reading.locked())

    async def read(
        self, cursor: feed.Cursor, limit: int, kinds: Kinds, scope: FeedScope = None
    ) -> Page:
        """From the window if it covers the cursor, else from the database (which checks
        the cursor: a :class:`~studypub.errors.ResetRequired` comes from there)."""
        if self._tasks and (self._woken.is_set() or self._reading.locked()):
            # A commit this process heard of that the tail has not read, or is reading now:
            # read it first (or wait for the read), so that a write is visible to a read
            # that follows it.
            await self.catch_up(if_woken=True)
        window_page = self.from_window(cursor, limit, kinds, scope)
        if window_page is not None:
            return window_page
        epoch, after = cursor.epoch, cursor.seq
        since = feed.START if epoch is None else feed.encode_cursor(epoch, after, cursor.floor)
        with _reading("page"):
            async with self._reads() as session:
                page = await feed.read_feed(
                    session, since, limit, kinds, raw_payload=True, scope=scope
                )
        return Page(
            entries=[Entry.encode(entry, page.head) for entry in page.entries],
            pending=page.pending,
            epoch=page.head.epoch,
            floor=page.head.floor,
            seen=page.head.last_seq,
            full=len(page.entries) == limit,
            since=since,
            at_head=None if page.checksums is None else functools.partial(dict, page.checksums),
        )

    async def item(self, kind: str, id_: int, scope: FeedScope = None) -> dict[str, Any] | None:
        async with self._reads() as session:
            return await feed.read_item(session, kind, id_, scope=scope)
