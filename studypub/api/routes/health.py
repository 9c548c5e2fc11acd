"""``GET /healthz`` and ``GET /readyz`` (see :mod:`studypub.health`), for load balancers and
orchestrators: no token, and out of the OpenAPI schema (they describe the process, not the
API). The checks of ``/readyz`` are the app's ``state.readiness``."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from studypub import health

router = APIRouter(include_in_schema=False)

NO_STORE = {"Cache-Control": "no-store"}


@router.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "up"}, headers=NO_STORE)


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    checks = await request.app.state.readiness()
    if health.ready(checks):
        return JSONResponse({"status": "ready", "checks": checks}, headers=NO_STORE)
    body = {"error": "not_ready", "detail": checks}
    return JSONResponse(body, status_code=503, headers=NO_STORE | {"Retry-After": "5"})
