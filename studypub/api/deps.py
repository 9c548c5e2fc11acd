"""Dependencies shared by the routers (``Annotated`` aliases).

Access: every authoring route needs the author token (:data:`AuthorDep`, taken once per
authoring router, see ``routes/common.py``); feed routes and ``/metrics`` take
:data:`ViewerDep` (the stream :data:`StreamViewerDep`), which checks the viewer token only
when ``STUDYPUB_VIEWER_TOKEN`` is set. Both go through :func:`_check_token`.
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Query, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from studypub.settings import Settings
from studypub.tail import FeedTail

_bearer = HTTPBearer(auto_error=False)


def get_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def write_session(request: Request) -> AsyncIterator[AsyncSession]:
    """One transaction per request: committed when the route returns, rolled back on error."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.sessions
    async with sessions() as session, session.begin():
        yield session


async def read_session(request: Request) -> AsyncIterator[AsyncSession]:
    """A read-only session (SQLite: never waits for a writer)."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.read_sessions
    async with sessions() as session:
        yield session


def get_read_session_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    """The read-session factory, for routes that read again on every wake-up (long-polls,
    streams): each read in its own session sees the newest committed entries."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.read_sessions
    return sessions


def get_tail(request: Request) -> FeedTail:
    tail: FeedTail = request.app.state.tail
    return tail


def bearer_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if the request has one."""
    return None if credentials is None else credentials.credentials


def _check_token(expected: str | None, given: str | None) -> None:
    """The one token comparison: nothing to check when ``expected`` is None."""
    if expected is None:
        return
    if given is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


def require_author(
    settings: Annotated[Settings, Depends(get_settings)],
    token: Annotated[str | None, Depends(bearer_token)],
) -> None:
    """Authoring routes always need the author token (the app never runs open)."""
    if not settings.author_token:
        raise HTTPException(401, "server has no author token configured")
    _check_token(settings.author_token, token)


def require_viewer(
    settings: Annotated[Settings, Depends(get_settings)],
    token: Annotated[str | None, Depends(bearer_token)],
) -> None:
    """Feed routes need the viewer token only when ``STUDYPUB_VIEWER_TOKEN`` is set."""
    _check_token(settings.viewer_token, token)


def require_stream_viewer(
    settings: Annotated[Settings, Depends(get_settings)],
    bearer: Annotated[str | None, Depends(bearer_token)],
    token: Annotated[
        str | None,
        Query(description="The viewer token, for EventSource clients that cannot set headers."),
    ] = None,
) -> None:
    """:func:`require_viewer`, also accepting ``?token=`` (``EventSource`` cannot set
    headers); a bearer header wins over it."""
    _check_token(settings.viewer_token, bearer if bearer is not None else token)


# scope="function": the transaction commits before the response is sent, so a client never
# hears of a write that then fails to commit, and its next request sees the write.
SessionDep = Annotated[AsyncSession, Depends(write_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(read_session)]
ReadSessionFactoryDep = Annotated[
    async_sessionmaker[AsyncSession], Depends(get_read_session_factory)
]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TailDep = Annotated[FeedTail, Depends(get_tail)]
AuthorDep = Annotated[None, Depends(require_author)]
ViewerDep = Annotated[None, Depends(require_viewer)]
StreamViewerDep = Annotated[None, Depends(require_stream_viewer)]
