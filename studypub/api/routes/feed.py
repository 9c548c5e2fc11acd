"""The feed for viewers: pages with long-poll, a Server-Sent Events stream, single items.

Every read runs in its own read session (SQLite: a deferred transaction that never waits for
the relay), so each wake-up sees the newest committed entries. Responses are serialised once,
straight from the rows, without a pydantic model per entry: a bootstrap reads the whole feed
through here. The pydantic models below only describe the responses in OpenAPI.
"""

from __future__ import annotations

import asyncio
import json
import logging
import secrets
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, HTTPException, Path, Query, Request, Response
from fastapi.responses import StreamingResponse
from pydantic import BaseModel
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from studypub import feed
from studypub.api.deps import SettingsDep, ViewerDep
from studypub.api.schemas import MAX_ID, ErrorPublic
from studypub.api.wakeup import FeedWakeup
from studypub.errors import NotFound, ResetRequired, StudypubError, TransientError

log = logging.getLogger(__name__)

router = APIRouter(prefix="/v1", tags=["feed"])

DEFAULT_LIMIT = 100
MAX_WAIT_S = 60.0
HEARTBEAT_S = 15.0
SSE_RETRY_MS = 2000
SSE_PAGE = feed.MAX_LIMIT


# ---------------------------------------------------------------- OpenAPI shapes


class FeedEntry(BaseModel):
    seq: int
    kind: str
    id: int
    version: int
    schema_version: int
    deleted: bool
    hash: str
    payload: dict[str, Any]
    published_at: str


class FeedPagePublic(BaseModel):
    results: list[FeedEntry]
    last_seq: str
    pending: int


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


# ---------------------------------------------------------------- helpers


