"""Dependencies shared by the routers (``Annotated`` aliases).

Every dependency is ``async def``, even those that never await: FastAPI runs a plain
``def`` dependency in its thread pool, a thread hop per dependency per request (most of a
feed request's CPU time when they were plain functions).

Access: every authoring route needs the author token (:data:`AuthorDep`, taken once per
authoring router, see ``routes/common.py``). Feed routes take :data:`ViewerDep`: the
:class:`~studypub.tokens.Viewer` the bearer token stands for (the service token sees
everything, a learner's token the shared content and its own progress); ``/metrics`` takes
:data:`ServiceDep`, the service token only. Tokens come in the ``Authorization`` header
alone, never in a URL (URLs end up in access logs).
"""

from __future__ import annotations

import secrets
from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from studypub import tokens
from studypub.errors import Forbidden, Unauthorized
from studypub.settings import Settings
from studypub.tail import Tail
from studypub.tokens import SERVICE, Viewer

# Two security schemes in the OpenAPI document, both bearer tokens in ``Authorization``.
AUTHOR_SCHEME = "AuthorToken"
VIEWER_SCHEME = "ViewerToken"
_author_bearer = HTTPBearer(
    auto_error=False,
    scheme_name=AUTHOR_SCHEME,
    description="The author token (STUDYPUB_AUTHOR_TOKEN): every authoring route.",
)
_viewer_bearer = HTTPBearer(
    auto_error=False,
    scheme_name=VIEWER_SCHEME,
    bearerFormat="JWT",
    description=(
        "The feed's service token (STUDYPUB_VIEWER_TOKEN) or the author token: everything;"
        " a learner's viewer token (a JWT from POST /v1/viewer-tokens or `studypub token"
        " issue`): the shared content and that learner's progress."
    ),
)


async def get_settings(request: Request) -> Settings:
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


async def get_read_session_factory(request: Request) -> async_sessionmaker[AsyncSession]:
    """The read-session factory, for routes that read again on every wake-up (long-polls,
    streams): each read in its own session sees the newest committed entries."""
    sessions: async_sessionmaker[AsyncSession] = request.app.state.read_sessions
    return sessions


async def get_tail(request: Request) -> Tail:
    tail: Tail = request.app.state.tail
    return tail


def _token(credentials: HTTPAuthorizationCredentials | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if the request has one."""
    return None if credentials is None else credentials.credentials


async def author_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_author_bearer)],
) -> str | None:
    return _token(credentials)


async def viewer_token(
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_viewer_bearer)],
) -> str | None:
    return _token(credentials)


def _check_token(expected: str | None, given: str | None) -> None:
    """The one token comparison: nothing to check when ``expected`` is None."""
    if expected is None:
        return
    if given is None:
        raise HTTPException(401, "missing bearer token", headers={"WWW-Authenticate": "Bearer"})
    if not secrets.compare_digest(given.encode(), expected.encode()):
        raise HTTPException(401, "invalid bearer token", headers={"WWW-Authenticate": "Bearer"})


async def require_author(
    settings: Annotated[Settings, Depends(get_settings)],
    token: Annotated[str | None, Depends(author_token)],
) -> None:
    """Authoring routes always need the author token (the app never runs open)."""
    if not settings.author_token:
        raise HTTPException(401, "server has no author token configured")
    _check_token(settings.author_token, token)


async def viewer_of(
    request: Request,
    settings: Annotated[Settings, Depends(get_settings)],
    token: Annotated[str | None, Depends(viewer_token)],
) -> Viewer:
    """Who reads the feed. The service token (``STUDYPUB_VIEWER_TOKEN``) sees everything, and
    so does the author token (it reads every learner's progress through the authoring API
    anyway); a learner's token (:mod:`studypub.tokens`) its own part; no token, everything
    only when the feed is open on purpose (``STUDYPUB_OPEN_FEED``). Anything else is a 401."""
    if token is None:
        if settings.open_feed:
            return SERVICE
        if "token" in request.query_params:
            raise Unauthorized(
                "tokens are not accepted in URLs (they end up in access logs): send the"
                " header Authorization: Bearer <token>"
            )
        raise Unauthorized(
            "missing bearer token: the feed needs a viewer token (Authorization: Bearer ...)"
        )
    for service in (settings.viewer_token, settings.author_token):
        if service is not None and secrets.compare_digest(token.encode(), service.encode()):
            return SERVICE
    if settings.token_secret is None or token.count(".") != 2:  # not a JWT
        raise Unauthorized("invalid bearer token: neither the service token nor a viewer token")
    return tokens.verify(settings.token_secret, token)


async def require_service(viewer: Annotated[Viewer, Depends(viewer_of)]) -> None:
    """Routes about the whole server (``/metrics``): the service token only."""
    if not viewer.everything:
        raise Forbidden("a learner's token cannot read this: it needs the service token")


# scope="function": the transaction commits before the response is sent, so a client never
# hears of a write that then fails to commit, and its next request sees the write.
SessionDep = Annotated[AsyncSession, Depends(write_session, scope="function")]
ReadSessionDep = Annotated[AsyncSession, Depends(read_session)]
ReadSessionFactoryDep = Annotated[
    async_sessionmaker[AsyncSession], Depends(get_read_session_factory)
]
SettingsDep = Annotated[Settings, Depends(get_settings)]
TailDep = Annotated[Tail, Depends(get_tail)]
AuthorDep = Annotated[None, Depends(require_author)]
ViewerDep = Annotated[Viewer, Depends(viewer_of)]
ServiceDep = Annotated[None, Depends(require_service)]
