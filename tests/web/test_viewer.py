"""The web viewer in the system Chromium (headless), against a live server and relay.

Never downloads a browser: it drives ``/usr/bin/chromium``. Without it the test is skipped
locally and fails under CI. The page takes its viewer token from the URL fragment
(``/#token=...``, which never reaches the server) and sends it in the ``Authorization``
header. Screenshots go to ``artifacts/``; with ``STUDYPUB_UPDATE_SCREENSHOT=1`` the desktop
one also replaces ``docs/viewer.png``.
"""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import update
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub import backfill, sample
from studypub.db import session_factory
from studypub.models import FeedHead, Topic
from studypub.relay import Relay
from studypub.serving import running
from studypub.targets import TOPICS
from studypub.verify import verify
from tests.support.apply_rule import CASES, applies
from tests.support.content import create_topic, write_content
from tests.support.http import AUTH, VIEWER_TOKEN, bearer, fast_relay, make_app

pytestmark = [pytest.mark.browser, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "artifacts"
APPEAR_MS = 2000


def with_token(url: str, token: str) -> str:
    """The viewer page's address with ``token`` in its fragment."""
    return f"{url}/#token={token}"


async def load_sample(engine: AsyncEngine) -> None:
    """The demo's content, published the way the demo does it."""
    sessions = session_factory(engine)
    async with sessions() as session, session.begin():
        await sample.load_sample(session)
    for target in backfill.TARGETS:
        await backfill.backfill_target(sessions, target)
    await Relay(engine, listen=False).run_once()


async def test_viewer_shows_changes_live(engine: AsyncEngine, browser: object) -> None:
    await load_sample(engine)
    app = make_app(engine, viewer_token=VIEWER_TOKEN)
    async with (
        running(app, relay=fast_relay(engine)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as api,
    ):
        page = await browser.new_page(viewport={"width": 1200, "height": 900})  # type: ignore[attr-defined]
        errors: list[str] = []
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        await page.goto(with_token(url, VIEWER_TOKEN))
        await page.wait_for_selector("#status[data-state=live]", timeout=5000)
        assert await page.locator("section.topic").count() == 4
        assert await page.locator("article.question").count() == 50

        topics = await api.get(
            "/v1/feed", params={"kinds": "topic", "limit": 1}, headers=bearer(VIEWER_TOKEN)
        )
        topic_id = topics.json()["results"][0]["id"]
        question = await api.post(
            "/v1/questions",
            json={
                "topic_id": topic_id,
                "stem": "Which city hosts the Atomium?",
                "choices": ["Brussels", "Antwerp", "Ghent"],
                "answer": "Brussels",
            },
        )
        assert question.status_code == 201, question.text
        question_id = question.json()["id"]
        card = await api.post(
            "/v1/cards", json={"topic_id": topic_id, "front": "Atomium", "back": "Brussels, 1958"}
        )
        assert card.status_code == 201, card.text
        card_id = card.json()["id"]
        assert (await api.post(f"/v1/cards/{card_id}/approve")).status_code == 200

        # Both appear without a reload, within 2 s of the writes.
        q_sel = f'article.question[data-id="{question_id}"]'
        c_sel = f'button.card[data-id="{card_id}"]'
        await page.wait_for_selector(q_sel, timeout=APPEAR_MS)
        await page.wait_for_selector(c_sel, timeout=APPEAR_MS)
        assert "Atomium" in await page.locator(q_sel).inner_text()

        # Interactions: answer reveal, card flip.
        await page.locator(f"{q_sel} button.choice", has_text="Antwerp").click()
        assert "Answer: Brussels" in await page.locator(q_sel).inner_text()
        await page.locator(c_sel).click()
        assert "Brussels, 1958" in await page.locator(c_sel).inner_text()

        # Deleted: it vanishes, still without a reload.
        assert (await api.delete(f"/v1/questions/{question_id}")).status_code == 204
        await page.wait_for_selector(q_sel, state="detached", timeout=APPEAR_MS)
        assert await page.locator("article.question").count() == 50
        assert await page.evaluate("performance.getEntriesByType('navigation').length") == 1
        assert errors == []

        ARTIFACTS.mkdir(exist_ok=True)
        name = engine.dialect.name
        await page.evaluate("window.scrollTo(0, 0)")
        await page.locator("article.question").nth(1).locator("button.choice").first.click()
        await page.locator("button.card").nth(1).click()
        desktop = ARTIFACTS / f"viewer-{name}.png"
        await page.screenshot(path=str(desktop))
        await page.set_viewport_size({"width": 390, "height": 844})
        await page.screenshot(path=str(ARTIFACTS / f"viewer-phone-{name}.png"))
        if os.environ.get("STUDYPUB_UPDATE_SCREENSHOT") == "1" and name == "sqlite":
            shutil.copyfile(desktop, ROOT / "docs" / "viewer.png")
        await page.close()


async def test_viewer_reconnects_resumes_and_rebuilds_after_reset(
    engine: AsyncEngine, browser: object
) -> None:
    """Server restarts: the page says so, resumes from its cursor (its token kept in the tab),
    and rebuilds on a reset."""
    await write_content(engine, topics=2, per_topic=2)
    await Relay(engine, listen=False).run_once()
    async with running(make_app(engine, viewer_token=VIEWER_TOKEN)) as url:
        page = await browser.new_page()  # type: ignore[attr-defined]
        await page.goto(with_token(url, VIEWER_TOKEN))
        await page.wait_for_selector("#status[data-state=live]", timeout=5000)
        assert await page.locator("section.topic").count() == 2
    port = int(url.rsplit(":", 1)[1])

    # Down: the page notices; a write is published meanwhile.
    await page.wait_for_selector("#status[data-state=reconnecting]", timeout=5000)
    away = await create_topic(engine, "Written while you were away")
    await Relay(engine, listen=False).run_once()
    async with running(make_app(engine, viewer_token=VIEWER_TOKEN), port=port):
        await page.wait_for_selector(f'section.topic[data-id="{away}"]', timeout=10_000)
        await page.wait_for_selector("#status[data-state=live]", timeout=5000)
        assert await page.locator("section.topic").count() == 3  # resumed: nothing twice

    # Down again, and the feed is restored into a new epoch: the page rebuilds from 0.
    await page.wait_for_selector("#status[data-state=reconnecting]", timeout=5000)
    async with engine.begin() as conn:
        await conn.execute(update(FeedHead).values(epoch="restored03"))
    async with running(make_app(engine, viewer_token=VIEWER_TOKEN), port=port):
        await page.wait_for_function(
            "document.getElementById('cursor').textContent.startsWith('restored03:')",
            timeout=10_000,
        )
        await page.wait_for_selector("#status[data-state=live]", timeout=5000)
        assert await page.locator("section.topic").count() == 3
        assert await page.locator("article.question").count() == 4
    await page.close()


async def test_viewer_with_a_viewer_token(engine: AsyncEngine, browser: object) -> None:
    """The token comes in the fragment, leaves the address bar at once, stays in the tab, and
    goes to the server in the Authorization header only, never in a URL; a missing or
    refused one is said plainly."""
    await write_content(engine, topics=1, per_topic=1)
    await Relay(engine, listen=False).run_once()
    async with running(make_app(engine, viewer_token=VIEWER_TOKEN)) as url:
        page = await browser.new_page()  # type: ignore[attr-defined]
        requests: list[tuple[str, str | None]] = []
        page.on("request", lambda r: requests.append((r.url, r.headers.get("authorization"))))
        await page.goto(url)
        await page.wait_for_selector("#status[data-state=error]", timeout=5000)
        assert "needs a viewer token" in await page.locator("#content").inner_text()

        # Only the fragment changes: the same page takes the new token (its hashchange).
        await page.goto(with_token(url, "not-the-token"))
        await page.wait_for_function(
            "document.getElementById('content').innerText.includes('was refused')", timeout=5000
        )
        assert await page.get_attribute("#status", "data-state") == "error"
        assert await page.evaluate("sessionStorage.getItem('studypub-token')") is None

        await page.goto(with_token(url, VIEWER_TOKEN))
        await page.wait_for_selector("#status[data-state=live]", timeout=5000)
        assert await page.locator("article.question").count() == 1
        assert page.url == f"{url}/"  # out of the address bar (and of its history)
        await page.reload()  # kept for the tab
        await page.wait_for_selector("#status[data-state=live]", timeout=5000)
        assert await page.locator("article.question").count() == 1

        feed = [(u, auth) for u, auth in requests if "/v1/" in u]
        assert {u.split("?")[0].removeprefix(url) for u, _ in feed} == {
            "/v1/feed",
            "/v1/feed/stream",
        }
        assert not [u for u, _ in requests if "token" in u.split("#")[0]]
        assert {auth for u, auth in feed if "not-the-token" not in str(auth)} == {
            None,
            f"Bearer {VIEWER_TOKEN}",
        }
        await page.close()

        # `?token=` is no way in: it would reach the server and its logs.
        page = await browser.new_page()  # type: ignore[attr-defined]
        await page.goto(f"{url}/?token={VIEWER_TOKEN}")
        await page.wait_for_selector("#status[data-state=error]", timeout=5000)
        await page.close()


@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)  # the rule is the browser's
async def test_viewer_apply_rule_is_the_replicas(engine: AsyncEngine, browser: object) -> None:
    """``shouldApply`` of the page against the Python rule, case by case; then a repair at the
    same version (another hash) shows in the page, through the stream."""
    made = await write_content(engine, topics=1, per_topic=1)
    await Relay(engine, listen=False).run_once()
    async with running(make_app(engine)) as url:
        page = await browser.new_page()  # type: ignore[attr-defined]
        await page.goto(url)
        await page.wait_for_selector("#status[data-state=live]", timeout=5000)
        got = await page.evaluate(
            "cases => cases.map(([current, entry]) => window.studypub.shouldApply(current, entry))",
            [[current, new] for _, current, new, _ in CASES],
        )
        wrong = [
            f"{name}: page says {answer}"
            for (name, current, new, expected), answer in zip(CASES, got, strict=True)
            if answer is not applies(current, new) or answer is not expected
        ]
        assert wrong == []

        topic = f'section.topic[data-id="{made.topics[0]}"] h2'
        assert await page.locator(topic).inner_text() == "Topic 0"
        async with engine.begin() as conn:  # a hand edit: the version stays
            await conn.execute(
                update(Topic).where(Topic.id == made.topics[0]).values(title="Hand edited")
            )
        await verify(engine, [TOPICS], repair=True)
        await Relay(engine, listen=False).run_once()
        await page.wait_for_function(
            f"document.querySelector({topic!r})?.textContent === 'Hand edited'", timeout=5000
        )
        await page.close()


async def test_two_learners_each_see_their_own_deck_live(
    engine: AsyncEngine, browser: object
) -> None:
    """Two learners' pages side by side on one server, each with its own token: each shows
    that learner's deck (due first, then by due date, never scheduled last), a review by
    either learner appears live on that learner's page and never on the other's."""
    made = await write_content(engine, topics=1, per_topic=3)
    await Relay(engine, listen=False).run_once()
    app = make_app(engine, viewer_token=VIEWER_TOKEN)
    async with (
        running(app, relay=fast_relay(engine)) as url,
        httpx.AsyncClient(base_url=url, headers=AUTH) as api,
    ):

        async def call(path: str, body: dict[str, object] | None = None) -> dict[str, object]:
            response = await api.post(path, json=body)
            assert response.status_code in (200, 201), response.text
            return dict(response.json())

        async def token_of(learner: str) -> str:
            issued = await call("/v1/viewer-tokens", {"learner": learner, "ttl_s": 3600})
            return str(issued["token"])

        first, second, third = made.cards
        ana = {c: await call(f"/v1/learners/ana/cards/{c}") for c in (first, second, third)}
        ben = {c: await call(f"/v1/learners/ben/cards/{c}") for c in (first, second)}
        long_ago = (datetime.now(UTC) - timedelta(days=30)).isoformat()
        await call(f"/v1/learners/ana/cards/{third}/reviews", {"rating": "good"})  # due later
        await call(  # due now: a month overdue
            f"/v1/learners/ana/cards/{first}/reviews", {"rating": "good", "reviewed_at": long_ago}
        )

        pages = {}
        for learner in ("ana", "ben"):
            page = await browser.new_page(viewport={"width": 900, "height": 900})  # type: ignore[attr-defined]
            errors: list[str] = []
            page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
            await page.goto(with_token(url, await token_of(learner)))
            await page.wait_for_selector("#status[data-state=live]", timeout=5000)
            assert await page.locator("#deck h2").inner_text() == f"{learner}'s deck"
            pages[learner] = (page, errors)
        ana_page, ana_errors = pages["ana"]
        ben_page, ben_errors = pages["ben"]

        def rows(page: Any) -> Any:
            return page.locator("#deck li.deck-card")

        def row(page: Any, progress: dict[str, object]) -> str:
            return f'#deck li.deck-card[data-id="{progress["id"]}"]'

        # Ana's deck: the overdue card first, then the one due later, the new one last.
        assert await rows(ana_page).evaluate_all("els => els.map(e => e.dataset.cardId)") == [
            str(first),
            str(third),
            str(second),
        ]
        assert await rows(ana_page).evaluate_all("els => els.map(e => e.dataset.due)") == [
            "now",
            "later",
            "never",
        ]
        assert "Front 0.0" in await ana_page.locator(row(ana_page, ana[first])).inner_text()
        assert "due now" in await ana_page.locator(row(ana_page, ana[first])).inner_text()
        assert await rows(ben_page).count() == 2

        # A review by each learner appears on that learner's page only.
        await call(f"/v1/learners/ben/cards/{second}/reviews", {"rating": "again"})
        await ben_page.wait_for_selector(
            f'{row(ben_page, ben[second])}[data-state="learning"]', timeout=APPEAR_MS
        )
        await call(f"/v1/learners/ana/cards/{second}/reviews", {"rating": "easy"})
        await ana_page.wait_for_selector(
            f'{row(ana_page, ana[second])}[data-state="review"]', timeout=APPEAR_MS
        )
        # Ana's review came after Ben's: had Ben's reached Ana's page, it would be there.
        for learner, page, mine, theirs in (
            ("ana", ana_page, ana, ben),
            ("ben", ben_page, ben, ana),
        ):
            ids = await rows(page).evaluate_all("els => els.map(e => Number(e.dataset.id))")
            assert sorted(ids) == sorted(int(str(p["id"])) for p in mine.values())
            learners = await page.evaluate(
                "[...window.studypub.items.values()]"
                ".filter(e => e.kind === 'card_progress').map(e => e.payload.learner)"
            )
            assert set(learners) == {learner}, learners
            assert not set(map(str, (p["id"] for p in theirs.values()))) & set(map(str, ids))
        assert await rows(ana_page).evaluate_all("els => els.map(e => e.dataset.due)") == [
            "now",
            "later",
            "later",
        ]
        assert ana_errors == [] and ben_errors == []

        ARTIFACTS.mkdir(exist_ok=True)
        await ana_page.screenshot(path=str(ARTIFACTS / f"viewer-deck-{engine.dialect.name}.png"))
        for page, _ in pages.values():
            await page.close()
