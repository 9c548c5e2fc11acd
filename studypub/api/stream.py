"""``GET /v1/feed/stream``: the feed as Server-Sent Events, served from the feed tail.

``retry: 2000`` first; then, after the cursor, one ``event: entry`` per entry (encoded once
by the tail for every client), a ``: heartbeat`` comment when a heartbeat of the tail
(``studypub.tail.HEARTBEAT_S``) finds the stream silent since the last one, so that proxies
keep an idle stream open, and every new entry as it is published. The stream
ends with ``event: reset`` when the cursor needs a reset, with a longer ``retry:`` hint when
the database goes away (the client reconnects from its last id, to this server or another),
and at once when the server shuts down.

A plain ASGI response, not Starlette's ``StreamingResponse``: one coroutine per client, no
task group, no timer, so that ten thousand idle streams cost little memory. At the head a
stream parks with the tail (:meth:`studypub.tail.Tail.park`), which writes each new entry and
heartbeat to its socket itself (:func:`direct_writer`), one write per stream in one pass, and
wakes it only for what it cannot do alone. Each send of the stream's own is bounded: a
client that reads nothing for the tail's send timeout (its socket buffer full) is cut off.
It holds no queue: it reads the tail from its own position, so it never holds the others up,
and when it is far behind it pages from the database like any late client.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from studypub import metrics
from studypub.errors import ResetRequired, StudypubError, TransientError
from studypub.feed import Cursor
from studypub.tail import HEARTBEAT, FeedScope, Kinds, Parked, Stream, Tail, Written

RETRY_MS = 2000
PAGE = 1000
RAW_HEADERS = [
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-store"),
    (b"x-accel-buffering", b"no"),  # nginx: pass each event on at once
]
CUT_OFF = "ASGI callable returned without completing response."

log = logging.getLogger("studypub.stream")


class EventStream(Response):
    """The SSE response of one client, following ``tail`` after ``cursor``: the entries of
    ``kinds`` in ``scope`` (None: all)."""

    media_type = "text/event-stream"

    def __init__(self, tail: Tail, cursor: Cursor, kinds: Kinds, scope: FeedScope) -> None:
        # Not Response.__init__: it would declare a Content-Length for an empty body.
        self.status_code = 200
        self.background = None
        self.raw_headers = RAW_HEADERS
        self.tail, self.cursor, self.kinds, self.scope = tail, cursor, kinds, scope
        self.write: Callable[[bytes], Written] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        task = asyncio.current_task()
        assert task is not None
        # Ended from outside by cancelling this task: when the client goes away (so an idle
        # stream waits on nothing but the tail), or by the tail's ticker when a send is stuck.
        stream = Stream(task)
        gone = asyncio.ensure_future(until_disconnect(receive))
        gone.add_done_callback(lambda _: stream.end("gone"))
        self.tail.streams.add(stream)
        clients = metrics.FEED_CLIENTS.labels(mode="stream")
        clients.inc()
        loop = asyncio.get_running_loop()
        body_send: Send = scope.get(RAW_SEND, send)
        self.write = direct_writer(body_send)
        try:
            async for chunk in self._events():
                stream.sending_since = loop.time()
                await body_send({"type": "http.response.body", "body": chunk, "more_body": True})
                stream.sending_since = None
            stream.sending_since = loop.time()  # the end, too, waits for the buffer to drain
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        except asyncio.CancelledError:
            if stream.ended is None:
                raise  # not ours: the server is stopping
            task.uncancel()
            if stream.ended == "cut off":
                # Returning unfinished makes the server close the connection (it says so in
                # the line CutOffFilter drops); the client reconnects from its last id.
                log.info("cut off a stream that read nothing for %.0f s", self.tail.send_timeout_s)
        finally:
            stream.ended = stream.ended or "over"  # from now on, nothing cancels this task
            clients.dec()
            self.tail.streams.discard(stream)
            gone.cancel()

    async def _events(self) -> AsyncIterator[bytes]:
        tail, cursor, kinds, scope = self.tail, self.cursor, self.kinds, self.scope
        yield f"retry: {RETRY_MS}\n\n".encode()
        beat, sent = tail.beat, False
        while not tail.closing.is_set():  # shutting down: end; the client reconnects
            try:
                # At the head, the common case: straight from the window, no await.
                page = tail.from_window(cursor, PAGE, kinds, scope) or await tail.read(
                    cursor, PAGE, kinds, scope
                )
            except ResetRequired as exc:
                yield f"event: reset\ndata: {_error_json(exc)}\n\n".encode()
                return
            except TransientError as exc:
                # The database is away (logged once per outage by the engine): end the
                # stream with a retry hint; the client reconnects after it, from its last
                # id, to this server or another.
                yield f"retry: {exc.retry_after_s * 1000}\n\n".encode()
                return
            if page.entries:
                yield page.events()
                sent = True
                if page.pending:
                    cursor = page.cursor(page.entries[-1].seq)
                    continue
            # Nothing more of ours up to what the page saw: park at the head. The tail
            # writes what comes next (entries, heartbeats) to our socket itself, with those
            # of every other stream, and wakes us only for what it cannot do.
            cursor = page.cursor(max(cursor.seq, page.seen))
            parked = Parked(cursor, kinds, scope, self.write, beat=beat, sent=sent)
            await tail.park(parked)
            cursor, beat, sent = parked.cursor, parked.beat, parked.sent
            if parked.drain:
                # The tail's write filled the client's buffer: wait for it to drain (an
                # empty chunk, sent as the others, under the send timeout).
                yield b""
            if parked.heartbeat:
                yield HEARTBEAT
            elif tail.beat != beat:  # a heartbeat went by: silent since the last one?
                if not sent:
                    yield HEARTBEAT
                beat, sent = tail.beat, False


async def until_disconnect(receive: Receive) -> None:
    """Return when the client has gone away."""
    while (await receive())["type"] != "http.disconnect":
        pass


def _error_json(exc: StudypubError) -> str:
    body = {"error": exc.code, "detail": str(exc)}
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False)


RAW_SEND = "studypub.raw_send"


class RawSend:
    """The outermost ASGI layer of a server (``studypub.serving``): puts the server's own
    ``send`` in the scope, for :class:`EventStream` to send its body with.

    Every middleware of the app wraps ``send`` to watch the response start; a stream's body,
    sent thousands of times for one entry, need not go through those wrappers once the start
    has. Without this layer (an in-process client) the stream sends through them.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            scope[RAW_SEND] = send
        await self.app(scope, receive, send)


