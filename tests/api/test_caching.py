"""Feed pages a cache may keep, on both databases: the headers, then a real caching proxy.

A full page strictly below the head is ``public, max-age`` with a strong ETag; the start
(``since=0``), the tail, empty long-polls, 410s and errors are ``no-store``. Behind nginx
with ``proxy_cache`` (Debian's package, started here on a loopback port): a bootstrap through
the cache equals the origin's state, a second one is served from the cache for its full
pages, and after a prune a consumer sent back to 0 converges without looping on cached pages.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import authoring, feed
from studypub.db import session_factory
from studypub.models import utcnow
from studypub.relay import Relay
from studypub.serving import running
from tests.support.content import write_content
from tests.support.databases import UNDER_CI
from tests.support.http import VIEWER_TOKEN, app_client, make_app
from tests.support.state import live_view, view_of

NGINX = shutil.which("nginx") or "/usr/sbin/nginx"
LIMIT = 5


async def publish(engine: AsyncEngine) -> None:
    await Relay(engine, listen=False).run_once()


async def test_only_full_pages_below_the_head_may_be_cached(engine: AsyncEngine) -> None:
    await write_content(engine, topics=2, per_topic=4)  # 2 + 8 + 4 + 8 entries
    await publish(engine)
    async with app_client(engine) as client:
        start = await client.get("/v1/feed", params={"limit": LIMIT})
        assert start.headers["Cache-Control"] == "no-store"  # a restart must reach us
        cursor = start.json()["last_seq"]

        full = await client.get("/v1/feed", params={"since": cursor, "limit": LIMIT})
        assert full.json()["pending"] > 0 and len(full.json()["results"]) == LIMIT
        assert full.headers["Cache-Control"] == "public, max-age=60"
        etag = full.headers["ETag"]
        again = await client.get(
            "/v1/feed", params={"since": cursor, "limit": LIMIT}, headers={"If-None-Match": etag}
        )
        assert (again.status_code, again.content) == (304, b"")
        assert again.headers["ETag"] == etag

        tail = await client.get("/v1/feed", params={"since": cursor, "limit": 1000})
        assert tail.json()["pending"] == 0
        assert tail.headers["Cache-Control"] == "no-store"
        head = tail.json()["last_seq"]
        empty = await client.get("/v1/feed", params={"since": head, "wait": 0.1})
        assert empty.json()["results"] == [] and empty.headers["Cache-Control"] == "no-store"
        gone = await client.get("/v1/feed", params={"since": "restored:1"})
        assert gone.status_code == 410 and gone.headers["Cache-Control"] == "no-store"
        bad = await client.get("/v1/feed", params={"since": "nonsense"})
        assert bad.status_code == 422 and bad.headers["Cache-Control"] == "no-store"


async def test_a_feed_behind_a_token_is_cached_privately(engine: AsyncEngine) -> None:
    await write_content(engine, topics=2, per_topic=4)
    await publish(engine)
    app = make_app(engine, viewer_token=VIEWER_TOKEN)
    auth = {"Authorization": f"Bearer {VIEWER_TOKEN}"}
    async with (
        running(app) as url,
        httpx.AsyncClient(base_url=url, headers=auth) as client,
    ):
        cursor = (await client.get("/v1/feed", params={"limit": LIMIT})).json()["last_seq"]
        full = await client.get("/v1/feed", params={"since": cursor, "limit": LIMIT})
    # A shared cache keys on the URL alone: it must not hand a token's answer to anyone.
    assert full.headers["Cache-Control"] == "private, max-age=60"
    assert full.headers["Vary"] == "Authorization"


async def test_pending_is_counted_up_to_a_cap(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(feed, "PENDING_CAP", 3)
    await write_content(engine, topics=2, per_topic=4)
    await publish(engine)
    async with app_client(engine) as client:
        first = (await client.get("/v1/feed", params={"limit": 2})).json()
        assert first["pending"] == 3  # 20 follow: at least 3
        last = (await client.get("/v1/feed", params={"since": "0", "limit": 19})).json()
        assert last["pending"] == 3
        end = (await client.get("/v1/feed", params={"since": "0", "limit": 21})).json()
        assert end["pending"] == 1


# ---------------------------------------------------------------- behind nginx

NGINX_CONF = """
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {dir}/body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    proxy_cache_path {dir}/cache levels=1 keys_zone=feed:1m;
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass {origin};
            proxy_http_version 1.1;
            proxy_cache feed;
            add_header X-Cache-Status $upstream_cache_status always;
        }}
    }}
}}
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def nginx(origin: str, directory: Path) -> Iterator[str]:
    """nginx as a caching proxy in front of ``origin``, on a free loopback port."""
    if not Path(NGINX).exists():
        message = f"{NGINX} is missing (apt-get install nginx)"
        if UNDER_CI:
            pytest.fail(message)
        pytest.skip(message)
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=directory, port=port, origin=origin))
    proc = subprocess.Popen(
        [NGINX, "-p", str(directory), "-c", str(conf)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(100):
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    break
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            time.sleep(0.05)
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@asynccontextmanager
async def behind_nginx(engine: AsyncEngine, tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    async with running(make_app(engine)) as origin:
        with nginx(origin, tmp_path) as proxy:
            async with httpx.AsyncClient(base_url=proxy, timeout=10) as client:
                yield client


@dataclass
class Bootstrap:
    """What one consumer saw in its last pass from ``since`` (or from 0 after a 410)."""

    entries: list[dict[str, Any]] = field(default_factory=list)
    statuses: list[str] = field(default_factory=list)  # X-Cache-Status of each page
    cursors: list[str] = field(default_factory=list)  # last_seq of each page
    requests: int = 0  # in all passes


async def bootstrap(
    client: httpx.AsyncClient, since: str = feed.START, *, budget: int = 200
) -> Bootstrap:
    """Read from ``since`` to the head, starting again from 0 on a 410, as a consumer does."""
    requests = 0
    while True:
        seen = Bootstrap()
        cursor = since
        while requests < budget:
            response = await client.get("/v1/feed", params={"since": cursor, "limit": LIMIT})
            requests += 1
            if response.status_code == 410:
                since = feed.START
                break
            assert response.status_code == 200, response.text
            seen.statuses.append(response.headers.get("X-Cache-Status", "-"))
            page = response.json()
            seen.entries += page["results"]
            cursor = page["last_seq"]
            seen.cursors.append(cursor)
            if page["pending"] == 0:
                seen.requests = requests
                return seen
        else:
            raise AssertionError(f"no end after {budget} requests: a refetch loop")


async def test_a_caching_proxy_serves_full_pages_and_converges_after_a_prune(
    engine: AsyncEngine, tmp_path: Path
) -> None:
    made = await write_content(engine, topics=3, per_topic=4)  # 39 entries: 8 pages of 5
    await publish(engine)
    async with behind_nginx(engine, tmp_path) as client:
        first = await bootstrap(client)
        assert view_of(first.entries) == await live_view(engine)
        assert "HIT" not in first.statuses

        second = await bootstrap(client)
        assert view_of(second.entries) == await live_view(engine)
        # Every full page below the head came from the cache; the start and the tail did not.
        assert second.statuses[1:-1] and set(second.statuses[1:-1]) == {"HIT"}
        assert second.statuses[0] != "HIT" and second.statuses[-1] != "HIT"

        # A consumer part way through its bootstrap; meanwhile cards are deleted and their
        # tombstones pruned, so its cursor falls below the floor.
        stopped_at = first.cursors[1]
        async with session_factory(engine)() as session, session.begin():
            for card_id in made.cards:
                await authoring.delete_card(session, card_id)
        await publish(engine)
        async with session_factory(engine)() as session, session.begin():
            later = utcnow() + 2 * feed.MIN_RETENTION
            assert await feed.prune_tombstones(session, older_than=feed.MIN_RETENTION, now=later)

        resumed = await bootstrap(client, stopped_at)
        assert view_of(resumed.entries) == await live_view(engine)
        # Back at 0 after its 410, it never met a page cached before the floor moved: the
        # cursors it follows carry the new floor (no refetch loop).
        assert "HIT" not in resumed.statuses
        assert resumed.requests <= 2 * (len(first.statuses) + 1)
        again = await bootstrap(client)
        assert view_of(again.entries) == await live_view(engine)
        assert set(again.statuses[1:-1]) == {"HIT"}