def _dumps(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _read_sessions(request: Request) -> async_sessionmaker[AsyncSession]:
    sessions: async_sessionmaker[AsyncSession] = request.app.state.read_sessions
    return sessions


def _wakeup(request: Request) -> FeedWakeup:
    wakeup: FeedWakeup = request.app.state.wakeup
    return wakeup


def _split_kinds(kinds: str | None) -> tuple[str, ...] | None:
    if kinds is None:
        return None
    return feed.parse_kinds([k.strip() for k in kinds.split(",") if k.strip()])


async def _read(
    request: Request, since: str, limit: int, kinds: tuple[str, ...] | None
) -> feed.FeedPage:
    async with _read_sessions(request)() as session:
        return await feed.read_feed(session, since, limit, kinds, raw_payload=True)


def _entry_json(entry: dict[str, Any]) -> str:
    """One entry as JSON, its payload spliced in as stored (never parsed, never re-encoded).

    ``kind`` is one of a fixed set, ``hash`` hex and ``published_at`` ISO digits: none needs
    escaping. This is the hot path of a bootstrap; see bench/feed.py.
    """
    return (
        f'{{"seq":{entry["seq"]},"kind":"{entry["kind"]}","id":{entry["id"]},'
        f'"version":{entry["version"]},"schema_version":{entry["schema_version"]},'
        f'"deleted":{"true" if entry["deleted"] else "false"},"hash":"{entry["hash"]}",'
        f'"payload":{entry["payload"]},"published_at":"{entry["published_at"]}"}}'
    )


def _page_json(page: feed.FeedPage) -> bytes:
    results = ",".join(_entry_json(entry) for entry in page.entries)
    last_seq = json.dumps(page.last_seq)
    return f'{{"results":[{results}],"last_seq":{last_seq},"pending":{page.pending}}}'.encode()


def require_stream_viewer(
    request: Request,
    settings: SettingsDep,
    token: Annotated[
        str | None,
        Query(description="The viewer token, for EventSource clients that cannot set headers."),
    ] = None,
) -> None:
    """Like the viewer check of the other feed routes, also accepting ``?token=``."""
    expected = settings.viewer_token
    if expected is None:
        return
    header = request.headers.get("authorization", "")
    scheme, _, credential = header.partition(" ")
    given = credential if scheme.lower() == "bearer" and credential else token
    if given is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


# ---------------------------------------------------------------- routes

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
    dependencies=[ViewerDep],
    response_model=None,
    responses={200: {"model": FeedPagePublic}, **_errors(401, 410, 422)},
    summary="A page of the feed after a cursor, optionally long-polling",
)
async def read_feed_page(
    request: Request,
    since: SinceQuery = feed.START,
    limit: Annotated[int, Query(ge=1, le=feed.MAX_LIMIT)] = DEFAULT_LIMIT,
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
    wakeup = _wakeup(request)
    async with wakeup.waiter() as waiter:
        while True:
            waiter.arm()  # before the read: a publish during the read wakes the wait below
            page = await _read(request, since, limit, kind_filter)
            remaining = deadline - loop.time()
            if page.entries or remaining <= 0 or wakeup.closing.is_set():
                break
            if await request.is_disconnected():
                break
            await waiter.wait(remaining)
    return Response(_page_json(page), media_type="application/json")


@router.get(
    "/feed/stream",
    dependencies=[Depends(require_stream_viewer)],
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
    request: Request,
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
        _events(request, cursor, kind_filter),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


async def _events(
    request: Request, cursor: str, kinds: tuple[str, ...] | None
) -> AsyncIterator[str]:
    """The SSE body. Starlette cancels this generator when the client goes away."""
    loop = asyncio.get_running_loop()
    yield f"retry: {SSE_RETRY_MS}\n\n"
    last_beat = loop.time()
    wakeup = _wakeup(request)
    async with wakeup.waiter() as waiter:
        while not wakeup.closing.is_set():  # shutting down: end; the client reconnects
            waiter.arm()
            try:
                page = await _read(request, cursor, SSE_PAGE, kinds)
            except ResetRequired as exc:
                yield f"event: reset\ndata: {_reset_body(exc)}\n\n"
                return
            except TransientError as exc:
                # The database is away (logged once per outage by the engine): end the
                # stream with a retry hint; the client reconnects after it, from its last
                # id, to this server or another.
                yield f"retry: {exc.retry_after_s * 1000}\n\n"
                return
            if page.entries:
                epoch, _ = feed.decode_cursor(page.last_seq)
                assert epoch is not None
                yield "".join(
                    f"id: {feed.encode_cursor(epoch, entry['seq'])}\nevent: entry\n"
                    # A raw newline can only be whitespace between JSON tokens: one data line.
                    f"data: {_entry_json(entry).replace(chr(10), ' ').replace(chr(13), ' ')}\n\n"
                    for entry in page.entries
                )
                cursor = page.last_seq
                last_beat = loop.time()
                if page.pending:
                    continue
            until_beat = last_beat + HEARTBEAT_S - loop.time()
            if until_beat <= 0:
                yield ": heartbeat\n\n"
                last_beat = loop.time()
                continue
            await waiter.wait(until_beat)


def _reset_body(exc: StudypubError) -> str:
    return _dumps({"error": exc.code, "detail": str(exc)}).decode()


@router.get(
    "/items/{kind}/{item_id}",
    dependencies=[ViewerDep],
    response_model=None,
    responses={200: {"model": FeedEntry}, **_errors(304, 401, 404, 422)},
    summary="One published item, with its payload hash as ETag",
)
async def read_item(
    request: Request,
    kind: str,
    item_id: Annotated[int, Path(ge=1, le=MAX_ID, description="The entity's id.")],
    if_none_match: Annotated[str | None, Header()] = None,
) -> Response:
    """The current published entry of (kind, id). ``If-None-Match`` with its ETag gives 304."""
    async with _read_sessions(request)() as session:
        entry = await feed.read_item(session, kind, item_id)
    if entry is None:
        raise NotFound(f"no published {kind} {item_id} (never published, or deleted)")
    etag = f'"{entry["hash"]}"'
    headers = {"ETag": etag, "Cache-Control": "no-cache"}
    if if_none_match is not None and _etag_matches(if_none_match, etag):
        return Response(status_code=304, headers=headers)
    return Response(_dumps(entry), media_type="application/json", headers=headers)


def _etag_matches(if_none_match: str, etag: str) -> bool:
    """RFC 9110 weak comparison: ``*``, or any listed tag equal to ours, ``W/`` ignored."""
    if if_none_match.strip() == "*":
        return True
    tags = (tag.strip().removeprefix("W/") for tag in if_none_match.split(","))
    return etag in tags
