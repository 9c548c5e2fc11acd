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
from pydantic import BeforeValidator, StringConstraints, WithJsonSchema
from pydantic.json_schema import SkipJsonSchema

from studypub import feed, metrics
from studypub.api.deps import SettingsDep, TailDep, ViewerDep
from studypub.api.errors import documented
from studypub.api.schemas import MAX_ID, FeedEntry, FeedPagePublic, Kind
from studypub.api.stream import EventStream, until_disconnect
from studypub.errors import NotFound
from studypub.settings import Settings
from studypub.tail import Page
from studypub.tokens import Viewer

NO_STORE = {"Cache-Control": "no-store"}

router = APIRouter(prefix="/v1", tags=["feed"])

MAX_WAIT_S = 60.0


def _errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI docs of a feed route's answers besides 200: ``codes``, and what every one
    can (401, 403, 422, 503)."""
    docs = documented(
        401,
        403,
        422,
        503,
        *(code for code in codes if code != 304),
        e401="Missing, expired or invalid viewer token.",
        e403="The token does not allow a kind asked for.",
        e404="Unknown or deleted item, or another learner's.",
        e422="Malformed cursor, limit, wait, kinds or id.",
    )
    if 304 in codes:
        docs[304] = {"description": "Not modified (If-None-Match matched the ETag)."}
    return docs


def _kinds(kinds: list[Kind] | None) -> tuple[str, ...] | None:
    """The kinds asked for, each once, in order (None: every kind)."""
    return None if kinds is None else feed.parse_kinds([kind.value for kind in kinds])


Cursor = Annotated[
    str,
    StringConstraints(max_length=feed.MAX_CURSOR_LENGTH),
    # In the schema only: a malformed cursor gets decode_cursor's clearer message.
    WithJsonSchema({"type": "string", "pattern": feed.CURSOR_PATTERN}),
]
SinceQuery = Annotated[
    Cursor,
    Query(description="Resume after this cursor (`last_seq` of the previous page); `0` = start."),
]


def _comma_separated(values: Any) -> Any:
    """``kinds=a,b`` (what older clients send) means ``kinds=a&kinds=b``."""
    if isinstance(values, list):
        return [kind for value in values for kind in str(value).split(",")]
    return values


KindsQuery = Annotated[
    list[Kind] | SkipJsonSchema[None],
    BeforeValidator(_comma_separated),
    Query(
        description="The kinds to keep (default: all), e.g. `kinds=topic&kinds=question`;"
        " `kinds=topic,question` means the same."
    ),
]


@router.get(
    "/feed",
    response_model=None,
    responses={200: {"model": FeedPagePublic}, **_errors(304, 410)},
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
    kind_filter = viewer.kinds_for(_kinds(kinds))
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
        **_errors(),
    },
    summary="Follow the feed as Server-Sent Events",
)
async def stream_feed(
    viewer: ViewerDep,
    tail: TailDep,
    since: SinceQuery = feed.START,
    kinds: KindsQuery = None,
    last_event_id: Annotated[
        Cursor | SkipJsonSchema[None],
        Header(
            alias="Last-Event-ID",
            description="Sent by EventSource on reconnect; wins over `since`.",
        ),
    ] = None,
) -> EventStream:
    """Entries after the cursor, then every new one as it is published. The token goes in
    the ``Authorization`` header (read the stream with ``fetch``: ``EventSource`` cannot
    set headers, and a token in the URL would land in access logs)."""
    cursor = feed.decode_cursor(last_event_id or since)  # malformed: a 422 now
    return EventStream(tail, cursor, viewer.kinds_for(_kinds(kinds)), viewer.learner)


@router.get(
    "/items/{kind}/{item_id}",
    response_model=None,
    responses={200: {"model": FeedEntry}, **_errors(304, 404)},
    summary="One published item, with its payload hash as ETag",
)
async def read_item(
    viewer: ViewerDep,
    tail: TailDep,
    kind: Kind,
    item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The entity's id.")],
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The current published entry of (kind, id). ``If-None-Match`` with its ETag gives 304.
    Another learner's progress is a 404, exactly like an unknown id."""
    viewer.kinds_for((kind.value,))
    entry = await tail.item(kind.value, item_id, viewer.learner)
    if entry is None:
        raise NotFound(f"no published {kind.value} {item_id} (never published, or deleted)")
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
