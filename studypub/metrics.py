"""Prometheus metrics: what the relay did in this process, and where the feed and outbox stand.

The metric objects live here, module-level in the default registry, so that every part of a
process (the relay embedded in ``studypub serve``, the API) reports into one exposition.

Two kinds of figures, read differently:

- Counters and the histograms count the relay batches *this process* ran: scrape every
  process that relays (``studypub serve`` on ``/metrics``, ``studypub worker
  --metrics-port``) and sum.
- Gauges describe the database (outbox backlog, dead rows per kind, feed head and floor), so
  they are true whichever process relays: :class:`DatabaseCollector` reads them when a
  scrape collects, never a background loop (see :func:`exposition`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import store
from studypub.db import read_session_factory
from studypub.models import utcnow
from studypub.projection import KINDS
from studypub.store import Status

SCRAPE_TIMEOUT_S = 10.0

OUTCOMES = ("applied", "unchanged", "stale", "retried", "dead")
"""The labels of ``studypub_relay_rows_total``: the fields of :class:`studypub.relay.Outcomes`."""

RELAY_ROWS = Counter(
    "studypub_relay_rows",
    "Outbox rows the relays of this process handled, by outcome.",
    ["outcome"],
)
RELAY_BATCHES = Counter(
    "studypub_relay_batches",
    "Relay batches (apply transactions that claimed rows) run in this process.",
)
RELAY_BATCH_SECONDS = Histogram(
    "studypub_relay_batch_seconds",
    "Wall time of one relay batch that claimed rows, failure isolation included.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)

RELAY_LAG_SECONDS = Histogram(
    "studypub_relay_lag_seconds",
    "Per relay batch: from the enqueue of its oldest row to the batch's commit (the longest"
    " a write of the batch waited to be published).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)

FEED_DB_STATEMENTS = Counter(
    "studypub_feed_db_statements",
    "Database statements run to serve the feed in this process: by the tail (once per"
    " commit, whatever the number of clients) or for a page behind the tail's window.",
    ["reader"],
)
FEED_CLIENTS = Gauge(
    "studypub_feed_clients", "Open streams and long-polls of this process.", ["mode"]
)
FEED_TAIL_WRITES = Counter(
    "studypub_feed_tail_writes",
    "Entries and heartbeats the tail wrote itself to the sockets of streams parked at the"
    " head (one per stream; the rest a stream sends by itself).",
)
FEED_WINDOW_ENTRIES = Gauge(
    "studypub_feed_window_entries", "Feed entries the tail of this process holds in memory."
)

# Every outcome shows from the first scrape, at 0: a rate() over a series that appears only
# with its first increment misses that increment.
for _outcome in OUTCOMES:
    RELAY_ROWS.labels(outcome=_outcome)
for _reader in ("tail", "page"):
    FEED_DB_STATEMENTS.labels(reader=_reader)
for _mode in ("stream", "long_poll"):
    FEED_CLIENTS.labels(mode=_mode)


def record_batch(outcomes: Mapping[str, int], seconds: float) -> None:
    """Count one relay batch: its rows by outcome (``Outcomes.as_dict()``) and its duration."""
    RELAY_BATCHES.inc()
    RELAY_BATCH_SECONDS.observe(seconds)
    for outcome, count in outcomes.items():
        if count:
            RELAY_ROWS.labels(outcome=outcome).inc(count)


class DatabaseCollector(Collector):
    """The database gauges, read from the database by ``read`` when a scrape collects them:
    a scrape sees the database as it is, and an idle process runs no queries for them."""

    def __init__(self, read: Callable[[], Status]) -> None:
        self._read = read

    def collect(self) -> Iterator[Metric]:
        status = self._read()
        now = utcnow()
        oldest = status.oldest_pending_at
        yield from (
            GaugeMetricFamily(
                "studypub_outbox_pending_rows",
                "Outbox rows not yet published (dead rows excluded).",
                value=status.pending,
            ),
            GaugeMetricFamily(
                "studypub_outbox_oldest_pending_age_seconds",
                "Age of the oldest pending outbox row; 0 when none is pending.",
                value=0.0 if oldest is None else (now - oldest).total_seconds(),
            ),
            GaugeMetricFamily(
                "studypub_feed_head_seq",
                "The highest seq the feed has given.",
                value=status.head.last_seq,
            ),
            GaugeMetricFamily(
                "studypub_feed_floor_seq",
                "Every seq at or below the floor may be pruned (cursor reset).",
                value=status.head.floor,
            ),
        )
        dead = GaugeMetricFamily(
            "studypub_outbox_dead_rows",
            "Dead-lettered outbox rows awaiting an operator, by kind.",
            labels=["kind"],
        )
        # Every kind shows, at 0 too; and a kind this code does not know (a newer writer's).
        for kind in sorted(set(KINDS) | status.dead_by_kind.keys()):
            dead.add_metric([kind], status.dead_by_kind.get(kind, 0))
        yield dead


async def exposition(engine: AsyncEngine | None) -> bytes:
    """The text exposition of this process's metrics, and of the database's gauges when it
    has a database (an edge server has none).

    The collector reads the database from the scrape's thread (``generate_latest`` is
    synchronous) by running the read on this event loop and waiting for it; so the event
    loop is never blocked while a scrape renders, and the read is the process's usual
    async one.
    """
    loop = asyncio.get_running_loop()
    registries = [REGISTRY]
    if engine is not None:

        def read() -> Status:
            return asyncio.run_coroutine_threadsafe(_status(engine), loop).result(SCRAPE_TIMEOUT_S)

        database = CollectorRegistry(auto_describe=False)
        database.register(DatabaseCollector(read))
        registries.append(database)
    return await asyncio.to_thread(lambda: b"".join(map(generate_latest, registries)))


async def _status(engine: AsyncEngine) -> Status:
    async with read_session_factory(engine)() as session:
        return await store.read_status(session)
