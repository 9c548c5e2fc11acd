"""Fault suite: the whole pipeline under writes while PostgreSQL restarts and relays die or
freeze, checked against DESIGN's "Failure contract" and "Invariants".

What runs (real processes on a throwaway cluster, see conftest.py): ``studypub serve
--no-relay``, two ``studypub worker`` relays, ``studypub replicate --follow``, and in this
process a few HTTP writers and a feed reader. The timeline (``scenario``):

1. load for a few seconds;
2. ``pg_ctl restart -m fast`` (the outage lasts from just before the call until a
   ``GET /v1/topics`` answers 200 again); more load, and ``studypub backfill all --restart``;
3. SIGKILL relay A while it is mid-batch, start a replacement C (as a supervisor would);
4. SIGSTOP relay B while it holds its locks, keep writing, SIGCONT it; stop the writers.

"Mid-batch" and "holding its locks" are seen in ``pg_stat_activity``: a backend named
``studypub-worker/<pid>`` in a transaction. The relay is frozen (SIGSTOP) the moment one is
seen; it counts as caught only if, frozen, its backend still has a transaction that locked
rows (``backend_xid``); otherwise it is let go and watched again. SIGKILL then hits a relay
known to be mid-batch.

Afterwards each test checks one promise: outbox drained, nothing dead, ``verify all``
clean, the replica caught up and equal to the published state (content, then versions too:
separate tests, so a version-only difference is told apart), every error answer JSON, 5xx only as
``503 database_unavailable`` with ``Retry-After`` during the outage, no dropped connections,
publishing went on while a relay was frozen, the frozen relay went on relaying, review retries
with one ``Idempotency-Key`` counted once, and every process recovered by itself.
The scenario runs once per module (about a minute); the tests only read its record.
"""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from .fault_cluster import AUTHOR_TOKEN, STUDYPUB, PgCluster, Proc, Procs, free_port
from .fault_load import Answer, Recorder, Writer, new_client, read_feed

pytestmark = [pytest.mark.postgresql_only, pytest.mark.timeout(300)]

WRITERS = 6
LOAD_S = 5.0  # load before the restart, and again after it
FROZEN_S = 15.0  # how long relay B stays stopped
AFTER_CONT_S = 4.0  # load after SIGCONT, for B to show it relays again
CATCH_WITHIN_S = 10.0  # to see a relay in a transaction
HEAD_MOVES_WITHIN_S = 15.0  # idle_in_transaction_session_timeout (10 s) + slack
OUTAGE_SLACK_S = 2.0  # a 503 may still come this long after the outage ended
SETTLE_S = 30.0  # for the outbox to drain and the replica to catch up
POLL_S = 0.2

State = dict[tuple[str, int], tuple[int, str]]  # live (kind, id) -> (version, hash)

IN_TRANSACTION = """
SELECT pid, state, backend_xid::text AS xid, left(query, 120) AS query,
       (SELECT count(*) FROM pg_locks l WHERE l.pid = a.pid AND l.granted) AS locks
FROM pg_stat_activity a
WHERE application_name = $1 AND xact_start IS NOT NULL
  AND state IN ('active', 'idle in transaction')
"""


@dataclass
class Caught:
    """A relay frozen inside a transaction that holds row locks, or why it was not."""

    caught: bool
    detail: str


@dataclass
class Run:
    """Everything the scenario saw; each test judges one part."""

    t0: float
    answers: list[Answer] = field(default_factory=list)
    unsure_since: dict[str, float | None] = field(default_factory=dict)
    writes_ok: int = 0
    outage_start: float = 0.0
    outage_end: float | None = None  # None: /v1/topics never answered 200 again
    restart_done: float = 0.0
    backfill: tuple[int, str] = (-1, "not run")
    killed: Caught = field(default_factory=lambda: Caught(False, "not tried"))
    killed_status: int | None = None
    frozen: Caught = field(default_factory=lambda: Caught(False, "not tried"))
    head_at_freeze: int | None = None
    head_moved_after_s: float | None = None
    head_samples: list[str] = field(default_factory=list)
    resumed_activity: int = 0  # statements of relay B after SIGCONT (pg_stat_activity)
    resumed_batches: int = 0  # "relay batch" log lines of relay B after SIGCONT
    final_status: dict[str, Any] = field(default_factory=dict)
    drained_after_s: float | None = None
    verify: tuple[int, str] = (-1, "not run")
    replica_cursor: str = ""
    feed_head_cursor: str = ""
    replica_live: State = field(default_factory=dict)
    published: State = field(default_factory=dict)
    review_mismatches: list[str] = field(default_factory=list)
    reviews_checked: int = 0
    alive: dict[str, bool] = field(default_factory=dict)
    serve_stderr: str = ""

    def at(self, t: float | None) -> str:
        return "never" if t is None else f"{t - self.t0:.2f} s"


