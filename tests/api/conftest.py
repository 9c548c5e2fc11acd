"""Fixtures of the API tests: in-process clients of the real app, and content made through it
with its outbox rows already taken (so that a test sees only its own)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.support.http import api_client, app_client, create_card, create_topic
from tests.support.outbox import take_outbox


@pytest.fixture
async def client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The app's client with the author token."""
    async with api_client(engine) as c:
        yield c


@pytest.fixture
async def viewer_client(engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """The app's client without a token, as a viewer (no viewer token is set)."""
    async with app_client(engine) as c:
        yield c


@pytest.fixture
async def topic(engine: AsyncEngine, client: httpx.AsyncClient) -> dict[str, Any]:
    """One topic."""
    created = await create_topic(client)
    await take_outbox(engine)
    return created


@pytest.fixture
async def card(engine: AsyncEngine, client: httpx.AsyncClient) -> dict[str, Any]:
    """One approved card, in a topic of its own."""
    topic = await create_topic(client)
    created = await create_card(client, topic["id"], approve=True)
    await take_outbox(engine)
    return created


@pytest.fixture
async def deck(engine: AsyncEngine, client: httpx.AsyncClient, card: dict[str, Any]) -> str:
    """The URL of alice's progress on ``card`` (version 1, never reviewed)."""
    url = f"/v1/learners/alice/cards/{card['id']}"
    assert (await client.post(url)).status_code == 201
    await take_outbox(engine)
    return url
