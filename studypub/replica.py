"""Replica client: follow a studypub feed over HTTP into a local SQLite replica.

:class:`Replica` is the entry point. It reads the feed page by page from its stored cursor
and hands each page to its :class:`~studypub.replica_store.ReplicaStore` (the file: tables,
cursor, the apply rule), which commits the page with the cursor after it; so a replica
stopped anywhere resumes from exactly the last page it stored.

A ``410 reset_required`` (the cursor fell below the feed floor, or the feed was restored and
has a new epoch) makes the replica rebuild from 0, in one transaction of the file: readers see
the old state until the new one is complete. A rebuild that is interrupted leaves the old
state and cursor, and starts over (a follower retries it with the same backoff as any other
read).

Each time it catches up, the replica proves it is exact: the page at the head carries the
feed's state checksums per kind (:mod:`studypub.checksums`), and the replica compares its own.
A kind that differs (a bug, a restored backup, a hand edit) is read again alone, from 0, and
swapped in one transaction; the other kinds, and an exact replica, are never read again. A
difference that a repair does not cure is reported and checked again only after a backoff:
never a loop of re-reads.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol

import httpx

from studypub import checksums
from studypub.edge import StreamFeed
from studypub.errors import ReplicaError, ResetRequired, TransientError
from studypub.replica_store import START, Page, ReplicaStore
from studypub.waiting import wait_any

__all__ = ["Difference", "Replica", "ReplicaError", "ReplicaStats"]

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000
WAIT_S = 30  # long-poll wait of a following replica
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
HTTP_TIMEOUT_S = 30.0
VERIFY_BACKOFF_MIN_S = 60.0  # after a repair that did not cure: compare again no sooner
VERIFY_BACKOFF_MAX_S = 3600.0


@dataclass
class ReplicaStats:
    """What this replica object did since it was opened (for logs and metrics)."""

    pages: int = 0  # pages read from the feed
    entries: int = 0  # entries in them
    resets: int = 0  # rebuilds from 0 completed
    verified: int = 0  # catch-ups that found the replica exact
    repaired: list[str] = field(default_factory=list)  # kinds read again, in order


@dataclass(frozen=True, slots=True)
class Difference:
    """A kind whose held entries differ from the feed's: (count, checksum) on each side."""

    kind: str
    held: tuple[int, str]
    feed: tuple[int, str]

    def __str__(self) -> str:
        return (
            f"{self.kind}: {self.held[0]} entries, checksum {self.held[1]} held; "
            f"{self.feed[0]} entries, checksum {self.feed[1]} in the feed"
        )


def differences(
    held: Mapping[str, checksums.State], feed: Mapping[str, Mapping[str, Any]]
) -> list[Difference]:
    """The kinds whose state differs, in order; a kind absent on one side has nothing live."""
    found = []
    for kind in sorted(held.keys() | feed.keys()):
        mine = held.get(kind, checksums.State())
        theirs = feed.get(kind, {"count": 0, "checksum": checksums.checksum(0, 0)})
        if (mine.entries, mine.checksum) != (theirs["count"], theirs["checksum"]):
            found.append(
                Difference(
                    kind, (mine.entries, mine.checksum), (theirs["count"], theirs["checksum"])
                )
            )
    return found


