"""The HTTP contract while the database is away: JSON 503s with Retry-After, one log line per
outage, and recovery without a restart (DESIGN "Failure contract").

PostgreSQL: the test database stops accepting connections and loses the ones it had, as in
a restart. SQLite: a writer holding the file's lock longer than the busy timeout.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import db
from studypub.notify import asyncpg_dsn
from studypub.serving import running
from tests.support.databases import PG_ADMIN_URL, PG_ONLY
from tests.support.http import AUTH, error_of, make_app

pytestmark = pytest.mark.timeout(60)


@asynccontextmanager
async def database_down(engine: AsyncEngine) -> AsyncIterator[None]:
    """No connection to the test database is possible, and the open ones are cut."""
    name = engine.url.database
    admin = await asyncpg.connect(asyncpg_dsn(PG_ADMIN_URL))
    try:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        await admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
        )
        yield
    finally:
        await admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')
        await admin.close()


def assert_unavailable(response: httpx.Response) -> None:
    detail = error_of(response, 503, "database_unavailable")
    assert "retry" in detail
    assert response.headers["Retry-After"] == "5"


@PG_ONLY
async def test_every_route_answers_503_json_during_an_outage_and_recovers(
    engine: AsyncEngine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    app = make_app(engine)
    async with running(app) as url, httpx.AsyncClient(base_url=url, headers=AUTH) as client:
        created = await client.post("/v1/topics", json={"title": "before"})
        assert created.status_code == 201
        topic_id = created.json()["id"]
        async with database_down(engine):
            for _ in range(3):  # a line per outage, not per request
                assert_unavailable(await client.get("/v1/topics"))
                assert_unavailable(await client.post("/v1/topics", json={"title": "during"}))
                assert_unavailable(await client.patch(f"/v1/topics/{topic_id}", json={}))
                assert_unavailable(await client.get("/v1/feed"))
                assert_unavailable(await client.get("/v1/feed", params={"wait": 2}))
                assert_unavailable(await client.get(f"/v1/items/topic/{topic_id}"))
                assert_unavailable(await client.get("/metrics"))
            # A stream ends at once, with a hint of when to come back.
            async with client.stream("GET", "/v1/feed/stream") as stream:
                assert stream.status_code == 200
                body = await asyncio.wait_for(stream.aread(), 5)
            assert body.decode().endswith("retry: 5000\n\n")

        # Back without a restart: the pool reconnects on the next request.
        assert (await client.get("/v1/topics")).status_code == 200
        assert (await client.post("/v1/topics", json={"title": "after"})).status_code == 201
        assert (await client.get("/v1/feed")).status_code == 200

    lines = [r.getMessage() for r in caplog.records if r.name == "studypub.db"]
    assert len(lines) == 2, lines
    assert "unavailable: " in lines[0] and "reachable again after" in lines[1], lines
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
async def test_a_write_that_waits_too_long_for_the_sqlite_lock_is_a_503(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "SQLITE_BUSY_TIMEOUT_MS", 200)
    impatient = db.create_engine(engine.url.render_as_string(hide_password=False))
    try:
        async with (
            running(make_app(impatient)) as url,
            httpx.AsyncClient(base_url=url, headers=AUTH) as client,
        ):
            async with engine.connect() as holder:  # BEGIN IMMEDIATE: the writer lock
                await holder.execute(text("UPDATE feed_head SET floor = floor"))
                busy = await client.post("/v1/topics", json={"title": "waits"})
                assert error_of(busy, 503, "database_busy") == "the database is busy; retry in 1 s"
                assert busy.headers["Retry-After"] == "1"
                # Readers never wait for the writer.
                assert (await client.get("/v1/topics")).status_code == 200
                await holder.rollback()
            assert (await client.post("/v1/topics", json={"title": "later"})).status_code == 201
    finally:
        await impatient.dispose()
