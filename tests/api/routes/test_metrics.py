"""``GET /metrics`` on SQLite and PostgreSQL: database gauges, relay counters, the token.

The registry is process-global (other tests run relays too), so counters are compared as
deltas around the relay run under test, never as absolute values.
"""

from __future__ import annotations

import asyncio
from datetime import timedelta

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import store
from studypub.db import read_session_factory
from studypub.models import Outbox, utcnow
from studypub.outbox import snapshot_values
from studypub.relay import Relay
from tests.support.http import VIEWER_TOKEN, app_client
from tests.support.writes import create_topics


async def scrape(
    client: httpx.AsyncClient, headers: dict[str, str] | None = None
) -> dict[str, float]:
    """One scrape, as {sample name with its labels: value}."""
    response = await client.get("/metrics", headers=headers)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == CONTENT_TYPE_LATEST
    samples: dict[str, float] = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()))
            samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


def dead_rows(samples: dict[str, float]) -> dict[str, float]:
    """The kinds with dead rows, from ``studypub_outbox_dead_rows{kind=...}``."""
    prefix = "studypub_outbox_dead_rows{kind="
    return {k[len(prefix) : -1]: v for k, v in samples.items() if k.startswith(prefix) and v}


def applied_total() -> float:
    value = REGISTRY.get_sample_value("studypub_relay_rows_total", {"outcome": "applied"})
    return value or 0.0


def counter(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def test_gauges_follow_the_outbox_and_the_feed(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    async with app_client(engine) as client:
        empty = await scrape(client)
        assert empty["studypub_outbox_pending_rows"] == 0
        assert empty["studypub_outbox_oldest_pending_age_seconds"] == 0
        assert empty["studypub_feed_head_seq"] == 0

        await create_topics(sessions, ["a", "b", "c"])
        backlog = await scrape(client)
        assert backlog["studypub_outbox_pending_rows"] == 3
        assert 0 <= backlog["studypub_outbox_oldest_pending_age_seconds"] < 60
        assert dead_rows(backlog) == {}
        assert backlog["studypub_feed_head_seq"] == 0
        lags = counter("studypub_relay_lag_seconds_count")
        waited = counter("studypub_relay_lag_seconds_sum")

        await asyncio.sleep(0.05)
        await Relay(engine).run_once()
        drained = await scrape(client)
    # One batch, observed once: its oldest row waited at least the pause above.
    assert counter("studypub_relay_lag_seconds_count") == lags + 1
    assert 0.05 <= counter("studypub_relay_lag_seconds_sum") - waited < 60
    async with read_session_factory(engine)() as session:
        head = await store.read_head(session)
    assert head.last_seq == 3
    assert drained["studypub_feed_head_seq"] == head.last_seq
    assert drained["studypub_feed_floor_seq"] == head.floor
    assert drained["studypub_outbox_pending_rows"] == 0
    assert drained["studypub_outbox_oldest_pending_age_seconds"] == 0


async def test_relay_counts_its_rows_and_batches(
    engine: AsyncEngine, sessions: async_sessionmaker[AsyncSession]
) -> None:
    await create_topics(sessions, [f"topic {i}" for i in range(5)])
    async with app_client(engine) as client:
        before = await scrape(client)
        applied, batches = applied_total(), counter("studypub_relay_batches_total")
        timed = counter("studypub_relay_batch_seconds_count")
        # Two batches of 3 and 2 rows; the look that finds nothing is not a batch.
        outcomes = await Relay(engine, batch_size=3).run_once()
        after = await scrape(client)
    assert outcomes.applied == 5
    assert applied_total() - applied == 5
    assert counter("studypub_relay_batches_total") - batches == 2
    assert counter("studypub_relay_batch_seconds_count") - timed == 2
    # The same figures reach a scraper.
    key = "studypub_relay_rows_total{outcome=applied}"
    assert after[key] - before[key] == 5
    assert after["studypub_relay_batches_total"] - before["studypub_relay_batches_total"] == 2


async def test_every_outcome_is_exposed_from_the_start(engine: AsyncEngine) -> None:
    async with app_client(engine) as client:
        samples = await scrape(client)
    for outcome in ("applied", "unchanged", "stale", "retried", "dead"):
        assert f"studypub_relay_rows_total{{outcome={outcome}}}" in samples


async def test_dead_rows_are_counted_and_shown(engine: AsyncEngine, session: AsyncSession) -> None:
    # A kind this relay does not publish: with one attempt allowed it is dead-lettered.
    values = snapshot_values(kind="nope", source_id=1, source_version=1, payload={"id": 1})
    values["enqueued_at"] = utcnow() - timedelta(seconds=30)
    await session.execute(insert(Outbox), [values])
    await session.commit()
    async with app_client(engine) as client:
        pending = await scrape(client)
        assert pending["studypub_outbox_pending_rows"] == 1
        assert pending["studypub_outbox_oldest_pending_age_seconds"] >= 30
        dead = REGISTRY.get_sample_value("studypub_relay_rows_total", {"outcome": "dead"}) or 0
        await Relay(engine, max_attempts=1).run_once()
        after = await scrape(client)
    assert dead_rows(after) == {"nope": 1}
    assert after["studypub_outbox_dead_rows{kind=topic}"] == 0  # every kind shows
    assert after["studypub_outbox_pending_rows"] == 0
    assert after["studypub_relay_rows_total{outcome=dead}"] - dead == 1


async def test_viewer_token_is_required_when_set(engine: AsyncEngine) -> None:
    async with app_client(engine, viewer_token=VIEWER_TOKEN) as client:
        assert (await client.get("/metrics")).status_code == 401
        wrong = await client.get("/metrics", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
        samples = await scrape(client, headers={"Authorization": f"Bearer {VIEWER_TOKEN}"})
        assert "studypub_feed_head_seq" in samples
        schema = (await client.get("/openapi.json")).json()
        assert "/metrics" not in schema["paths"]
