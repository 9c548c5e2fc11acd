"""Projections and the payload hash: deterministic, canonical, the same on both databases."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from types import SimpleNamespace
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.models import CardProgress, Question
from studypub.projection import (
    PROJECTORS,
    canonical_json,
    iso_utc,
    payload_hash,
    project_card_progress,
    project_explanation,
    project_question,
)
from tests.support.seed import seed_cards, seed_progress, seed_questions, seed_topics

# JSON values as payloads hold them: no NaN/inf (not JSON), any Unicode text.
scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
values = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=12,
)
payloads = st.dictionaries(st.text(), values, max_size=6)
aware_datetimes = st.datetimes(
    min_value=datetime(1970, 1, 2),
    max_value=datetime(9998, 12, 30),
    timezones=st.sampled_from([UTC, timezone(timedelta(hours=9)), timezone(-timedelta(hours=5))]),
)


def _sorted_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    assert keys == sorted(keys), f"keys not sorted: {keys}"
    return dict(pairs)


@given(payloads)
def test_canonical_form(payload: dict[str, Any]):
    text = canonical_json(payload)
    # Round trip, and keys sorted at every level.
    assert json.loads(text, object_pairs_hook=_sorted_pairs) == payload
    # No whitespace outside strings: re-encoding the parsed value compactly changes nothing.
    assert text == json.dumps(
        json.loads(text), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    # The hash is sha256 of the UTF-8 bytes of that text.
    assert payload_hash(payload) == hashlib.sha256(text.encode("utf-8")).hexdigest()


@given(payloads, st.randoms(use_true_random=False))
def test_hash_ignores_key_insertion_order(payload: dict[str, Any], rnd: random.Random):
    items = list(payload.items())
    rnd.shuffle(items)
    assert payload_hash(dict(items)) == payload_hash(payload)
    assert canonical_json(dict(items)) == canonical_json(payload)


@given(st.text(alphabet=st.characters(min_codepoint=0xA0, exclude_categories=["Cs"]), min_size=1))
def test_non_ascii_is_kept_as_utf8(word: str):
    text = canonical_json({"stem": word})
    assert text == '{"stem":' + json.dumps(word, ensure_ascii=False) + "}"
    assert word in text and "\\u" not in text


def test_known_hashes():
    """Pinned values: a change here changes every published hash (bump SCHEMA_VERSION)."""
    assert payload_hash({}) == hashlib.sha256(b"{}").hexdigest()
    assert canonical_json({"b": [1, "é"], "a": {"d": None, "c": 1.5}}) == (
        '{"a":{"c":1.5,"d":null},"b":[1,"é"]}'
    )


@given(aware_datetimes)
def test_timestamps_are_iso_utc(moment: datetime):
    text = iso_utc(moment)
    assert (
        text is not None and text.endswith("Z") and len(text) == len("2026-01-02T03:04:05.000000Z")
    )
    assert datetime.strptime(text, "%Y-%m-%dT%H:%M:%S.%f%z") == moment  # the same instant
    assert iso_utc(moment.astimezone(UTC).replace(tzinfo=None)) == text  # naive means UTC


questions = st.builds(
    SimpleNamespace,
    id=st.integers(1, 2**62),
    topic_id=st.integers(1, 2**62),
    stem=st.text(),
    choices=st.lists(st.text(), max_size=5),
    answer=st.text(),
    explanation=st.none() | st.text(),
    explanation_status=st.sampled_from(["pending", "ready", "failed"]),
    deleted_at=st.none() | aware_datetimes,
)


@given(questions)
def test_projections_are_pure(question: SimpleNamespace):
    for project in (project_question, project_explanation):
        first = project(question)
        assert project(question) == first
        if first is not None:
            assert payload_hash(project(question)) == payload_hash(first)
    assert (project_question(question) is None) == (question.deleted_at is not None)


HASH_SCRIPT = """
import json, sys
from types import SimpleNamespace
from studypub.projection import PROJECTORS, payload_hash
for kind, fields in json.load(sys.stdin):
    print(payload_hash(PROJECTORS[kind](SimpleNamespace(**fields))))
"""


def test_same_hash_in_another_process():
    rows = [
        (
            "question",
            {
                "id": 1,
                "topic_id": 2,
                "stem": "Ünïcode? 日本",
                "choices": ["a", "b"],
                "answer": "a",
                "deleted_at": None,
            },
        ),
        ("topic", {"id": 3, "title": "Cells", "description": "", "deleted_at": None}),
        (
            "card",
            {
                "id": 4,
                "topic_id": 2,
                "question_id": None,
                "front": "f",
                "back": "b",
                "needs_review": False,
                "retired_at": None,
                "deleted_at": None,
            },
        ),
    ]
    expected = [payload_hash(PROJECTORS[kind](SimpleNamespace(**f))) for kind, f in rows]
    for seed in ("0", "12345"):  # a different str hash seed: dict order must not matter
        out = subprocess.run(
            [sys.executable, "-c", HASH_SCRIPT],
            input=json.dumps(rows),
            capture_output=True,
            text=True,
            check=True,
            env=os.environ | {"PYTHONHASHSEED": seed},
        )
        assert out.stdout.split() == expected


# The same source row read back from SQLite and from PostgreSQL hashes the same: both are
# compared with the hash of the in-memory row they were written from.
WHEN = datetime(2026, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
QUESTION = {
    "id": 41,
    "topic_id": 1,
    "stem": 'Which organelle? «ミトコンドリア» "quoted"\n\ttabbed \\ backslash 😀',
    "choices": ["mitochondrion", "ribosome", "é", ""],
    "answer": "mitochondrion",
    "explanation": "Energy: ATP — 100 %",
    "explanation_status": "ready",
    "deleted_at": None,
}
PROGRESS = {
    "id": 7,
    "card_id": 1,
    "learner": "ana@example.org",
    "state": "review",
    "step": None,
    "due_at": WHEN,
    "stability": 3.141592653589793,
    "difficulty": 0.1 + 0.2,
    "reps": 12,
    "lapses": 2,
    "last_review_at": WHEN - timedelta(days=3, microseconds=1),
    "deleted_at": None,
}


async def test_same_row_same_hash_on_every_database(engine: AsyncEngine):
    await seed_topics(engine, [1])
    await seed_questions(
        engine, [QUESTION["id"]], **{k: v for k, v in QUESTION.items() if k != "id"}
    )
    await seed_cards(engine, [1])
    await seed_progress(
        engine, [PROGRESS["id"]], **{k: v for k, v in PROGRESS.items() if k != "id"}
    )
    async with engine.connect() as conn:
        question = (await conn.execute(select(Question.__table__))).one()
        progress = (await conn.execute(select(CardProgress.__table__))).one()
    expected_q = SimpleNamespace(**QUESTION)
    expected_p = SimpleNamespace(**PROGRESS)
    for kind, row, expected in (
        ("question", question, expected_q),
        ("explanation", question, expected_q),
        ("card_progress", progress, expected_p),
    ):
        project = PROJECTORS[kind]
        assert project(row) == project(expected)
        assert payload_hash(project(row)) == payload_hash(project(expected))
    assert project_card_progress(progress)["due_at"] == "2026-03-04T05:06:07.123456Z"
