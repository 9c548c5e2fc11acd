"""The load of the fault suite: authoring writers and a feed reader, every answer recorded.

Each writer owns its topics, questions, cards and its learner, so a valid request of one
writer never conflicts with another's. A writer creates a topic with two questions, a card it
approves, adds the card to its learner's deck and reviews it, then updates what it made, gives
the first question its explanation, deletes the second question, and now and then deletes an
older topic entirely.
After a 503 (or any failure) it just moves on; only a review is retried, with the SAME
``Idempotency-Key``, until it is answered, so that the learner's ``reps`` can be checked.

Every answer is recorded (time, method, path, status, whether an error body is JSON with an
``error`` field, ``Retry-After``, or the transport error): the tests judge them afterwards.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

REQUEST_TIMEOUT_S = 30.0  # above the 10 s a write may wait for a frozen relay's locks
REVIEW_RETRY_FOR_S = 30.0
REVIEW_RETRY_PAUSE_S = 0.2


@dataclass
class Answer:
    """One HTTP exchange as a client saw it."""

    who: str
    method: str
    path: str
    sent: float  # time.monotonic()
    done: float
    status: int | None  # None: no HTTP answer (transport error)
    error_code: str | None = None  # the "error" field of a JSON error body
    json_error: bool = False  # a non-2xx body that is a JSON object with "error"
    retry_after: str | None = None
    transport: str | None = None
    body: str = ""  # the start of a non-2xx body

    @property
    def ok(self) -> bool:
        return self.status is not None and 200 <= self.status < 300

    def __str__(self) -> str:
        what = self.status if self.status is not None else f"transport error {self.transport}"
        extra = f" Retry-After={self.retry_after}" if self.retry_after else ""
        body = f" {self.body!r}" if self.body else ""
        return f"{self.who} {self.method} {self.path} -> {what}{extra}{body}"


def new_client(base_url: str, token: str) -> httpx.AsyncClient:
    """One client per task: its connection is always busy, never reused after the server
    closed it idle (the client drops idle connections first)."""
    return httpx.AsyncClient(
        base_url=base_url,
        headers={"Authorization": f"Bearer {token}"},
        timeout=REQUEST_TIMEOUT_S,
        limits=httpx.Limits(max_connections=2, keepalive_expiry=1.0),
    )


class Recorder:
    """Sends requests and records every answer."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.answers: list[Answer] = []
        self.clock = clock

    async def call(
        self,
        client: httpx.AsyncClient,
        who: str,
        method: str,
        path: str,
        *,
        json: Any = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
    ) -> tuple[Answer, httpx.Response | None]:
        """Send one request: (its answer, the response; None after a transport error)."""
        sent = self.clock()
        try:
            response = await client.request(method, path, json=json, headers=headers, params=params)
        except httpx.TransportError as exc:
            answer = Answer(who, method, path, sent, self.clock(), None)
            answer.transport = f"{type(exc).__name__}: {exc}"
            self.answers.append(answer)
            return answer, None
        answer = Answer(who, method, path, sent, self.clock(), response.status_code)
        if not answer.ok:
            answer.body = response.text[:300]
            answer.retry_after = response.headers.get("Retry-After")
            try:
                parsed = response.json()
            except ValueError:
                parsed = None
            if isinstance(parsed, dict) and "error" in parsed:
                answer.json_error = True
                answer.error_code = str(parsed["error"])
        self.answers.append(answer)
        return answer, response


@dataclass
class OwnedTopic:
    id: int
    questions: set[int] = field(default_factory=set)
    cards: set[int] = field(default_factory=set)


@dataclass
class ReviewTally:
    """The reviews of one card by one learner: keys answered 200, keys never answered."""

    learner: str
    card_id: int
    accepted: int = 0
    unsettled: int = 0


