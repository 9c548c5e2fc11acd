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
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from studypub.errors import ReplicaError, ResetRequired
from studypub.replica_store import START, Page, ReplicaStore
from studypub.waiting import wait_any

__all__ = ["Replica", "ReplicaError", "ReplicaStats"]

log = logging.getLogger(__name__)

PAGE_LIMIT = 1000
WAIT_S = 30  # long-poll wait of a following replica
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
HTTP_TIMEOUT_S = 30.0


@dataclass
class ReplicaStats:
    """What this replica object did since it was opened (for logs and metrics)."""

    pages: int = 0  # pages read from the feed
    entries: int = 0  # entries in them
    resets: int = 0  # rebuilds from 0 completed


class Replica:
    """A local SQLite replica at ``path`` of the feed at ``feed_url`` (the server's base URL).

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
    ) -> None:
        self.store = ReplicaStore(path)
        self.base_url = feed_url.rstrip("/")
        self.limit = limit
        self.wait_s = wait_s
        self.kinds = ",".join(kinds) if kinds else None
        self.stats = ReplicaStats()
        self.on_page = on_page
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(HTTP_TIMEOUT_S + wait_s),
            transport=transport,
        )

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
        await self._client.aclose()
        await self.store.close()

    async def cursor(self) -> str:
        """The stored cursor (``"0"`` for a new replica)."""
        return await self.store.cursor()

    async def state(self) -> dict[tuple[str, int], dict[str, Any]]:
        """The live entries (tombstones left out): ``{(kind, id): entry}``."""
        return await self.store.state()

    # ------------------------------------------------------------ following the feed

    async def sync(self) -> str:
        """Pull pages until nothing is pending; returns the cursor reached."""
        while True:
            try:
                return await self._pull(wait_s=0)
            except ResetRequired:
                await self._rebuild()

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
                else:
                    await self._pull(wait_s=self.wait_s, stop=stop)
                delay = RETRY_MIN_S
            except ResetRequired:
                rebuild = True
            except (httpx.TransportError, _Retryable) as exc:
                log.warning("feed unreachable (%s); retrying in %.1f s", exc, delay)
                await wait_any(stop, timeout_s=delay * (1 + random.random() / 4))
                delay = min(RETRY_MAX_S, delay * 2)

    async def _pull(self, *, wait_s: int, stop: asyncio.Event | None = None) -> str:
        """Read and store the pages after the stored cursor; returns the cursor reached."""
        cursor = await self.store.cursor()
        async for page in self._pages(cursor, wait_s=wait_s, stop=stop):
            if page.results:  # else a long-poll that timed out: nothing to store
                await self.store.apply_page(page)
                cursor = page.last_seq
                if self.on_page is not None:
                    self.on_page(cursor, len(page.results))
        return cursor

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
        self, since: str, *, wait_s: int = 0, stop: asyncio.Event | None = None
    ) -> AsyncIterator[Page]:
        """The pages after ``since``, up to one with nothing pending after it, or an empty one
        (a long-poll that timed out). Ends without a page when ``stop`` is set meanwhile."""
        while True:
            page = await self._fetch(since, wait_s=wait_s, stop=stop)
            if page is None:
                return
            yield page
            if page.pending == 0 or not page.results:
                return
            since = page.last_seq

    async def _fetch(
        self, since: str, *, wait_s: int, stop: asyncio.Event | None = None
    ) -> Page | None:
        """One page from ``since``; None when ``stop`` was set before the answer."""
        params: dict[str, str | int] = {"since": since, "limit": self.limit}
        if wait_s:
            params["wait"] = wait_s
        if self.kinds:
            params["kinds"] = self.kinds
        request = asyncio.ensure_future(self._client.get("/v1/feed", params=params))
        try:
            if stop is not None:
                await wait_any(request, stop)
                if not request.done():
                    return None
            response = await request
        finally:
            request.cancel()  # a request still waiting (stopped, or cancelled) goes too
        if response.status_code == 410:
            raise ResetRequired(_detail(response))
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retryable(f"HTTP {response.status_code}")
        if response.status_code != 200:
            raise ReplicaError(
                f"the feed at {self.base_url} answered HTTP {response.status_code}: "
                f"{_detail(response)}"
            )
        body = response.json()
        self.stats.pages += 1
        self.stats.entries += len(body["results"])
        return Page(
            since=since,
            results=body["results"],
            last_seq=str(body["last_seq"]),
            pending=int(body["pending"]),
        )


class _Retryable(Exception):
    """An answer that retrying may cure (5xx, 429)."""


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:200]
    if isinstance(body, dict) and "detail" in body:
        return str(body["detail"])
    return str(body)[:200]