# ---------------------------------------------------------------- helpers


async def status(procs: Procs) -> dict[str, Any]:
    """``studypub status --json``."""
    proc = await asyncio.create_subprocess_exec(
        STUDYPUB,
        "status",
        "--json",
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=procs.env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    if proc.returncode != 0:
        raise RuntimeError(f"studypub status exited {proc.returncode}: {err.decode()}")
    report: dict[str, Any] = json.loads(out)
    return report


async def feed_head(recorder: Recorder, client: httpx.AsyncClient) -> int | None:
    """The feed head as ``GET /metrics`` shows it (``studypub_feed_head_seq``, the "head" of
    ``studypub status``). Not the CLI: on a busy machine a Python process takes seconds to
    start, and the head must be watched closely while a relay is frozen."""
    answer, response = await recorder.call(client, "metrics", "GET", "/metrics")
    if not answer.ok or response is None:
        return None
    for line in response.text.splitlines():
        if line.startswith("studypub_feed_head_seq "):
            return int(float(line.split()[1]))
    return None


async def start_serve(procs: Procs) -> tuple[Proc, str]:
    """``studypub serve --no-relay`` on a free port, answering: (process, base URL)."""
    for attempt in range(3):  # the free port may be taken before serve binds it
        port = free_port()
        serve = procs.start(
            f"serve-{attempt}" if attempt else "serve", "serve", "--no-relay", "--port", str(port)
        )
        base_url = f"http://127.0.0.1:{port}"
        if await answering(serve, base_url):
            return serve, base_url
    raise AssertionError("studypub serve did not start (3 ports tried)")


async def answering(serve: Proc, base_url: str) -> bool:
    deadline = time.monotonic() + 60
    async with new_client(base_url, AUTHOR_TOKEN) as client:
        while serve.running():
            try:
                if (await client.get("/v1/topics", params={"limit": 1})).status_code == 200:
                    return True
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "studypub serve did not answer within 60 s"
            await asyncio.sleep(POLL_S)
    return False


async def wait_for_output(proc: Proc, text: str, within_s: float = 60) -> None:
    deadline = time.monotonic() + within_s
    while text not in proc.stdout():
        assert proc.running(), f"{proc.name} exited before printing {text!r}"
        assert time.monotonic() < deadline, f"{proc.name} did not print {text!r}"
        await asyncio.sleep(POLL_S)


async def catch_in_transaction(dsn: str, proc: Proc) -> Caught:
    """Freeze ``proc`` (SIGSTOP) inside a transaction that locked rows; left frozen if
    caught. Polls pg_stat_activity for its backend (application_name
    ``studypub-worker/<pid>``) in a transaction, freezes it at once, and keeps it frozen only
    if the frozen backend still holds a transaction with an xid (rows claimed)."""
    name = f"studypub-worker/{proc.pid}"
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        deadline = time.monotonic() + CATCH_WITHIN_S
        tries = 0
        while time.monotonic() < deadline:
            if not proc.running():
                return Caught(False, f"{proc.name} exited {proc.popen.returncode}")
            if not await conn.fetch(IN_TRANSACTION, name):
                await asyncio.sleep(0.002)
                continue
            proc.popen.send_signal(signal.SIGSTOP)
            tries += 1
            await asyncio.sleep(0.05)  # a statement in flight completes; the backend waits
            rows = [r for r in await conn.fetch(IN_TRANSACTION, name) if r["xid"] is not None]
            if rows:
                row = rows[0]
                return Caught(
                    True,
                    f"backend {row['pid']} {row['state']!r}, xid {row['xid']}, "
                    f"{row['locks']} locks, last statement {row['query']!r} (try {tries})",
                )
            proc.popen.send_signal(signal.SIGCONT)  # between batches after all: again
        names = await conn.fetch(
            "SELECT application_name, state, count(*) AS n FROM pg_stat_activity "
            "WHERE backend_type = 'client backend' GROUP BY 1, 2 ORDER BY 1, 2"
        )
        seen = ", ".join(f"{r['application_name']!r} {r['state']} x{r['n']}" for r in names)
        return Caught(
            False,
            f"no backend named {name!r} with a transaction holding row locks within "
            f"{CATCH_WITHIN_S:.0f} s ({tries} freezes let go); client backends now: {seen}",
        )
    finally:
        await conn.close()


async def wait_until_connected(dsn: str, proc: Proc, within_s: float = 30) -> None:
    """Until ``proc`` has a PostgreSQL connection named ``studypub-<role>/<pid>`` (any role:
    this is readiness, not a check), or its log shows a relay batch."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline and proc.running():
            named = await conn.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE $1",
                f"studypub-%/{proc.pid}",
            )
            if named or "relay batch" in proc.stderr():
                return
            await asyncio.sleep(0.1)
    finally:
        await conn.close()


async def db_now(dsn: str) -> datetime:
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        now: datetime = await conn.fetchval("SELECT clock_timestamp()")
        return now
    finally:
        await conn.close()


async def activity_since(dsn: str, proc: Proc, since: datetime) -> int:
    """Backends of ``proc``'s relay connection that ran a statement after ``since``."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        count: int = await conn.fetchval(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE application_name = $1 AND state_change > $2",
            f"studypub-worker/{proc.pid}",
            since,
        )
        return count
    finally:
        await conn.close()


