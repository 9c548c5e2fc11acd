"""The one place where errors become HTTP responses: ``{"error": code, "detail": ...}``."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from studypub import errors
from studypub.api.schemas import ErrorPublic

STATUS: dict[type[errors.StudypubError], int] = {
    errors.InvalidInput: 422,
    errors.NotFound: 404,
    errors.Unauthorized: 401,
    errors.Forbidden: 403,
    errors.Conflict: 409,
    errors.StaleVersion: 412,
    errors.ResetRequired: 410,
    errors.TransientError: 503,
    errors.SchemaNotMigrated: 503,
}

HTTP_CODES: dict[int, str] = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    410: "reset_required",
    412: "stale_version",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
}


# What each error status means, for the OpenAPI document; a route passes its own words
# where they say more (:func:`documented`).
_DESCRIPTIONS = {
    400: "The body is not decodable (not UTF-8 JSON).",
    401: "Missing or wrong bearer token.",
    403: "The token does not allow this.",
    404: "Unknown or deleted.",
    409: "Well-formed, but the current state refuses it; detail says why.",
    410: "reset_required: the cursor is below the feed's floor or from another epoch.",
    412: "If-Match is not the current version; the current one is in ETag and detail.",
    413: "Request body over 1 MiB.",
    422: "Invalid input; detail says what is allowed.",
    503: (
        "Nobody's input is wrong, but the request cannot be served now: the database is"
        " unavailable or busy (database_unavailable, database_busy) or an edge server's"
        " stream is (feed_unavailable). Retry after Retry-After seconds."
    ),
}
_HEADERS = {
    401: {"WWW-Authenticate": "Bearer"},
    412: {"ETag": 'The current version, e.g. "4".'},
    503: {"Retry-After": "Seconds to wait before retrying."},
}
_INTEGER_HEADERS = {"Retry-After"}


def documented(*codes: int, **described: str) -> dict[int | str, dict[str, Any]]:
    """OpenAPI docs of the error responses ``codes``: the error model, a description (the
    default one, or ``described["e404"]`` for 404), and the headers the error sets."""
    docs: dict[int | str, dict[str, Any]] = {}
    for code in sorted(set(codes)):
        doc: dict[str, Any] = {
            "model": ErrorPublic,
            "description": described.get(f"e{code}", _DESCRIPTIONS[code]),
        }
        if code in _HEADERS:
            doc["headers"] = {
                name: {
                    "description": description,
                    "schema": {"type": "integer" if name in _INTEGER_HEADERS else "string"},
                }
                for name, description in _HEADERS[code].items()
            }
        docs[code] = doc
    return docs


def error_response(
    status: int, code: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    """An error answer; no cache keeps it (a 410 or a 503 must be asked again)."""
    headers = {"Cache-Control": "no-store", **(headers or {})}
    return JSONResponse({"error": code, "detail": detail}, status_code=status, headers=headers)


def _status_of(exc: errors.StudypubError) -> int:
    for cls in type(exc).__mro__:
        if cls in STATUS:
            return STATUS[cls]
    return 500


async def _studypub_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, errors.StudypubError)
    headers = None
    detail: Any = exc.detail
    if isinstance(exc, errors.StaleVersion) and exc.current_version is not None:
        headers = {"ETag": f'"{exc.current_version}"'}
        detail = {"message": str(exc), "current_version": exc.current_version}
    elif isinstance(exc, errors.Unauthorized):
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(exc, errors.TransientError):
        # The reason is in the server's log (once per outage: db.OutageLog); clients learn
        # what to do, not where the database lives.
        headers = {"Retry-After": str(exc.retry_after_s)}
        if isinstance(exc, errors.FeedUnavailable):
            detail = f"{exc}; retry in {exc.retry_after_s} s"
        else:
            what = "unavailable" if isinstance(exc, errors.DatabaseUnavailable) else "busy"
            detail = f"the database is {what}; retry in {exc.retry_after_s} s"
    return error_response(_status_of(exc), exc.code, detail, headers)


async def _validation_error(_request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    detail = [
        {"loc": list(err.get("loc", ())), "msg": err.get("msg", ""), "type": err.get("type", "")}
        for err in exc.errors()
    ]
    return error_response(422, "invalid_input", detail)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = HTTP_CODES.get(exc.status_code, "error")
    headers = dict(exc.headers or {})
    if exc.status_code == 405:
        headers["Allow"] = _allowed_methods(request)
    return error_response(exc.status_code, code, exc.detail, headers)


def _allowed_methods(request: Request) -> str:
    """Every method of every route on this path. Starlette's own ``Allow`` names only the
    methods of the first route that matched the path (e.g. POST but not GET /v1/topics)."""
    # Ask the routes (included routers too) which methods fully match, one method at a time.
    allowed = [
        method
        for method in _METHODS
        if any(
            route.matches({**request.scope, "method": method})[0] is Match.FULL
            for route in request.app.router.routes
        )
    ]
    return ", ".join(allowed)


_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``."""
    app.add_exception_handler(errors.StudypubError, _studypub_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
