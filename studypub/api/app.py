"""The FastAPI application factory."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlalchemy.ext.asyncio import AsyncEngine
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from studypub import __version__, bridge, health, tokens
from studypub.api import errors, openapi
from studypub.api.routes import (
    cards,
    feed,
    learners,
    metrics,
    questions,
    topics,
    viewer,
    viewer_tokens,
)
from studypub.api.routes import health as health_routes
from studypub.db import create_engine, read_session_factory, session_factory
from studypub.edge import EdgeTail
from studypub.relay import Relay
from studypub.settings import Settings, get_settings
from studypub.tail import FeedTail, Tail

MAX_BODY_BYTES = 1024 * 1024
DESCRIPTION = (
    "The authoring API of studypub and its change feed. Every error is"
    ' `{"error": code, "detail": ...}`; docs/feed-protocol.md is the feed\'s contract.'
)


class BodyLimit:
    """Refuse request bodies over ``max_bytes`` with 413, before the route reads them."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._too_large(scope, receive, send)
            return
        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    raise _TooLarge(self.max_bytes)
            return message

        try:
            await self.app(scope, limited_receive, send)
        except _TooLarge:
            await self._too_large(scope, receive, send)

    async def _too_large(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = errors.error_response(
            413, "payload_too_large", f"request body is over {self.max_bytes} bytes"
        )
        await response(scope, receive, send)


class _TooLarge(StarletteHTTPException):
    """Raised from ``receive`` when the body grows too large. An HTTPException, because FastAPI
    turns any other error raised while it reads a body into a 400; this one reaches the
    handler as a 413."""

    def __init__(self, max_bytes: int) -> None:
        super().__init__(413, f"request body is over {max_bytes} bytes")


def create_app(settings: Settings | None = None, engine: AsyncEngine | None = None) -> FastAPI:
    """The studypub app. It never runs open by accident: without an author token in
    ``settings`` one is generated (see ``app.state.settings``), and so is the feed's service
    token unless the feed is open on purpose (``open_feed``); without a token secret, one
    for this process signs learners' tokens."""
    settings = _completed(settings or get_settings())
    owns_engine = engine is None
    engine = engine or create_engine(settings.database_url)
    tail = FeedTail(engine, window=settings.feed_window)
    app = _app(settings, tail, on_shutdown=engine.dispose if owns_engine else None)
    app.state.engine = engine
    app.state.sessions = session_factory(engine)
    app.state.read_sessions = read_session_factory(engine)

    async def readiness() -> health.Checks:
        return await health.database_checks(engine) | tail.readiness()

    app.state.readiness = readiness
    # Routers register below (one line per module).
    app.include_router(feed.router)
    app.include_router(viewer.router)
    app.include_router(topics.router)
    app.include_router(questions.router)
    app.include_router(cards.router)
    app.include_router(learners.router)
    app.include_router(viewer_tokens.router)
    app.include_router(metrics.router)
    return app


def create_edge_app(
    nats_url: str, settings: Settings | None = None, *, prefix: str = bridge.PREFIX
) -> FastAPI:
    """An edge feed server (:mod:`studypub.edge`): the feed, the web viewer and the metrics,
    read from the NATS stream at ``nats_url``; no database, no authoring. Learners' tokens
    verify only with the origin's ``token_secret``, and service clients need its
    ``viewer_token``."""
    settings = _completed(settings or get_settings())
    tail = EdgeTail(nats_url, prefix=prefix)
    app = _app(settings, tail)

    async def readiness() -> health.Checks:
        return tail.readiness()

    app.state.readiness = readiness
    app.include_router(feed.router)
    app.include_router(viewer.router)
    app.include_router(metrics.router)
    return app


def _completed(settings: Settings) -> Settings:
    """A copy of ``settings`` with the tokens it lacks generated (see :func:`create_app`)."""
    settings = settings.model_copy()
    if not settings.author_token:
        settings.author_token = secrets.token_urlsafe(24)
    if not settings.viewer_token and not settings.open_feed:
        settings.viewer_token = secrets.token_urlsafe(24)
    if not settings.token_secret:
        settings.token_secret = tokens.new_secret()
    return settings


def _app(
    settings: Settings,
    tail: Tail,
    *,
    on_shutdown: Callable[[], Awaitable[None]] | None = None,
) -> FastAPI:
    """The app around a feed tail: its lifespan, settings, errors and body limit."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await tail.start()
        try:
            yield
        finally:
            await tail.stop()
            if on_shutdown is not None:
                await on_shutdown()

    app = FastAPI(
        title="studypub",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        generate_unique_id_function=openapi.operation_id,
    )
    openapi.install(app, open_feed=settings.open_feed)
    app.state.settings = settings
    app.state.tail = tail
    errors.install(app)
    app.add_middleware(BodyLimit)
    app.include_router(health_routes.router)
    return app


def create_worker_app(engine: AsyncEngine, relay: Relay) -> FastAPI:
    """A worker's metrics port (``studypub worker --metrics-port``): ``/metrics`` (no token:
    the port is the scraper's), ``/healthz`` and ``/readyz``."""
    app = FastAPI(title="studypub worker", version=__version__, openapi_url=None)
    app.state.engine = engine

    async def readiness() -> health.Checks:
        checks = await health.database_checks(engine)
        if relay.listening is not None:
            checks |= health.listener_check(relay.listening)
        return checks

    app.state.readiness = readiness
    errors.install(app)
    app.include_router(health_routes.router)
    app.include_router(metrics.open_router)
    return app