async def live_view(dsn: str) -> State:
    """The live published rows (``tests.support.state.live_view``, over a plain DSN)."""
    conn = await asyncpg.connect(dsn, timeout=10)
    try:
        rows = await conn.fetch("SELECT kind, id, version, hash FROM published WHERE NOT deleted")
    finally:
        await conn.close()
    return {(r["kind"], r["id"]): (r["version"], r["hash"]) for r in rows}


def replica_read(path: Path) -> tuple[str, State]:
    """(stored cursor, live entries) of the replica file."""
    if not path.exists():
        return "", {}
    conn = sqlite3.connect(path, timeout=30)
    try:
        row = conn.execute("SELECT cursor FROM replica_cursor").fetchone()
        live = conn.execute(
            "SELECT kind, id, version, hash FROM replica_entries WHERE NOT deleted"
        ).fetchall()
    except sqlite3.OperationalError:  # tables not created yet
        return "", {}
    finally:
        conn.close()
    return (row[0] if row else "0"), {(k, i): (v, h) for k, i, v, h in live}


async def bounded(awaitable: Awaitable[Any], seconds: float, what: str) -> Any:
    try:
        return await asyncio.wait_for(awaitable, seconds)
    except TimeoutError:
        raise AssertionError(f"{what} did not finish within {seconds:.0f} s") from None


# ---------------------------------------------------------------- the scenario


