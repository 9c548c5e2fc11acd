"""The HTTP API: one router per resource, mounted under ``/v1`` by :func:`create_app`."""

from studypub.api.app import create_app

__all__ = ["create_app"]
