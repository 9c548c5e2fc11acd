"""Prometheus metrics: what the relay did in this process, and where the feed and outbox stand.

The metric objects live here, module-level in the default registry, so that every part of a
process (the relay embedded in ``studypub serve``, the API) reports into one exposition.

Two kinds of figures, read differently:

- Counters and the histogram count the relay batches *this process* ran. A ``studypub
  worker`` in another process keeps its own, unexposed: scrape-side totals cover the relays
  in serving processes only.
- Gauges describe the database (outbox backlog, dead rows, feed head and floor), so they are
  true whichever process relays. They are set from :func:`studypub.store.read_status` right
  before each scrape is rendered (see ``api/routes/metrics.py``), never by a background
  loop: a scrape always sees the database as it is, and an idle server runs no queries.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime

from prometheus_client import Counter, Gauge, Histogram

from studypub.store import Status

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

OUTBOX_PENDING = Gauge(
    "studypub_outbox_pending_rows", "Outbox rows not yet published (dead rows excluded)."
)
OUTBOX_OLDEST_PENDING_AGE = Gauge(
    "studypub_outbox_oldest_pending_age_seconds",
    "Age of the oldest pending outbox row; 0 when none is pending.",
)
OUTBOX_DEAD = Gauge("studypub_outbox_dead_rows", "Dead-lettered outbox rows awaiting an operator.")
FEED_HEAD = Gauge("studypub_feed_head_seq", "The highest seq the feed has given.")
FEED_FLOOR = Gauge(
    "studypub_feed_floor_seq", "Every seq at or below the floor may be pruned (cursor reset)."
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


def observe_status(status: Status, *, now: datetime) -> None:
    """Set the database gauges from one ``read_status`` taken for this scrape."""
    OUTBOX_PENDING.set(status.pending)
    oldest = status.oldest_pending_at
    OUTBOX_OLDEST_PENDING_AGE.set(0.0 if oldest is None else (now - oldest).total_seconds())
    OUTBOX_DEAD.set(status.dead)
    FEED_HEAD.set(status.head.last_seq)
    FEED_FLOOR.set(status.head.floor)