async def scenario(cluster: PgCluster, procs: Procs) -> Run:
    run = Run(t0=time.monotonic())
    dsn = cluster.dsn()
    replica_file = cluster.base / "replica.db"
    serve, base_url = await start_serve(procs)
    relay_a = procs.start("relay-a", "worker", "--poll-interval", "0.2")
    relay_b = procs.start("relay-b", "worker", "--poll-interval", "0.2")
    replica = procs.start(
        "replica", "replicate", "--from", base_url, "--into", str(replica_file), "--follow"
    )
    await wait_for_output(replica, "following")

    recorder = Recorder()
    run.answers = recorder.answers
    stop = asyncio.Event()
    clients = [new_client(base_url, AUTHOR_TOKEN) for _ in range(WRITERS + 2)]
    writers = [Writer(f"w{i}", clients[i], recorder) for i in range(WRITERS)]
    tasks = [asyncio.create_task(w.run(stop), name=w.name) for w in writers]
    tasks.append(asyncio.create_task(read_feed(clients[WRITERS], recorder, stop)))
    probe = clients[WRITERS + 1]
    backfill: asyncio.Task[tuple[int, str]] | None = None
    try:
        await asyncio.sleep(LOAD_S)

        # 2. PostgreSQL restarts under load.
        run.outage_start = time.monotonic()
        await bounded(asyncio.to_thread(cluster.restart), 90, "pg_ctl restart")
        run.restart_done = time.monotonic()
        deadline = run.restart_done + SETTLE_S
        while time.monotonic() < deadline:
            answer, _ = await recorder.call(
                probe, "probe", "GET", "/v1/topics", params={"limit": 1}
            )
            if answer.status == 200:
                run.outage_end = answer.done
                break
            await asyncio.sleep(0.1)
        backfill = asyncio.create_task(
            asyncio.to_thread(procs.run, "backfill", "backfill", "all", "--restart")
        )
        await asyncio.sleep(LOAD_S)

        # 3. SIGKILL relay A mid-batch; a supervisor would start another.
        run.killed = await catch_in_transaction(dsn, relay_a)
        relay_a.popen.send_signal(signal.SIGKILL)
        run.killed_status = await asyncio.to_thread(relay_a.popen.wait, 30)
        relay_c = procs.start("relay-c", "worker", "--poll-interval", "0.2")
        # On a busy machine a Python process needs seconds to start: freezing B before C
        # runs would stop all publishing, whatever the product does.
        await wait_until_connected(dsn, relay_c)

        # 4. SIGSTOP relay B holding its locks; publishing must go on without it.
        run.frozen = await catch_in_transaction(dsn, relay_b)
        if not run.frozen.caught:
            relay_b.popen.send_signal(signal.SIGSTOP)  # freeze it anyway, for what follows
        frozen_at = time.monotonic()
        run.head_at_freeze = last = await feed_head(recorder, probe)
        while time.monotonic() - frozen_at < FROZEN_S:
            await asyncio.sleep(0.5)
            head = await feed_head(recorder, probe)
            seen_after = time.monotonic() - frozen_at  # the head was read before this
            if head != last:
                run.head_samples.append(f"{seen_after:.1f} s: {head}")
                last = head
            before = run.head_at_freeze
            if head is not None and before is not None and head > before:
                run.head_moved_after_s = run.head_moved_after_s or seen_after
        batches_before = relay_b.stderr().count("relay batch")
        continued_at = await db_now(dsn)
        relay_b.popen.send_signal(signal.SIGCONT)
        await asyncio.sleep(AFTER_CONT_S)
        run.resumed_activity = await activity_since(dsn, relay_b, continued_at)
    finally:
        stop.set()
        await bounded(asyncio.gather(*tasks), 90, "the writers")
        for client in clients:
            await client.aclose()
    run.resumed_batches = relay_b.stderr().count("relay batch") - batches_before
    run.unsure_since = {w.name: w.unsure_since for w in writers}
    run.writes_ok = sum(w.writes_ok for w in writers)
    run.backfill = await bounded(backfill, 120, "studypub backfill")

    # After the run: drained, verified, replicated.
    settle_from = time.monotonic()
    while True:
        run.final_status = await status(procs)
        if run.final_status["pending"] == 0:
            run.drained_after_s = time.monotonic() - settle_from
            break
        if time.monotonic() - settle_from > SETTLE_S:
            break
        await asyncio.sleep(0.5)
    run.verify = await asyncio.to_thread(procs.run, "verify", "verify", "all")
    final = await status(procs)
    run.feed_head_cursor = f"{final['epoch']}:{final['head']}"
    deadline = time.monotonic() + SETTLE_S
    while True:
        run.replica_cursor, run.replica_live = await asyncio.to_thread(replica_read, replica_file)
        if run.replica_cursor == run.feed_head_cursor or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.5)
    run.published = await live_view(dsn)
    await check_reviews(run, writers, base_url)

    run.alive = {p.name: p.running() for p in (serve, relay_b, relay_c, replica)}
    run.serve_stderr = serve.stderr()
    print_summary(run)
    return run


async def check_reviews(run: Run, writers: list[Writer], base_url: str) -> None:
    """Each learner's ``reps`` equals the reviews answered 200 (one per Idempotency-Key)."""
    async with new_client(base_url, AUTHOR_TOKEN) as client:
        for writer in writers:
            for card_id, tally in writer.reviews.items():
                if tally.unsettled or card_id in writer.deleted_cards:
                    continue
                path = f"/v1/learners/{tally.learner}/cards/{card_id}"
                response = await client.get(path)
                if response.status_code != 200:
                    run.review_mismatches.append(f"GET {path} -> {response.status_code}")
                    continue
                run.reviews_checked += 1
                reps = response.json()["reps"]
                if reps != tally.accepted:
                    run.review_mismatches.append(
                        f"{path}: reps {reps}, reviews answered 200: {tally.accepted}"
                    )


