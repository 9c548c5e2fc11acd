"""``GET /metrics``: the Prometheus text exposition of this process (see ``studypub.metrics``).

The service token only (``STUDYPUB_VIEWER_TOKEN``; open with the feed when it is open on
purpose): a learner's token gets a 403.
Kept out of the OpenAPI schema, which describes the API for its clients, not for scrapers.
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from studypub import metrics, store
from studypub.api.deps import ServiceDep
from studypub.models import utcnow

router = APIRouter(include_in_schema=False)


@router.get("/metrics")
async def read_metrics(_service: ServiceDep, request: Request) -> Response:
    """Read the database gauges for this scrape (an edge server has no database, and no
    such gauges), then render every metric of the process."""
    sessions = getattr(request.app.state, "read_sessions", None)
    if sessions is not None:
        async with sessions() as session:
            status = await store.read_status(session)
        # No await between setting the gauges and rendering: a concurrent scrape cannot
        # slip its own figures in between.
        metrics.observe_status(status, now=utcnow())
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)
