"""Dependencies shared by the routers (``Annotated`` aliases)."""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from studypub.settings import Settings

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


def _check_token(expected: str | None, credentials: HTTPAuthorizationCredentials | None) -> None:
    if expected is None:
        return
    if credentials is None or credentials.scheme.lower() != "bearer":
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(credentials.credentials.encode(), expected.encode()):
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


def require_author(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Authoring routes always need the author token (the app never runs open)."""
    if not settings.author_token:
        raise HTTPException(401, "server has no author token configured")
    _check_token(settings.author_token, credentials)


def require_viewer(
    settings: Annotated[Settings, Depends(get_settings)],
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> None:
    """Feed routes need the viewer token only when ``STUDYPUB_VIEWER_TOKEN`` is set."""
    _check_token(settings.viewer_token, credentials)


# scope="function": the transaction commits before the response is sent, so a client never
# hears of a write that then fails to commit, and its next request sees the write.
SessionDep = Annotated[AsyncSession, Depends(write_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(read_session)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
AuthorDep = Depends(require_author)
ViewerDep = Depends(require_viewer)
