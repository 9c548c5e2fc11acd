"""``GET /metrics``: the Prometheus text exposition of this process (see ``studypub.metrics``).

On ``studypub serve``: the service token only (``STUDYPUB_VIEWER_TOKEN``; open with the
feed when it is open on purpose), a learner's token gets a 403. On a worker's metrics port
(``studypub worker --metrics-port``, :data:`open_router`): no token, since that port is for
the scraper alone (bind it to a private interface). Kept out of the OpenAPI schema, which
describes the API for its clients, not for scrapers.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from studypub import metrics
from studypub.api.deps import ServiceDep

router = APIRouter(include_in_schema=False)
open_router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def read_metrics(_service: ServiceDep, request: Request) -> Response:
    return await _exposition(request)


@open_router.get("/metrics")
async def read_metrics_open(request: Request) -> Response:
    return await _exposition(request)


async def _exposition(request: Request) -> Response:
    """Every metric of the process, and the database's gauges (an edge has no database)."""
    engine = getattr(request.app.state, "engine", None)
    return Response(await metrics.exposition(engine), media_type=CONTENT_TYPE_LATEST)
