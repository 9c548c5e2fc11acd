"""The feed for viewers: pages with long-poll, a Server-Sent Events stream, single items.

Pages, long-polls and streams are served by the process's feed tail (:mod:`studypub.tail`):
from its window of the newest entries, encoded once for every client, or from the database
for a client behind it. Nothing is encoded through a pydantic model per entry: a bootstrap
reads the whole feed through here. The stream's body is :mod:`studypub.api.stream`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response

from studypub import feed, metrics
from studypub.api.deps import SettingsDep, TailDep, ViewerDep
from studypub.api.schemas import MAX_ID, ErrorPublic, FeedEntry, FeedPagePublic
from studypub.api.stream import EventStream, until_disconnect
from studypub.errors import NotFound
from studypub.settings import Settings
from studypub.tail import Page
from studypub.tokens import Viewer

NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(prefix="/v1", tags=["feed"])

MAX_WAIT_S = 60.0


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        304: "Not modified (If-None-Match matched the ETag)",
        401: "Missing, expired or invalid viewer token",
        403: "The token does not allow a kind asked for",
        404: "Unknown or deleted item, or another learner's",
        410: "reset_required: the cursor is below the feed floor or from another epoch",
        422: "Malformed cursor, limit, wait or kinds",
    }
    return {
        code: {"description": described[code]}
        if code == 304
        else {"model": ErrorPublic, "description": described[code]}
        for code in codes
    }


def _split_kinds(kinds: str | None) -> tuple[str, ...] | None:
    if kinds is None:
        return None
    return feed.parse_kinds([k.strip() for k in kinds.split(",") if k.strip()])


SinceQuery = Annotated[
    str,
    Query(
        max_length=feed.MAX_CURSOR_LENGTH,
        description="Resume after this cursor (`last_seq` of the previous page); `0` = start.",
    ),
]
KindsQuery = Annotated[
    str | None,
    Query(description="Comma-separated kinds to keep, e.g. `topic,question` (default: all)."),
]


@router.get(
    "/feed",
    response_model=None,
    responses={200: {"model": FeedPagePublic}, **_errors(304, 401, 403, 410, 422)},
    summary="A page of the feed after a cursor, optionally long-polling",
)
async def read_feed_page(
    viewer: ViewerDep,
    request: Request,
    tail: TailDep,
    settings: SettingsDep,
    since: SinceQuery = feed.START,
    limit: Annotated[int, Query(ge=1, le=feed.MAX_LIMIT)] = feed.DEFAULT_LIMIT,
    kinds: KindsQuery = None,
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for an entry if none is there."),
    ] = 0,
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """Entries after ``since`` in seq order. Paging from ``0`` until ``pending`` is 0 yields
    exactly the current published state; ``wait`` holds an empty answer open until an entry
    arrives or the time is up (then it returns empty with ``last_seq`` unchanged). A full
    page below the head may be cached (``Cache-Control: public, max-age``, strong ``ETag``);
    every other answer is ``no-store``. A learner's token reads the shared entries and its
    own progress only, in the same seq order (so cursors mean the same on every feed)."""
    kind_filter = viewer.kinds_for(_split_kinds(kinds))
    disconnected = asyncio.ensure_future(until_disconnect(request.receive)) if wait else None
    clients = metrics.FEED_CLIENTS.labels(mode="long_poll")
    clients.inc()
    try:
        page = await tail.page(
            since,
            limit,
            kind_filter,
            scope=viewer.learner,
            wait_s=wait,
            disconnected=disconnected,
        )
    finally:
        clients.dec()
        if disconnected is not None:
            disconnected.cancel()
    body = page.body()
    cache = page_cache_control(page, since, settings, viewer)
    if cache is None:
        return Response(body, media_type="application/json", headers=NO_STORE)
    etag = f'"{hashlib.blake2b(body, digest_size=16).hexdigest()}"'
    # Vary: the same URL read with another token is another page (another scope).
    headers = {"Cache-Control": cache, "ETag": etag, "Vary": "Authorization"}
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


def page_cache_control(page: Page, since: str, settings: Settings, viewer: Viewer) -> str | None:
    """``Cache-Control`` of a page a cache may keep, or None (``no-store``).

    Only a full page strictly below the head is kept: compaction only moves entities
    forward, so an old copy read in order is still correct, and the check of the next
    cursor against the floor and epoch (made by the server on the first page the cache does
    not hold) catches tombstones pruned since. Never the start (``since=0``): the restart
    after a 410 must reach the server, and the cursors it gets back carry the new floor, so
    every URL it follows afterwards is one no cache saw before the floor moved (no refetch
    loop). Never the tail, an empty long-poll, or an error. ``public`` only on an open feed
    read whole; with tokens ``private``: a shared cache must not hand one token's answers to
    anyone else.
    """
    if since == feed.START or not (page.full and page.pending) or not settings.feed_cache_max_age:
        return None
    shared = "public" if settings.open_feed and viewer.everything else "private"
    return f"{shared}, max-age={settings.feed_cache_max_age}"


@router.get(
    "/feed/stream",
    response_class=EventStream,
    status_code=200,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: entry` per entry (`id:` = cursor, data = entry JSON), "
            "`: heartbeat` comments, and `event: reset` then close when the cursor needs a reset.",
        },
        **_errors(401, 403, 422),
    },
    summary="Follow the feed as Server-Sent Events",
)
async def stream_feed(
    viewer: ViewerDep,
    tail: TailDep,
    since: SinceQuery = feed.START,
    kinds: KindsQuery = None,
    last_event_id: Annotated[
        str | None,
        Header(
            alias="Last-Event-ID",
            max_length=feed.MAX_CURSOR_LENGTH,
            description="Sent by EventSource on reconnect; wins over `since`.",
        ),
    ] = None,
) -> EventStream:
    """Entries after the cursor, then every new one as it is published. The token goes in
    the ``Authorization`` header (read the stream with ``fetch``: ``EventSource`` cannot
    set headers, and a token in the URL would land in access logs)."""
    cursor = feed.decode_cursor(last_event_id or since)  # malformed: a 422 now
    return EventStream(tail, cursor, viewer.kinds_for(_split_kinds(kinds)), viewer.learner)


@router.get(
    "/items/{kind}/{item_id}",
    response_model=None,
    responses={200: {"model": FeedEntry}, **_errors(304, 401, 403, 404, 422)},
    summary="One published item, with its payload hash as ETag",
)
async def read_item(
    viewer: ViewerDep,
    tail: TailDep,
    kind: str,
    item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The entity's id.")],
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The current published entry of (kind, id). ``If-None-Match`` with its ETag gives 304.
    Another learner's progress is a 404, exactly like an unknown id."""
    viewer.kinds_for((kind,))
    entry = await tail.item(kind, item_id, viewer.learner)
    if entry is None:
        raise NotFound(f"no published {kind} {item_id} (never published, or deleted)")
    etag = f'"{entry["hash"]}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    body = json.dumps(entry, separators=(",", ":"), ensure_ascii=False).encode()
    return Response(body, media_type="application/json", headers=headers)


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison: ``*``, or any listed tag equal to ours, ``W/`` ignored."""
    if if_none_match.strip() == "*":
        return True
    tags = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return etag in tags
