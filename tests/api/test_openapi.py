"""What the OpenAPI document says beyond each route (``studypub/api/openapi.py``); the
document as a whole is checked against the live API by ``test_schemathesis.py``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from studypub.api import create_app
from studypub.settings import Settings


def _document(tmp_path: Path, **settings: Any) -> dict[str, Any]:
    url = f"sqlite+aiosqlite:///{tmp_path / 'unused.db'}"  # the document reads no database
    spec: dict[str, Any] = create_app(Settings(database_url=url, **settings)).openapi()
    return spec


def _operations(spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {op["operationId"]: op for path in spec["paths"].values() for op in path.values()}


def test_operation_ids_are_the_route_names(tmp_path: Path) -> None:
    spec = _document(tmp_path)
    ids = [op["operationId"] for path in spec["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids))
    assert {"create_card", "read_feed_page", "put_explanation"} <= set(ids)


def test_a_new_card_links_to_every_operation_on_it(tmp_path: Path) -> None:
    operations = _operations(_document(tmp_path))
    links = operations["create_card"]["responses"]["201"]["links"]
    on_the_card = [
        name
        for name, op in operations.items()
        if any(p["name"] == "card_id" and p["in"] == "path" for p in op.get("parameters", []))
    ]
    assert len(on_the_card) == 10
    for name in on_the_card:
        assert links[name]["parameters"]["path.card_id"] == "$response.body#/id"
    # The card's own operations get its version; a learner's progress has versions of its own.
    assert links["approve_card"]["parameters"]["header.If-Match"] == "$response.header.ETag"
    assert "header.If-Match" not in links["rate_card"]["parameters"]
    # A new topic leads to the creation of its questions and cards.
    topic_links = operations["create_topic"]["responses"]["201"]["links"]
    assert topic_links["create_question"]["requestBody"] == {"topic_id": "$response.body#/id"}


def test_every_entity_answer_declares_its_etag(tmp_path: Path) -> None:
    operations = _operations(_document(tmp_path))
    for name in ("create_topic", "get_card", "update_question", "rate_card", "approve_card"):
        [success] = [r for status, r in operations[name]["responses"].items() if status < "300"]
        assert success["headers"]["ETag"]["required"] is True, name


@pytest.mark.parametrize("open_feed", [False, True])
def test_security_is_declared_on_every_route(tmp_path: Path, open_feed: bool) -> None:
    operations = _operations(_document(tmp_path, open_feed=open_feed))
    for name, op in operations.items():
        feed = op["tags"] == ["feed"]
        scheme = "ViewerToken" if feed else "AuthorToken"
        optional = [{}] if feed and open_feed else []
        assert op["security"] == [{scheme: []}, *optional], name
        assert "503" in op["responses"] or name == "issue_viewer_token", name


def test_kinds_are_one_enum(tmp_path: Path) -> None:
    spec = _document(tmp_path)
    kind = {"$ref": "#/components/schemas/Kind"}
    assert spec["components"]["schemas"]["Kind"]["enum"] == [
        "topic",
        "question",
        "explanation",
        "card",
        "card_progress",
    ]
    item = _operations(spec)["read_item"]
    assert next(p for p in item["parameters"] if p["name"] == "kind")["schema"] == kind
    page = _operations(spec)["read_feed_page"]
    kinds = next(p for p in page["parameters"] if p["name"] == "kinds")["schema"]
    assert (kinds["type"], kinds["items"]) == ("array", kind)
