"""The authoring API and the feed against their own OpenAPI schema (schemathesis, bounded
examples, SQLite); the feed read with a learner's token.

Generated requests, valid and invalid, must never get a 5xx, nor a status, content type,
header or body the schema does not document.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis import Case
from schemathesis.checks import positive_data_acceptance
from sqlalchemy import insert

from studypub import authoring, scheduling, tokens
from studypub.api import create_app
from studypub.db import create_engine, session_factory
from studypub.models import Base, FeedHead, new_epoch
from studypub.settings import Settings
from tests.support.http import AUTH, AUTHOR_TOKEN, TOKEN_SECRET, bearer

MAX_EXAMPLES = 25
AUTHORING_PATHS = "^/v1/(topics|questions|cards|learners|viewer-tokens)"
FEED_PATHS = "^/v1/(feed$|items/)"  # not the stream: it never ends


async def _prepare(url: str) -> None:
    """Schema, feed head, and a little content so that some generated ids exist."""
    engine = create_engine(url)
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
        await conn.execute(insert(FeedHead).values(id=1, epoch=new_epoch(), last_seq=0, floor=0))
    async with session_factory(engine)() as session, session.begin():
        topic = await authoring.create_topic(session, title="Cells")
        question = await authoring.create_question(
            session, topic_id=topic.id, stem="Which?", choices=["a", "b"], answer="a"
        )
        card = await authoring.create_card(
            session, topic_id=topic.id, front="f", back="b", question_id=question.id
        )
        await authoring.approve_card(session, card.id)
        await scheduling.add_card_to_deck(session, card.id, "alice")
    await engine.dispose()


# Built at import: schemathesis needs the schema to generate the test cases. The app's engine
# connects lazily, so nothing is created until the fixture below prepares the database file.
_DB_FILE = Path(tempfile.gettempdir()) / f"studypub-schemathesis-{os.getpid()}.db"
_URL = f"sqlite+aiosqlite:///{_DB_FILE}"
_APP = create_app(Settings(database_url=_URL, author_token=AUTHOR_TOKEN, token_secret=TOKEN_SECRET))
_SCHEMA = schemathesis.openapi.from_asgi("/openapi.json", _APP)
schema = _SCHEMA.include(path_regex=AUTHORING_PATHS)
feed_schema = _SCHEMA.include(path_regex=FEED_PATHS, method="GET")
LEARNER = bearer(tokens.issue(TOKEN_SECRET, "alice")[0])


# Outside a conftest.py on purpose: it prepares the database of the app this module builds at
# import (schemathesis generates its cases from it), for this module alone.
@pytest.fixture(scope="module", autouse=True)
def _database() -> Iterator[None]:
    _remove_database()
    asyncio.run(_prepare(_URL))
    # Loading the schema ran the app's lifespan, whose feed tail may have opened the file
    # before it was prepared: drop such connections, to a file that is gone.
    asyncio.run(_APP.state.engine.dispose())
    yield
    asyncio.run(_APP.state.engine.dispose())
    _remove_database()


def _remove_database() -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{_DB_FILE}{suffix}").unlink(missing_ok=True)


BOUNDED = settings(
    max_examples=MAX_EXAMPLES,
    # Same examples on every run: a failure is a regression, never the luck of the draw.
    # (Random draws occasionally send an unknown query parameter with a null value, which
    # the HTTP client drops; schemathesis then calls the request schema-violating.)
    derandomize=True,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)


@schema.parametrize()
@BOUNDED
def test_authoring_api_conforms_to_its_schema(case: Case) -> None:
    # Not positive_data_acceptance: rules JSON Schema cannot state (the answer is one of the
    # choices, If-Match is the current version, the topic exists) rightly refuse some
    # schema-valid requests with 412 or 422. Every other default check runs.
    case.call_and_validate(headers=AUTH, excluded_checks=[positive_data_acceptance])


@feed_schema.parametrize()
@BOUNDED
def test_the_feed_read_by_a_learner_conforms_to_its_schema(case: Case) -> None:
    if case.query and case.query.get("wait"):
        case.query["wait"] = 0.01  # a long-poll of up to a minute, bounded
    case.call_and_validate(headers=LEARNER, excluded_checks=[positive_data_acceptance])
