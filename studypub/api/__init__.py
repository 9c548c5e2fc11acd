"""The HTTP API: one router per resource, mounted under ``/v1`` by :func:`create_app` (and,
for an edge feed server, the feed's routers by :func:`create_edge_app`)."""

from studypub.api.app import create_app, create_edge_app

__all__ = ["create_app", "create_edge_app"]
