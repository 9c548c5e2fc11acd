"""Health: ``/healthz`` and ``/readyz`` on a feed server and on a worker's metrics port, and
the worker's ``/metrics``, on both databases: ready when the database answers at the current
schema (and, on PostgreSQL, the LISTEN connection is up); a 503 naming what fails when not."""

from __future__ import annotations

import asyncio

import httpx
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.api.app import create_worker_app
from studypub.db import create_engine
from studypub.relay import Relay
from studypub.serving import running
from tests.support.http import make_app


async def ready_checks(client: httpx.AsyncClient, timeout_s: float = 10) -> dict[str, str]:
    """The checks of ``/readyz`` once it answers 200 (the LISTEN connection takes a moment)."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while True:
        response = await client.get("/readyz")
        if response.status_code == 200 or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.05)
    assert response.status_code == 200, response.text
    assert response.headers["cache-control"] == "no-store"
    checks: dict[str, str] = response.json()["checks"]
    return checks


async def test_a_feed_server_is_up_and_ready(migrated: AsyncEngine) -> None:
    async with (
        running(make_app(migrated)) as url,
        httpx.AsyncClient(base_url=url, timeout=10) as client,
    ):
        assert (await client.get("/healthz")).json() == {"status": "up"}
        checks = await ready_checks(client)
    expected = {"database": "ok", "schema": "ok"}
    if migrated.dialect.name == "postgresql":
        expected["listener"] = "ok"
    assert checks == expected


async def test_readyz_names_what_fails(fresh_url: str) -> None:
    """A database without the schema, then one that cannot be reached: 503, each check's
    result, and /healthz still 200 (the process is up: restarting it would not help)."""
    engine = create_engine(fresh_url)
    transport = httpx.ASGITransport(app=make_app(engine))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/readyz")
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "5"
        body = response.json()
        assert body["error"] == "not_ready"
        assert body["detail"]["database"] == "ok"
        assert "run `studypub db upgrade`" in body["detail"]["schema"]
        assert (await client.get("/healthz")).status_code == 200
    await engine.dispose()
    gone = create_engine(
        "sqlite+aiosqlite:////nonexistent/dir/x.db"
        if engine.dialect.name == "sqlite"
        else "postgresql+asyncpg://studypub@127.0.0.1:1/none"
    )
    transport = httpx.ASGITransport(app=make_app(gone))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/readyz")
        assert response.status_code == 503, response.text
        detail = response.json()["detail"]
        assert detail["database"].startswith("unavailable: ")
        assert detail["schema"] == "unknown"
    await gone.dispose()


async def test_a_workers_port_serves_its_metrics_and_health(migrated: AsyncEngine) -> None:
    relay = Relay(migrated, poll_interval_s=0.1)
    running_relay = asyncio.create_task(relay.run())
    try:
        transport = httpx.ASGITransport(app=create_worker_app(migrated, relay))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert (await client.get("/healthz")).status_code == 200
            checks = await ready_checks(client)
            assert checks["database"] == checks["schema"] == "ok"
            assert ("listener" in checks) == (migrated.dialect.name == "postgresql")
            scrape = await client.get("/metrics")  # no token: the port is the scraper's
            assert scrape.status_code == 200
            for name in (
                "studypub_relay_rows_total",
                "studypub_outbox_pending_rows",
                'studypub_outbox_dead_rows{kind="topic"}',
                "studypub_feed_head_seq",
            ):
                assert name in scrape.text, name
            assert (await client.get("/v1/feed")).status_code == 404  # no feed here
    finally:
        relay.stop()
        await running_relay
