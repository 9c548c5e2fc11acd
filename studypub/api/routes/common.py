"""What the authoring routers share: auth, ``If-Match`` / ``ETag``, paging, error docs."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request, Response
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from pydantic.json_schema import SkipJsonSchema

from studypub.api.deps import AuthorDep
from studypub.api.schemas import MAX_ID, ErrorPublic
from studypub.errors import InvalidInput
from studypub.models import SourceMixin
from studypub.records import DEFAULT_PAGE, MAX_PAGE

# "3", 3 and W/"3" all name version 3 (weak or strong, quoted or not); * matches any version.
IF_MATCH_PATTERN = r'^\s*(?:\*|(?:W/)?(?:"(\d{1,18})"|(\d{1,18})))\s*$'
_IF_MATCH = re.compile(IF_MATCH_PATTERN)

_DESCRIPTIONS = {
    400: "The body is not decodable (not UTF-8 JSON).",
    401: "Missing or wrong author token.",
    404: "Unknown or deleted.",
    409: "Not allowed in the current state.",
    412: "If-Match is not the current version; the current one is in ETag and detail.",
    413: "Request body over 1 MiB.",
    422: "Invalid input; detail says what is allowed.",
}


BODY = (400, 413)
"""The errors of any route that reads a body."""


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI docs of the error responses a route can give (401 and 422 always)."""
    return {
        code: {"model": ErrorPublic, "description": _DESCRIPTIONS[code]}
        for code in sorted({401, 422, *codes})
    }


def if_match(
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


def set_etag(response: Response, row: SourceMixin) -> None:
    """``ETag: "<version>"``: what the client sends back in ``If-Match``."""
    response.headers["ETag"] = f'"{row.version}"'


def next_after_id(rows: Sequence[SourceMixin], limit: int) -> int | None:
    """A full page may have a successor; a short one is the last."""
    return rows[-1].id if len(rows) == limit else None


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
RowId = Annotated[int, Path(ge=1, le=MAX_ID)]
AfterId = Annotated[int, Query(ge=0, le=MAX_ID, description="Last id of the previous page.")]
Limit = Annotated[int, Query(ge=1, le=MAX_PAGE)]
TopicFilter = Annotated[int | None, Query(ge=1, le=MAX_ID, description="Only this topic's.")]
AUTHOR = [AuthorDep, Depends(refuse_unknown_query)]
DEFAULT_LIMIT = DEFAULT_PAGE