class Replica:
    """A local SQLite replica at ``path`` of the feed at ``feed_url``: a server's base URL,
    or a NATS server's (``nats://...``) to read the stream the bridge publishes there
    (under ``prefix``; see :class:`studypub.edge.StreamFeed`).

    Use as ``async with Replica(path, url) as replica: await replica.sync()`` (one pass to the
    head) or ``await replica.follow()`` (long-poll until cancelled or ``stop`` set).

    ``on_page(cursor, entries)`` is called after each page is stored (a progress display:
    ``studypub replicate --follow`` prints it). ``transport`` replaces httpx's own, for the
    HTTP a deployment needs (a proxy, a client certificate, a Unix socket).
    """

    def __init__(
        self,
        path: str | Path,
        feed_url: str,
        *,
        token: str | None = None,
        limit: int = PAGE_LIMIT,
        wait_s: int = WAIT_S,
        kinds: Sequence[str] | None = None,
        transport: httpx.AsyncBaseTransport | None = None,
        on_page: Callable[[str, int], None] | None = None,
        prefix: str | None = None,
    ) -> None:
        self.store = ReplicaStore(path)
        self.base_url = feed_url.rstrip("/")
        self.limit = limit
        self.wait_s = wait_s
        self.kinds = ",".join(kinds) if kinds else None
        self.stats = ReplicaStats()
        self.on_page = on_page
        # The feed's checksums from the last page at the head, not yet compared; what the
        # last comparison found; and the backoff after a repair that did not cure.
        self._at_head: dict[str, dict[str, Any]] | None = None
        self.differences: list[Difference] = []  # what the last comparison found
        self.unrepaired: list[Difference] = []  # ... and what a repair did not cure
        self._quiet_until = 0.0
        self._backoff_s = VERIFY_BACKOFF_MIN_S
        self._feed: Feed
        if self.base_url.startswith(("nats://", "tls://")):
            self._feed = StreamFeed(self.base_url, **({"prefix": prefix} if prefix else {}))
        else:
            self._feed = HttpFeed(self.base_url, token=token, wait_s=wait_s, transport=transport)

    @property
    def path(self) -> Path:
        return self.store.path

    async def __aenter__(self) -> Replica:
        try:
            await self.open()
        except BaseException:
            await self.close()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def open(self) -> None:
        """Open the file, creating its tables if it is new."""
        await self.store.open()

    async def close(self) -> None:
        await self._feed.aclose()
        await self.store.close()

    async def cursor(self) -> str:
        """The stored cursor (``"0"`` for a new replica)."""
        return await self.store.cursor()

    async def state(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The live entries (tombstones left out): ``{(kind, id): entry}``."""
        return await self.store.state()

    # ------------------------------------------------------------ following the feed

    async def sync(self) -> str:
        """Pull pages until nothing is pending, and verify (see the module); returns the
        cursor reached."""
        await self._catch_up()
        await self.verify()
        return await self.store.cursor()

    async def _catch_up(self) -> None:
        while True:
            try:
                await self._pull(wait_s=0)
                return
            except ResetRequired:
                await self._rebuild()

    async def verify(self) -> list[Difference]:
        """Compare the replica with the checksums of the last page at the head (if one came
        since the last comparison); read the kinds that differ again, alone, and compare once
        more. Returns what differed (empty: exact); :attr:`differences` keeps it."""
        served, self._at_head = self._at_head, None
        if served is None:
            return []  # nothing new to compare with (an older server, too)
        found = differences(await self.store.checksums(), served)
        if not found:
            self.stats.verified += 1
            self.differences, self.unrepaired = [], []
            self._backoff_s = VERIFY_BACKOFF_MIN_S
            return found
        loop = asyncio.get_running_loop()
        if loop.time() < self._quiet_until:
            return found  # a repair did not cure it: wait out the backoff
        log.warning(
            "the replica differs from the feed: %s; reading those kinds again",
            "; ".join(map(str, found)),
        )
        for difference in found:
            await self._repair(difference.kind)
        self.differences, self.unrepaired = found, []
        await self._catch_up()  # the others moved on meanwhile: compare at one head
        served, self._at_head = self._at_head, None
        again: list[Difference] = (
            [] if served is None else differences(await self.store.checksums(), served)
        )
        if again:
            self._quiet_until = loop.time() + self._backoff_s
            log.error(
                "the replica still differs from the feed after a repair (%s): checking "
                "again in %.0f s",
                "; ".join(map(str, again)),
                self._backoff_s,
            )
            self._backoff_s = min(VERIFY_BACKOFF_MAX_S, self._backoff_s * 2)
            self.unrepaired = again
        return found

    async def _repair(self, kind: str) -> None:
        """Read ``kind`` again from 0, alone, and swap it in (see ReplicaStore.replacing)."""
        async with self.store.replacing(kind) as rebuild:
            while True:
                try:
                    async for page in self._pages(START, kinds=kind):
                        await rebuild.apply_page(page)
                    break
                except ResetRequired:
                    await rebuild.restart()
        self.stats.repaired.append(kind)

    async def follow(self, stop: asyncio.Event | None = None) -> None:
        """Long-poll for new entries until ``stop`` is set (or the task is cancelled).

        Network errors and server restarts are retried with capped, jittered backoff, during a
        rebuild too (it rolls back and starts over: the file keeps the old state meanwhile);
        only a refusal that retrying cannot fix (401, 404, a bad request) ends the loop with
        an error.
        """
        stop = stop or asyncio.Event()
        delay = RETRY_MIN_S
        rebuild = False  # a 410 was answered: the next step is a rebuild, until one succeeds
        while not stop.is_set():
            try:
                if rebuild:
                    await self._rebuild()
                    rebuild = False
                elif await self._pull(wait_s=self.wait_s, stop=stop) != START:
                    await self.verify()
                delay = RETRY_MIN_S
            except ResetRequired:
                rebuild = True
            except (httpx.TransportError, Retryable, TransientError) as exc:
                log.warning("feed unreachable (%s); retrying in %.1f s", exc, delay)
                await wait_any(stop, timeout_s=delay * (1 + random.random() / 4))
                delay = min(RETRY_MAX_S, delay * 2)

    async def _pull(self, *, wait_s: int, stop: asyncio.Event | None = None) -> str:
        """Read and store the pages after the stored cursor; returns the cursor reached, or
        ``START`` when nothing new came (a long-poll that timed out)."""
        cursor = await self.store.cursor()
        stored = False
        async for page in self._pages(cursor, wait_s=wait_s, stop=stop):
            if page.results:  # else a long-poll that timed out: nothing to store
                await self.store.apply_page(page)
                cursor, stored = page.last_seq, True
                if self.on_page is not None:
                    self.on_page(cursor, len(page.results))
            if page.checksums is not None and (stored or wait_s == 0):
                self._at_head = page.checksums
        return cursor if stored else START

    async def _rebuild(self) -> None:
        """Replace the whole replica by a fresh read from 0, atomically (see the module)."""
        log.warning("the feed asks for a reset: rebuilding the replica from 0")
        async with self.store.rebuilding() as rebuild:
            while True:
                try:
                    async for page in self._pages(START):
                        await rebuild.apply_page(page)
                    break
                except ResetRequired:  # the floor moved again while we read: start over
                    await rebuild.restart()
        self.stats.resets += 1

    async def _pages(
        self,
        since: str,
        *,
        wait_s: int = 0,
        stop: asyncio.Event | None = None,
        kinds: str | None = None,
    ) -> AsyncIterator[Page]:
        """The pages after ``since``, up to one with nothing pending after it, or an empty one
        (a long-poll that timed out). Ends without a page when ``stop`` is set meanwhile."""
        while True:
            page = await self._fetch(since, wait_s=wait_s, stop=stop, kinds=kinds)
            if page is None:
                return
            yield page
            if page.pending == 0 or not page.results:
                return
            since = page.last_seq

    async def _fetch(
        self,
        since: str,
        *,
        wait_s: int,
        stop: asyncio.Event | None = None,
        kinds: str | None = None,
    ) -> Page | None:
        """One page from ``since`` (of ``kinds``, else the replica's kinds); None when
        ``stop`` was set before the answer."""
        request = asyncio.ensure_future(
            self._feed.page(since, limit=self.limit, wait_s=wait_s, kinds=kinds or self.kinds)
        )
        try:
            if stop is not None:
                await wait_any(request, stop)
                if not request.done():
                    return None
            page = await request
        finally:
            request.cancel()  # a request still waiting (stopped, or cancelled) goes too
        self.stats.pages += 1
        self.stats.entries += len(page.results)
        return page


class Feed(Protocol):
    """Where a replica reads the feed: one page after a cursor, as a server answers
    ``GET /v1/feed`` (raises :class:`ResetRequired` for a 410, :class:`Retryable` for what
    retrying may cure, :class:`ReplicaError` for the rest)."""

    async def page(self, since: str, *, limit: int, wait_s: int, kinds: str | None) -> Page: ...

    async def aclose(self) -> None: ...


class HttpFeed:
    """The feed of a studypub server at ``base_url``, over HTTP."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None,
        wait_s: int,
        transport: httpx.AsyncBaseTransport | None,
    ) -> None:
        self.base_url = base_url
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=base_url,
            headers=headers,
            timeout=httpx.Timeout(HTTP_TIMEOUT_S + wait_s),
            transport=transport,
        )

    async def aclose(self) -> None:
        await self._client.aclose()

    async def page(self, since: str, *, limit: int, wait_s: int, kinds: str | None) -> Page:
        params: dict[str, str | int] = {"since": since, "limit": limit}
        if wait_s:
            params["wait"] = wait_s
        if kinds:
            params["kinds"] = kinds
        response = await self._client.get("/v1/feed", params=params)
        if response.status_code == 410:
            raise ResetRequired(_detail(response))
        if response.status_code >= 500 or response.status_code == 429:
            raise Retryable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise ReplicaError(
                f"the feed at {self.base_url} answered HTTP {response.status_code}: "
                f"{_detail(response)}"
            )
        body = response.json()
        return Page(
            since=since,
            results=body["results"],
            last_seq=str(body["last_seq"]),
            pending=int(body["pending"]),
            checksums=body.get("checksums"),
        )


class Retryable(Exception):
    """An answer that retrying may cure (5xx, 429)."""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:200]
