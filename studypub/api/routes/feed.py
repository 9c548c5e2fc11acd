"""The feed for viewers: pages with long-poll, a Server-Sent Events stream, single items.

Every read runs in its own read session (SQLite: a deferred transaction that never waits for
the relay), so each wake-up sees the newest committed entries. Pages and events are encoded
straight from the rows (:func:`studypub.feed.page_json`, :func:`studypub.feed.entry_event`),
without a pydantic model per entry: a bootstrap reads the whole feed through here. The
stream's body is :mod:`studypub.api.stream`.
"""

from __future__ import annotations

import asyncio
import json
from typing import Annotated, Any

from fastapi import APIRouter, Header, Path, Query, Request, Response
from fastapi.responses import StreamingResponse

from studypub import feed
from studypub.api import stream
from studypub.api.deps import ReadSessionFactoryDep, StreamViewerDep, ViewerDep, WakeupDep
from studypub.api.schemas import MAX_ID, ErrorPublic, FeedEntry, FeedPagePublic
from studypub.errors import NotFound

router = APIRouter(prefix="/v1", tags=["feed"])

MAX_WAIT_S = 60.0


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    described = {
        304: "Not modified (If-None-Match matched the ETag)",
        401: "Missing or wrong viewer token (only when STUDYPUB_VIEWER_TOKEN is set)",
        404: "Unknown or deleted item",
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
    responses={200: {"model": FeedPagePublic}, **_errors(401, 410, 422)},
    summary="A page of the feed after a cursor, optionally long-polling",
)
async def read_feed_page(
    _viewer: ViewerDep,
    request: Request,
    sessions: ReadSessionFactoryDep,
    wakeup: WakeupDep,
    since: SinceQuery = feed.START,
    limit: Annotated[int, Query(ge=1, le=feed.MAX_LIMIT)] = feed.DEFAULT_LIMIT,
    kinds: KindsQuery = None,
    wait: Annotated[
        float,
        Query(ge=0, le=MAX_WAIT_S, description="Seconds to wait for an entry if none is there."),
    ] = 0,
) -> Response:
    """Entries after ``since`` in seq order. Paging from ``0`` until ``pending`` is 0 yields
    exactly the current published state; ``wait`` holds an empty answer open until an entry
    arrives or the time is up (then it returns empty with ``last_seq`` unchanged)."""
    kind_filter = _split_kinds(kinds)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait
    async with wakeup.waiter() as waiter:
        while True:
            waiter.arm()  # before the read: a publish during the read wakes the wait below
            async with sessions() as session:
                page = await feed.read_feed(session, since, limit, kind_filter, raw_payload=True)
            remaining = deadline - loop.time()
            if page.entries or remaining <= 0 or wakeup.closing.is_set():
                break
            if await request.is_disconnected():
                break
            await waiter.wait(remaining)
    return Response(feed.page_json(page), media_type="application/json")


@router.get(
    "/feed/stream",
    response_class=StreamingResponse,
    responses={
        200: {
            "content": {"text/event-stream": {}},
            "description": "`event: entry` per entry (`id:` = cursor, data = entry JSON), "
            "`: heartbeat` comments, and `event: reset` then close when the cursor needs a reset.",
        },
        **_errors(401, 422),
    },
    summary="Follow the feed as Server-Sent Events",
)
async def stream_feed(
    _viewer: StreamViewerDep,
    sessions: ReadSessionFactoryDep,
    wakeup: WakeupDep,
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
) -> StreamingResponse:
    """Entries after the cursor, then every new one as it is published."""
    cursor = last_event_id or since
    feed.decode_cursor(cursor)  # a malformed cursor is a 422 now, not a broken stream
    kind_filter = _split_kinds(kinds)
    return StreamingResponse(
        stream.events(sessions, wakeup, cursor, kind_filter),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


@router.get(
    "/items/{kind}/{item_id}",
    response_model=None,
    responses={200: {"model": FeedEntry}, **_errors(304, 401, 404, 422)},
    summary="One published item, with its payload hash as ETag",
)
async def read_item(
    _viewer: ViewerDep,
    sessions: ReadSessionFactoryDep,
    kind: str,
    item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The entity's id.")],
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The current published entry of (kind, id). ``If-None-Match`` with its ETag gives 304."""
    async with sessions() as session:
        entry = await feed.read_item(session, kind, item_id)
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