def direct_writer(send: Send) -> Callable[[bytes], Written] | None:
    """A function that writes one chunk of a streamed body straight to the client's socket,
    as the server's own ``send`` would, or None where that is not possible.

    The parked streams of a tail (:class:`studypub.tail.Parked`) take their entries this
    way: one ``transport.write`` per stream for a new entry, instead of waking a coroutine
    per stream to go through ``send``. Only under uvicorn's httptools protocol, whose
    ``send`` is a method of the request's cycle (its ``transport``, ``flow`` and
    chunked framing are what ``send`` itself uses); anything else (an in-process client,
    another server) gets None and sends as usual. The write refuses (:attr:`Written.NOTHING`)
    when the transport's buffer is over its high-water mark (uvicorn then pauses writing),
    the client is gone, or the connection closing: the stream then sends by itself, through
    ``send``, which waits for the buffer to drain under the tail's send timeout. A write
    that takes the buffer over the mark says so (:attr:`Written.FILLED`), and the stream
    waits for the drain the same way.
    """
    cycle: Any = getattr(send, "__self__", None)
    if type(cycle).__module__ != "uvicorn.protocols.http.httptools_impl":
        return None
    transport: Any = getattr(cycle, "transport", None)
    flow: Any = getattr(cycle, "flow", None)
    if transport is None or not hasattr(flow, "write_paused") or not hasattr(cycle, "disconnected"):
        return None  # another uvicorn than the one this was written for: send as usual
    if not getattr(cycle, "chunked_encoding", False):
        return None

    def write(body: bytes) -> Written:
        if flow.write_paused or cycle.disconnected or transport.is_closing():
            return Written.NOTHING
        transport.write(_chunk(body))  # pauses the flow at once if over the high-water mark
        return Written.FILLED if flow.write_paused else Written.DONE

    return write


_last_chunk: tuple[bytes | None, bytes] = (None, b"")


def _chunk(body: bytes) -> bytes:
    """``body`` framed as one HTTP/1.1 chunk. The tail writes the same body to thousands of
    streams in a row: it is framed once (the last one is kept, by identity)."""
    global _last_chunk
    if _last_chunk[0] is not body:
        _last_chunk = (body, b"%x\r\n%b\r\n" % (len(body), body))
    return _last_chunk[1]


class CutOffFilter(logging.Filter):
    """Drops the server's error line for a stream this module cut off on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.getMessage() != CUT_OFF
