"""A client generated from a live server's ``/openapi.json`` with openapi-python-client, as a
team consuming studypub builds one, then used as they would: a create-read-update-delete
round trip with ``If-Match`` taken from ``ETag``, the errors as typed models, an explanation
through its one-shape-per-status body, and the feed read with its ``Kind`` enum."""

from __future__ import annotations

import asyncio
import importlib
import subprocess
import sys
import time
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.cli import served
from tests.support.databases import url_of
from tests.support.http import AUTHOR_TOKEN, VIEWER_TOKEN

GENERATOR = str(Path(sys.executable).with_name("openapi-python-client"))
PACKAGE = "studypub_client"


async def test_a_generated_client_round_trip(migrated: AsyncEngine, tmp_path: Path) -> None:
    async with served(url_of(migrated), tmp_path / "serve.log") as url:
        async with httpx.AsyncClient() as http:
            document = (await http.get(f"{url}/openapi.json")).text
        client = await asyncio.to_thread(_generate, document, tmp_path)
        try:
            await asyncio.to_thread(_round_trip, client, url)
        finally:
            for name in [name for name in sys.modules if name.startswith(PACKAGE)]:
                del sys.modules[name]
            sys.path.remove(str(tmp_path))


def _generate(document: str, where: Path) -> ModuleType:
    (where / "openapi.json").write_text(document)
    (where / "config.yaml").write_text(f"package_name_override: {PACKAGE}\npost_hooks: []\n")
    argv = [GENERATOR, "generate", "--path", "openapi.json", "--meta", "none"]
    argv += ["--config", "config.yaml", "--output-path", PACKAGE]
    done = subprocess.run(argv, cwd=where, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Warning" not in done.stdout, done.stdout  # every operation and model generated
    sys.path.insert(0, str(where))
    return importlib.import_module(PACKAGE)


def _module(name: str) -> Any:
    return importlib.import_module(f"{PACKAGE}.{name}")


def _round_trip(package: ModuleType, url: str) -> None:
    topics = {
        name: _module(f"api.topics.{name}")
        for name in ("create_topic", "get_topic", "update_topic", "delete_topic")
    }
    models = _module("models")
    author = package.AuthenticatedClient(base_url=url, token=AUTHOR_TOKEN)

    created = topics["create_topic"].sync_detailed(
        client=author, body=models.TopicCreate(title="Cells", description="Life's units")
    )
    assert created.status_code == 201
    topic = created.parsed
    assert isinstance(topic, models.TopicPublic)
    assert (topic.title, topic.version) == ("Cells", 1)
    assert created.headers["ETag"] == '"1"'

    read = topics["get_topic"].sync(topic_id=topic.id, client=author)
    assert read == topic

    def retitle(title: str, etag: str) -> Any:
        body = models.TopicUpdate(title=title)
        return topics["update_topic"].sync_detailed(
            topic_id=topic.id, client=author, body=body, if_match=etag
        )

    updated = retitle("Cell biology", created.headers["ETag"])
    assert updated.status_code == 200
    assert (updated.parsed.title, updated.parsed.version) == ("Cell biology", 2)
    stale = retitle("Lost", created.headers["ETag"])  # the version before the update
    assert stale.status_code == 412
    assert isinstance(stale.parsed, models.ErrorPublic)
    assert stale.parsed.error == "stale_version"

    question = _module("api.questions.create_question").sync(
        client=author,
        body=models.QuestionCreate(
            topic_id=topic.id,
            stem="The cell's powerhouse?",
            choices=["ER", "mitochondria"],
            answer="mitochondria",
        ),
    )
    assert isinstance(question, models.QuestionPublic)
    explained = _module("api.questions.put_explanation").sync(
        question_id=question.id, client=author, body=models.ExplanationReady(body="ATP.")
    )
    assert explained.explanation == "ATP."
    assert explained.explanation_status == models.QuestionPublicExplanationStatus.READY
    missing = _module("api.questions.create_question").sync_detailed(
        client=author,
        body=models.QuestionCreate(topic_id=10**9, stem="?", choices=["a", "b"], answer="a"),
    )
    assert (missing.status_code, missing.parsed.error) == (409, "missing_reference")

    deleted = _module("api.questions.delete_question").sync_detailed(
        question_id=question.id, client=author
    )
    assert deleted.status_code == 204
    deleted = topics["delete_topic"].sync_detailed(
        topic_id=topic.id, client=author, if_match=updated.headers["ETag"]
    )
    assert deleted.status_code == 204
    gone = topics["get_topic"].sync_detailed(topic_id=topic.id, client=author)
    assert gone.status_code == 404
    assert gone.parsed.error == "not_found"

    # The feed, as a service reads it: the topic's tombstone, once the relay published it.
    viewer = package.AuthenticatedClient(base_url=url, token=VIEWER_TOKEN)
    read_page = _module("api.feed.read_feed_page")
    deadline = time.monotonic() + 10
    while True:
        page = read_page.sync(client=viewer, since="0", kinds=[models.Kind.TOPIC], wait=1)
        assert isinstance(page, models.FeedPagePublic)
        if page.results and page.results[-1].deleted:
            break
        assert time.monotonic() < deadline, page
    [entry] = page.results
    assert (entry.kind, entry.id, entry.version) == (models.Kind.TOPIC, topic.id, 3)