def print_summary(run: Run) -> None:
    statuses: dict[str, int] = {}
    for a in run.answers:
        key = str(a.status) if a.status is not None else "transport error"
        statuses[key] = statuses.get(key, 0) + 1
    print(
        "\nfault run:"
        f"\n  answers {len(run.answers)} by status {dict(sorted(statuses.items()))}"
        f"\n  outage from {run.at(run.outage_start)}, pg_ctl restart done at "
        f"{run.at(run.restart_done)}, /v1/topics 200 again at {run.at(run.outage_end)}"
        f"\n  backfill exit {run.backfill[0]}"
        f"\n  relay A killed mid-batch: {run.killed} (exit {run.killed_status})"
        f"\n  relay B frozen holding locks: {run.frozen}"
        f"\n  head at freeze {run.head_at_freeze}, moved after {run.head_moved_after_s} s; "
        f"changes {run.head_samples[:6]}"
        f"\n  relay B after SIGCONT: {run.resumed_activity} active backends, "
        f"{run.resumed_batches} batch log lines"
        f"\n  final status {run.final_status} (drained after {run.drained_after_s} s)"
        f"\n  verify exit {run.verify[0]}; replica cursor {run.replica_cursor}, feed "
        f"{run.feed_head_cursor}; published live {len(run.published)}; "
        f"reviews checked {run.reviews_checked}"
        f"\n  alive {run.alive}; total {time.monotonic() - run.t0:.1f} s"
    )


@pytest.fixture(scope="module")
def run(pg_cluster: PgCluster, procs: Procs) -> Run:
    """The fault scenario, run once for the module's checks."""
    return asyncio.run(scenario(pg_cluster, procs))


def listed(answers: list[Answer], limit: int = 15) -> str:
    shown = "\n  ".join(str(a) for a in answers[:limit])
    more = f"\n  ... and {len(answers) - limit} more" if len(answers) > limit else ""
    return f"{len(answers)}:\n  {shown}{more}"


# ---------------------------------------------------------------- the checks


def test_the_load_was_real(run: Run) -> None:
    """Guard against a vacuous pass: the writers wrote and the feed moved."""
    assert run.writes_ok >= 500, f"only {run.writes_ok} successful writes"
    assert run.final_status.get("head", 0) >= 500, run.final_status


def test_postgresql_came_back_and_serve_answered_again(run: Run) -> None:
    assert run.outage_end is not None, (
        f"GET /v1/topics never answered 200 within {SETTLE_S:.0f} s of the restart; last "
        f"probes: {[str(a) for a in run.answers if a.who == 'probe'][-5:]}"
    )


def test_backfill_during_the_load_exits_0(run: Run) -> None:
    code, output = run.backfill
    assert code == 0, output[-3000:]


def test_outbox_drained(run: Run) -> None:
    assert run.final_status.get("pending") == 0, (
        f"{SETTLE_S:.0f} s after the run, status: {run.final_status}"
    )


def test_nothing_dead(run: Run) -> None:
    assert run.final_status.get("dead") == 0, run.final_status


def test_verify_all_is_clean(run: Run) -> None:
    code, output = run.verify
    assert code == 0, output[-3000:]


def test_replica_caught_up_with_the_feed_head(run: Run) -> None:
    assert run.replica_cursor == run.feed_head_cursor, (
        f"the replica did not catch up within {SETTLE_S:.0f} s: cursor {run.replica_cursor!r}, "
        f"feed head {run.feed_head_cursor!r}"
    )


def test_replica_holds_the_published_content(run: Run) -> None:
    """The same live (kind, id) keys with the same payload hashes."""
    assert run.published, "nothing published"
    replica = {key: h for key, (_, h) in run.replica_live.items()}
    published = {key: h for key, (_, h) in run.published.items()}
    assert replica == published, differences(run.replica_live, run.published)


def test_replica_versions_equal_the_published_versions(run: Run) -> None:
    """The whole published state, versions included: (kind, id) -> (version, hash)."""
    assert run.replica_live == run.published, differences(run.replica_live, run.published)


def differences(replica: State, published: State) -> str:
    keys = sorted(
        k for k in replica.keys() | published.keys() if replica.get(k) != published.get(k)
    )
    shown = "\n  ".join(
        f"{kind} {id_}: replica {replica.get((kind, id_))}, published {published.get((kind, id_))}"
        for kind, id_ in keys[:10]
    )
    return f"{len(keys)} keys differ (version, hash):\n  {shown}"


