"""The OpenAPI document: what the routes declare, completed with what no single route knows.

- Operation ids are the routes' function names (``create_card``), so generated clients get
  readable names.
- Every answer that is an entity (a topic, question, card, or a learner's progress on a
  card) carries its version in ``ETag``, the value ``If-Match`` takes.
- Links: from each operation that answers about an entity (its creation included) to every
  operation that takes that entity's id (in its path, or in the body of a creation), with
  the version of the answer as ``If-Match`` where the target is about the same entity. A
  generated client, and a stateful test, can follow ``POST /v1/cards`` to the ten
  operations on a card, and ``POST /v1/topics`` to the creation of its questions.
- On an open feed (``open_feed``) the feed's token is optional, and the document says so.
"""

from __future__ import annotations

import re
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from fastapi.routing import APIRoute

from studypub.api.deps import VIEWER_SCHEME

IDS = ("topic_id", "question_id", "card_id")
"""The path parameters that name an entity."""

ENTITIES = ("TopicPublic", "QuestionPublic", "CardPublic", "ProgressPublic")
"""The response models that are one entity, with a version."""

_PARAMETER = re.compile(r"\{(\w+)\}")
_METHODS = ("get", "put", "post", "patch", "delete")


def operation_id(route: APIRoute) -> str:
    """A route's operation id: its function's name (unique in the app, see the tests)."""
    return route.name


def install(app: FastAPI, *, open_feed: bool) -> None:
    """Serve :func:`document` of ``app`` as its ``/openapi.json`` (built once)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = document(app, open_feed=open_feed)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def document(app: FastAPI, *, open_feed: bool) -> dict[str, Any]:
    """The OpenAPI document of ``app``, completed (see the module's docstring)."""
    spec = get_openapi(
        title=app.title, version=app.version, description=app.description, routes=app.routes
    )
    operations = [
        (path, method, operation)
        for path, item in spec.get("paths", {}).items()
        for method, operation in item.items()
        if method in _METHODS
    ]
    for _path, _method, operation in operations:
        _declare_etag(operation)
    for path, _method, operation in operations:
        _link(spec, path, operation, operations)
    if open_feed:
        for _path, _method, operation in operations:
            if {VIEWER_SCHEME: []} in operation.get("security", []):
                operation["security"].append({})  # no token at all is accepted too
    return spec


def _declare_etag(operation: dict[str, Any]) -> None:
    for status, response in operation["responses"].items():
        if status.startswith("2") and _entity(response):
            response.setdefault("headers", {})["ETag"] = {
                "description": 'The entity\'s version, e.g. "4": send it back in If-Match.',
                "required": True,
                "schema": {"type": "string"},
            }


def _entity(response: dict[str, Any]) -> str | None:
    """The name of the entity model a response is, if it is one."""
    schema = response.get("content", {}).get("application/json", {}).get("schema", {})
    name = schema.get("$ref", "").rpartition("/")[2]
    return name if name in ENTITIES else None


def _body_fields(spec: dict[str, Any], operation: dict[str, Any]) -> tuple[set[str], set[str]]:
    """The properties of an operation's JSON body, and those it requires."""
    content = operation.get("requestBody", {}).get("content", {})
    reference = content.get("application/json", {}).get("schema", {}).get("$ref", "")
    schema = spec["components"]["schemas"].get(reference.rpartition("/")[2], {})
    return set(schema.get("properties", {})), set(schema.get("required", []))


def _link(
    spec: dict[str, Any],
    path: str,
    source: dict[str, Any],
    operations: list[tuple[str, str, dict[str, Any]]],
) -> None:
    """Add to each success answer of ``source`` (at ``path``) its links: to every operation
    whose entity ids that answer knows, in its path or (a creation) in its body."""
    for status, response in source["responses"].items():
        if not status.startswith("2"):
            continue
        # What the answer knows: the ids in the request's path (strings), and those in an
        # entity's body (integers): its own id, and the ids it refers to (a topic_id).
        known = {name: f"$request.path.{name}" for name in _PARAMETER.findall(path)}
        item = _item_path(path)
        created = [name for name in IDS if f"{path}/{{{name}}}" in spec["paths"]]
        if status == "201" and created:
            item = f"{path}/{{{created[0]}}}"
        entity = _entity(response)
        if entity is not None:
            fields = spec["components"]["schemas"][entity]["properties"]
            known |= {name: f"$response.body#/{name}" for name in IDS if name in fields}
            own = _PARAMETER.findall(item or "")[-1:]
            if own and own[0] in IDS and own[0] not in fields:
                known[own[0]] = "$response.body#/id"
        links: dict[str, Any] = {}
        for target_path, _method, target in operations:
            if target is source:
                continue
            wanted = _PARAMETER.findall(target_path)
            ids = [name for name in wanted if name in IDS]
            link: dict[str, Any] = {"operationId": target["operationId"]}
            if ids:
                if not set(ids) <= known.keys():
                    continue
                parameters = {f"path.{name}": known[name] for name in wanted if name in known}
                same_entity = entity and item and target_path.startswith(item)
                takes = {parameter["name"] for parameter in target.get("parameters", [])}
                if same_entity and "If-Match" in takes:
                    parameters["header.If-Match"] = "$response.header.ETag"
                link["parameters"] = parameters
            else:
                # A body takes integers: only what the answer's body says.
                typed = {k: v for k, v in known.items() if v.startswith("$response.body")}
                fields, required = _body_fields(spec, target)
                given = fields & typed.keys() & set(IDS)
                if not given or not (required & set(IDS)) <= given:
                    continue
                link["requestBody"] = {name: typed[name] for name in sorted(given)}
            links[target["operationId"]] = link
        if links:
            response["links"] = links


def _item_path(path: str) -> str | None:
    """The path of the entity an operation at ``path`` is about: up to its last parameter."""
    end = path.rfind("}")
    return path[: end + 1] if end >= 0 else None
