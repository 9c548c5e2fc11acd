"""What the authoring routers share: auth, ``If-Match`` / ``ETag``, ``Idempotency-Key``,
paging, error docs, and the responses of a created or changed row."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Header, Path, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute
from pydantic import BaseModel
from pydantic.json_schema import SkipJsonSchema
from sqlalchemy.ext.asyncio import AsyncSession

from studypub import idempotency
from studypub.api.deps import AuthorDep
from studypub.api.errors import documented
from studypub.api.schemas import MAX_ID, ErrorPublic
from studypub.errors import InvalidInput
from studypub.models import SourceMixin
from studypub.records import MAX_LIST_LIMIT

# "3", 3 and W/"3" all name version 3 (weak or strong, quoted or not); * matches any version.
IF_MATCH_PATTERN = r'^\s*(?:\*|(?:W/)?(?:"(\d{1,18})"|(\d{1,18})))\s*$'
_IF_MATCH = re.compile(IF_MATCH_PATTERN)
REPLAYED = "Idempotent-Replayed"

Public = TypeVar("Public", bound=BaseModel)

BODY = (400, 413)
"""The errors of any route that reads a body."""


def errors(*codes: int, database: bool = True) -> dict[int | str, dict[str, Any]]:
    """OpenAPI docs of the error responses an authoring route can give: ``codes``, and
    what every one can (401, 422 for a bad query or path, and 503 if it reads the
    ``database``)."""
    always = (401, 422, 503) if database else (401, 422)
    return documented(*always, *codes, e401="Missing or wrong author token.")


async def if_match(
    value: Annotated[
        str | SkipJsonSchema[None],
        Header(
            alias="If-Match",
            # In the schema only: a malformed value gets our clearer message below.
            json_schema_extra={"pattern": IF_MATCH_PATTERN},
            description='Expected version: "3", 3 or W/"3". A stale one gives 412.',
        ),
    ] = None,
) -> int | None:
    """The version the client expects, or ``None`` (no header, or ``*``)."""
    if value is None:
        return None
    match = _IF_MATCH.match(value)
    if match is None:
        raise InvalidInput(f'If-Match must be a version like "3", 3 or W/"3"; got {value[:40]!r}')
    number = match.group(1) or match.group(2)
    return int(number) if number else None


async def idempotency_key(
    value: Annotated[
        str | SkipJsonSchema[None],
        Header(
            alias="Idempotency-Key",
            # In the schema only: a malformed key gets our clearer message below.
            json_schema_extra={"pattern": idempotency.KEY_PATTERN},
            description=(
                f"1 to {idempotency.MAX_KEY} visible ASCII characters, new for each request."
                " A retry with the same key and request replays the first success (kept"
                f" {idempotency.KEY_TTL.total_seconds() / 3600:g} h); another request with"
                " the key gives 409."
            ),
        ),
    ] = None,
) -> str | None:
    """The client's key that makes its retries safe, or ``None``."""
    return None if value is None else idempotency.check_key(value)


def idempotent(responses: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """OpenAPI docs of a (200) route taking ``Idempotency-Key``: its 409 and its replays."""
    return {
        **responses,
        200: {
            "headers": {
                REPLAYED: {
                    "description": "A replay of the first response to this Idempotency-Key.",
                    "schema": {"type": "string", "enum": ["true"]},
                }
            }
        },
        409: {
            "model": ErrorPublic,
            "description": (
                "Not allowed in the current state, or the Idempotency-Key was used for"
                " another request."
            ),
        },
    }


async def run_once(
    session: AsyncSession,
    key: str | None,
    request: Request,
    response: Response,
    write: Callable[[], Awaitable[Public]],
) -> Public | JSONResponse:
    """Run ``write`` unless ``key`` already ran it: then replay the stored response.

    The key is claimed before ``write`` runs (a duplicate waits for it, see
    :mod:`studypub.idempotency`) and the response is stored in the request's transaction.
    ``write`` sets the headers it needs on ``response`` (``ETag``), which are stored too.
    """
    if key is None:
        return await write()
    fingerprint = idempotency.request_fingerprint(
        request.method, request.url.path, await _json_body(request)
    )
    stored = await idempotency.claim(session, key, fingerprint)
    if stored is not None:
        return _replayed(stored)
    public = await write()
    route: APIRoute = request.scope["route"]
    status = response.status_code or route.status_code or 200
    body = public.model_dump(mode="json")
    await idempotency.save(
        session, key, idempotency.StoredResponse(status, body, response.headers.get("ETag"))
    )
    return public


async def _json_body(request: Request) -> Any:
    raw = await request.body()  # already read (and cached) by FastAPI
    return json.loads(raw) if raw else None


def _replayed(stored: idempotency.StoredResponse) -> JSONResponse:
    headers = {REPLAYED: "true"}
    if stored.etag is not None:
        headers["ETag"] = stored.etag
    return JSONResponse(stored.body, status_code=stored.status, headers=headers)


def versioned(response: Response, row: SourceMixin, schema: type[Public]) -> Public:
    """``row`` as its response ``schema``, with ``ETag: "<version>"``: what the client sends
    back in ``If-Match``."""
    response.headers["ETag"] = f'"{row.version}"'
    return schema.model_validate(row)


def created(response: Response, row: SourceMixin, schema: type[Public], location: str) -> Public:
    """A new ``row`` (the route answers 201): :func:`versioned`, and where it lives."""
    response.headers["Location"] = location
    return versioned(response, row, schema)


async def authoring_request(_author: AuthorDep, request: Request) -> None:
    """What every authoring route checks first (its router's dependency): the author token,
    then the query string (:func:`refuse_unknown_query`)."""
    refuse_unknown_query(request)


def refuse_unknown_query(request: Request) -> None:
    """Unknown query parameters are refused like unknown body fields: a typo such as
    ``?limt=10`` must not silently give the default page."""
    route: APIRoute = request.scope["route"]
    known = _query_params(route.dependant)
    unknown = sorted(set(request.query_params) - known)
    if unknown:
        allowed = ", ".join(sorted(known)) or "none"
        raise InvalidInput(
            f"unknown query parameter {', '.join(map(repr, unknown))}; allowed: {allowed}"
        )


def _query_params(dependant: Dependant) -> set[str]:
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_params(sub)
    return names


IfMatch = Annotated[int | None, Depends(if_match)]
IdempotencyKey = Annotated[str | None, Depends(idempotency_key)]
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
AfterId = Annotated[int, Query(ge=0, le=MAX_ID, description="Last id of the previous page.")]
Limit = Annotated[int, Query(ge=1, le=MAX_LIST_LIMIT)]
TopicFilter = Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only this topic's.")]
AUTHORING = [Depends(authoring_request)]