def test_every_error_answer_is_json_with_an_error_code(run: Run) -> None:
    bad = [a for a in run.answers if a.status is not None and not a.ok and not a.json_error]
    assert not bad, f"non-2xx answers without a JSON error body: {listed(bad)}"


def test_server_errors_are_503_database_unavailable_during_the_outage_only(run: Run) -> None:
    errors = [a for a in run.answers if a.status is not None and a.status >= 500]
    wrong = [
        a
        for a in errors
        if a.status != 503 or a.error_code != "database_unavailable" or not a.retry_after
    ]
    assert not wrong, (
        f"5xx answers that are not 503 database_unavailable with Retry-After: {listed(wrong)}"
    )
    end = (run.outage_end or run.restart_done) + OUTAGE_SLACK_S
    outside = [a for a in errors if a.done < run.outage_start or a.sent > end]
    assert not outside, (
        f"503s outside the outage ({run.at(run.outage_start)} .. {run.at(end)} with slack): "
        + listed(outside)
        + "\n  at "
        + ", ".join(run.at(a.sent) for a in outside[:15])
    )


def test_no_connection_to_serve_was_dropped_or_refused(run: Run) -> None:
    dropped = [a for a in run.answers if a.status is None]
    assert not dropped, f"requests without an HTTP answer: {listed(dropped)}"


def test_valid_requests_are_not_refused(run: Run) -> None:
    """A 4xx to a writer's valid request is a bug, unless an earlier 5xx or missing answer
    left the writer unsure whether its write happened (then 404 or 409 may be right)."""

    def excused(a: Answer) -> bool:
        unsure = run.unsure_since.get(a.who)
        return a.status in (404, 409) and unsure is not None and a.sent >= unsure

    refused = [
        a for a in run.answers if a.status is not None and 400 <= a.status < 500 and not excused(a)
    ]
    assert not refused, f"4xx answers to valid requests: {listed(refused)}"


def test_review_retries_with_one_idempotency_key_count_once(run: Run) -> None:
    assert run.reviews_checked > 0, "no review was checked"
    assert not run.review_mismatches, "\n".join(run.review_mismatches[:20])


def test_relay_killed_mid_batch(run: Run) -> None:
    assert run.killed.caught, f"relay A was not caught mid-batch: {run.killed.detail}"
    assert run.killed_status == -signal.SIGKILL


def test_relay_stopped_while_holding_its_locks(run: Run) -> None:
    assert run.frozen.caught, f"relay B was not caught holding locks: {run.frozen.detail}"


def test_publishing_went_on_while_a_relay_was_stopped_holding_its_locks(run: Run) -> None:
    """Within the idle-in-transaction timeout (10 s) plus slack, the server ends the frozen
    relay's transaction and the others publish again: the feed head moves."""
    moved = run.head_moved_after_s
    assert moved is not None and moved <= HEAD_MOVES_WITHIN_S, (
        f"the feed head stayed at {run.head_at_freeze} for {HEAD_MOVES_WITHIN_S:.0f} s while "
        f"relay B was stopped (changes: {run.head_samples[:10]}); frozen: {run.frozen.detail}"
    )
    # Only a relay frozen inside its transaction tests the promise (else nothing blocks).
    assert run.frozen.caught, (
        f"not tested: relay B was not frozen holding its locks ({run.frozen.detail}); the "
        f"head moved {moved:.1f} s after the freeze"
    )


def test_the_stopped_relay_goes_on_relaying_after_sigcont(run: Run) -> None:
    assert run.alive.get("relay-b"), "relay B exited after SIGCONT"
    assert run.resumed_activity > 0, (
        f"no statement from a backend named studypub-worker/<relay B pid> within "
        f"{AFTER_CONT_S:.0f} s of SIGCONT ({run.resumed_batches} 'relay batch' log lines "
        "after SIGCONT)"
    )


def test_every_process_recovered_by_itself(run: Run) -> None:
    dead = [name for name, alive in run.alive.items() if not alive]
    assert not dead, f"exited: {dead}"


def test_serve_logged_no_traceback(run: Run) -> None:
    assert "Traceback" not in run.serve_stderr, run.serve_stderr[-4000:]