class Writer:
    """One authoring writer (see the module docstring)."""

    def __init__(self, name: str, client: httpx.AsyncClient, recorder: Recorder) -> None:
        self.name = name
        self.learner = f"learner-{name}"
        self.client = client
        self.recorder = recorder
        self.topics: list[OwnedTopic] = []
        self.reviews: dict[int, ReviewTally] = {}  # card id -> tally
        self.deleted_cards: set[int] = set()
        self.writes_ok = 0
        self.unsure_since: float | None = None  # first answer that left the state unknown

    async def _send(
        self, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[Answer, Any]:
        answer, response = await self.recorder.call(
            self.client, self.name, method, path, json=body, headers=headers
        )
        data = None
        if answer.ok and response is not None:
            self.writes_ok += 1
            data = response.json() if response.content else None
        elif (answer.status is None or answer.status >= 500) and self.unsure_since is None:
            # A write answered 5xx or not at all may or may not have happened: later
            # requests about the same entity may then be refused (404, 409) legitimately.
            self.unsure_since = answer.sent
        return answer, data

    async def _create(self, path: str, body: dict[str, Any]) -> int | None:
        answer, data = await self._send("POST", path, body)
        return int(data["id"]) if answer.status == 201 else None

    async def run(self, stop: asyncio.Event) -> None:
        for round_no in itertools.count():
            if stop.is_set():
                return
            await self.round(round_no, stop)

    async def round(self, n: int, stop: asyncio.Event) -> None:
        topic_id = await self._create(
            "/v1/topics", {"title": f"{self.name} topic {n}", "description": "made by a writer"}
        )
        if topic_id is None:
            return
        topic = OwnedTopic(topic_id)
        self.topics.append(topic)
        for i in range(2):
            question = {
                "topic_id": topic_id,
                "stem": f"{self.name} question {n}.{i}?",
                "choices": ["alpha", "beta", "gamma"],
                "answer": "beta",
            }
            if (question_id := await self._create("/v1/questions", question)) is not None:
                topic.questions.add(question_id)
        questions = sorted(topic.questions)
        card = {"topic_id": topic_id, "front": f"front {n}", "back": f"back {n}"}
        card_id = await self._create("/v1/cards", card)
        if card_id is not None:
            topic.cards.add(card_id)
            approved, _ = await self._send("POST", f"/v1/cards/{card_id}/approve")
            if approved.ok:
                await self._study(card_id, stop)
        if stop.is_set():
            return
        await self._send("PATCH", f"/v1/topics/{topic_id}", {"description": f"updated {n}"})
        if questions:
            await self._send("PATCH", f"/v1/questions/{questions[0]}", {"stem": f"now {n}?"})
            # After the stem change (which withdraws an explanation), so that it stays ready.
            body = {"body": f"Because beta ({n})."}
            await self._send("PUT", f"/v1/questions/{questions[0]}/explanation", body)
        if card_id is not None:
            await self._send("PATCH", f"/v1/cards/{card_id}", {"back": f"back, updated {n}"})
        if len(questions) > 1:
            deleted, _ = await self._send("DELETE", f"/v1/questions/{questions[1]}")
            if deleted.ok:
                topic.questions.discard(questions[1])
        if n % 3 == 2:
            await self._delete_oldest_topic()

    async def _study(self, card_id: int, stop: asyncio.Event) -> None:
        added, _ = await self._send("POST", f"/v1/learners/{self.learner}/cards/{card_id}")
        if not added.ok:
            return
        tally = self.reviews[card_id] = ReviewTally(self.learner, card_id)
        for _ in range(2):
            if stop.is_set():
                return
            if await self._review(card_id):
                tally.accepted += 1
            else:
                tally.unsettled += 1

    async def _review(self, card_id: int) -> bool:
        """One review, retried with the same key while the answer is a 503 or missing."""
        key = str(uuid.uuid4())
        path = f"/v1/learners/{self.learner}/cards/{card_id}/reviews"
        give_up = time.monotonic() + REVIEW_RETRY_FOR_S
        while True:
            answer, _ = await self._send(
                "POST", path, {"rating": "good"}, headers={"Idempotency-Key": key}
            )
            if answer.ok:
                return True
            if answer.status not in (None, 503) or time.monotonic() > give_up:
                return False
            await asyncio.sleep(REVIEW_RETRY_PAUSE_S)

    async def _delete_oldest_topic(self) -> None:
        """Delete an older topic whole: its cards and questions first (a topic with live
        children is refused), the topic only when every child is gone."""
        if len(self.topics) < 2:
            return
        topic = self.topics[0]
        for card_id in sorted(topic.cards):
            answer, _ = await self._send("DELETE", f"/v1/cards/{card_id}")
            if answer.ok:
                topic.cards.discard(card_id)
                self.deleted_cards.add(card_id)
        for question_id in sorted(topic.questions):
            answer, _ = await self._send("DELETE", f"/v1/questions/{question_id}")
            if answer.ok:
                topic.questions.discard(question_id)
        if topic.cards or topic.questions:
            return  # try again next time
        answer, _ = await self._send("DELETE", f"/v1/topics/{topic.id}")
        if answer.ok:
            self.topics.pop(0)


async def read_feed(client: httpx.AsyncClient, recorder: Recorder, stop: asyncio.Event) -> None:
    """A viewer paging the feed (no long-poll), so that feed answers are judged too."""
    cursor = "0"
    while not stop.is_set():
        answer, response = await recorder.call(
            client, "reader", "GET", "/v1/feed", params={"since": cursor, "limit": 200}
        )
        if answer.ok and response is not None:
            cursor = response.json()["last_seq"]
        await asyncio.sleep(0.05)
