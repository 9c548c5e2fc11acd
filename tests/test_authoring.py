"""The authoring service on both databases: each write and exactly the outbox rows it enqueues."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from studypub import authoring, scheduling
from studypub.errors import Conflict, InvalidInput, MissingReference, NotFound, StaleVersion
from studypub.models import MemoCard, Question, Topic
from tests.support.outbox import take_outbox

T = TypeVar("T")
Sessions = async_sessionmaker[AsyncSession]


async def tx(sessions: Sessions, work: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """Run ``work`` in one transaction, as a request would."""
    async with sessions() as session, session.begin():
        return await work(session)


async def make_topic(sessions: Sessions, **kw: Any) -> Topic:
    return await tx(sessions, lambda s: authoring.create_topic(s, title="Cells", **kw))


async def make_question(sessions: Sessions, topic_id: int) -> Question:
    return await tx(
        sessions,
        lambda s: authoring.create_question(
            s, topic_id=topic_id, stem="What?", choices=["a", "b", "c"], answer="b"
        ),
    )


async def make_approved_card(sessions: Sessions, topic_id: int) -> MemoCard:
    card = await tx(
        sessions, lambda s: authoring.create_card(s, topic_id=topic_id, front="f", back="b")
    )
    return await tx(sessions, lambda s: authoring.approve_card(s, card.id))


async def test_topic_create_update_delete(engine: AsyncEngine, sessions: Sessions) -> None:
    topic = await make_topic(sessions, description="about cells")
    assert (topic.version, topic.deleted_at) == (1, None)
    assert await take_outbox(engine) == [("topic", topic.id, 1, False)]

    updated = await tx(
        sessions,
        lambda s: authoring.update_topic(s, topic.id, expected_version=1, title="Living cells"),
    )
    assert (updated.title, updated.description, updated.version) == (
        "Living cells",
        "about cells",
        2,
    )
    assert await take_outbox(engine) == [("topic", topic.id, 2, False)]

    deleted = await tx(sessions, lambda s: authoring.delete_topic(s, topic.id))
    assert deleted.deleted_at is not None
    assert await take_outbox(engine) == [("topic", topic.id, 3, True)]
    with pytest.raises(NotFound, match=f"topic {topic.id} not found"):
        await tx(sessions, lambda s: authoring.get_topic(s, topic.id))


async def test_stale_version_changes_nothing(engine: AsyncEngine, sessions: Sessions) -> None:
    topic = await make_topic(sessions)
    await take_outbox(engine)
    with pytest.raises(StaleVersion) as caught:
        await tx(
            sessions, lambda s: authoring.update_topic(s, topic.id, expected_version=7, title="x")
        )
    assert caught.value.current_version == 1
    assert (await tx(sessions, lambda s: authoring.get_topic(s, topic.id))).title == "Cells"
    assert await take_outbox(engine) == []


async def test_update_that_changes_nothing_keeps_the_version(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic = await make_topic(sessions)
    await take_outbox(engine)
    same = await tx(sessions, lambda s: authoring.update_topic(s, topic.id, title="Cells"))
    assert same.version == 1
    assert await take_outbox(engine) == []


async def test_topic_with_live_children_cannot_be_deleted(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic = await make_topic(sessions)
    question = await make_question(sessions, topic.id)
    await take_outbox(engine)
    with pytest.raises(Conflict, match="1 live question"):
        await tx(sessions, lambda s: authoring.delete_topic(s, topic.id))
    assert await take_outbox(engine) == []
    await tx(sessions, lambda s: authoring.delete_question(s, question.id))
    assert await take_outbox(engine) == [
        ("question", question.id, 2, True),
        ("explanation", question.id, 2, True),
    ]
    await tx(sessions, lambda s: authoring.delete_topic(s, topic.id))
    assert await take_outbox(engine) == [("topic", topic.id, 2, True)]


@pytest.mark.parametrize(
    ("changes", "error", "message"),
    [
        ({"choices": ["a"], "answer": "a"}, InvalidInput, "between 2 and 10"),
        ({"choices": ["a", "a"], "answer": "a"}, InvalidInput, "unique"),
        ({"choices": ["a", " "], "answer": "a"}, InvalidInput, r"choices\[1\] must not be blank"),
        ({"choices": ["a", "b"], "answer": "c"}, InvalidInput, "not one of the choices"),
        ({"choices": ["a", "x" * 1001], "answer": "a"}, InvalidInput, "at most 1000"),
        ({"stem": "s" * 20_001}, InvalidInput, "stem is 20001 characters long; at most 20000"),
        ({"stem": "a\x00b"}, InvalidInput, r"stem must not contain NUL \(U\+0000\)"),
        ({"stem": "a\ud800"}, InvalidInput, "stem is not valid Unicode text"),
        ({"topic_id": 999}, MissingReference, "topic_id: topic 999 does not exist or is deleted"),
    ],
)
async def test_question_rules(
    engine: AsyncEngine,
    sessions: Sessions,
    changes: dict[str, Any],
    error: type[Exception],
    message: str,
) -> None:
    topic = await make_topic(sessions)
    await take_outbox(engine)
    fields: dict[str, Any] = {"topic_id": topic.id, "stem": "Why?", "choices": ["a", "b"]}
    fields["answer"] = "a"
    fields.update(changes)
    with pytest.raises(error, match=message):
        await tx(sessions, lambda s: authoring.create_question(s, **fields))
    assert await take_outbox(engine) == []


async def test_question_update_keeps_answer_among_choices(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic = await make_topic(sessions)
    question = await make_question(sessions, topic.id)
    await take_outbox(engine)
    # Only the choices: the stored answer is not among them, the state refuses (409).
    with pytest.raises(Conflict, match="'b' is not one of the question's choices"):
        await tx(sessions, lambda s: authoring.update_question(s, question.id, choices=["x", "y"]))
    # Both: the input refutes itself (422).
    with pytest.raises(InvalidInput, match="'z' is not one of the choices"):
        await tx(
            sessions,
            lambda s: authoring.update_question(s, question.id, choices=["x", "y"], answer="z"),
        )
    updated = await tx(
        sessions,
        lambda s: authoring.update_question(s, question.id, choices=["x", "y"], answer="y"),
    )
    assert (updated.choices, updated.answer, updated.version) == (["x", "y"], "y", 2)
    assert await take_outbox(engine) == [
        ("question", question.id, 2, False),
        ("explanation", question.id, 2, True),
    ]


async def test_explanation_lifecycle(engine: AsyncEngine, sessions: Sessions) -> None:
    topic = await make_topic(sessions)
    question = await make_question(sessions, topic.id)
    assert await take_outbox(engine) == [
        ("topic", topic.id, 1, False),
        ("question", question.id, 1, False),
        ("explanation", question.id, 1, True),
    ]
    ready = await tx(sessions, lambda s: authoring.complete_explanation(s, question.id, "Because"))
    assert (ready.explanation_status, ready.explanation) == ("ready", "Because")
    assert await take_outbox(engine) == [
        ("question", question.id, 2, False),
        ("explanation", question.id, 2, False),
    ]
    failed = await tx(sessions, lambda s: authoring.fail_explanation(s, question.id, "timeout"))
    assert (failed.explanation_status, failed.explanation_error) == ("failed", "timeout")
    assert failed.explanation is None
    assert await take_outbox(engine) == [
        ("question", question.id, 3, False),
        ("explanation", question.id, 3, True),
    ]
    reset = await tx(sessions, lambda s: authoring.reset_explanation(s, question.id))
    assert (reset.explanation_status, reset.explanation_error) == ("pending", None)
    with pytest.raises(NotFound):
        await tx(sessions, lambda s: authoring.complete_explanation(s, 999, "x"))


@pytest.mark.parametrize(
    "edit",
    [{"stem": "What now?"}, {"choices": ["a", "b", "d"]}, {"answer": "a"}],
    ids=["stem", "choices", "answer"],
)
async def test_editing_what_an_explanation_explains_withdraws_it(
    engine: AsyncEngine, sessions: Sessions, edit: dict[str, Any]
) -> None:
    topic = await make_topic(sessions)
    question = await make_question(sessions, topic.id)
    await tx(sessions, lambda s: authoring.complete_explanation(s, question.id, "Because"))
    await take_outbox(engine)

    edited = await tx(sessions, lambda s: authoring.update_question(s, question.id, **edit))

    # Back to pending until the explanation worker writes it again: a tombstone in the feed.
    assert (edited.explanation_status, edited.explanation) == ("pending", None)
    assert await take_outbox(engine) == [
        ("question", question.id, 3, False),
        ("explanation", question.id, 3, True),
    ]


async def test_moving_or_not_changing_a_question_keeps_its_explanation(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic, other = await make_topic(sessions), await make_topic(sessions)
    question = await make_question(sessions, topic.id)
    await tx(sessions, lambda s: authoring.fail_explanation(s, question.id, "timeout"))
    await tx(sessions, lambda s: authoring.complete_explanation(s, question.id, "Because"))
    await take_outbox(engine)

    same = await tx(
        sessions,
        lambda s: authoring.update_question(s, question.id, stem="What?", answer="b"),
    )
    assert (same.version, same.explanation_status) == (3, "ready")
    assert await take_outbox(engine) == []

    moved = await tx(
        sessions, lambda s: authoring.update_question(s, question.id, topic_id=other.id)
    )
    assert (moved.explanation_status, moved.explanation) == ("ready", "Because")
    assert await take_outbox(engine) == [
        ("question", question.id, 4, False),
        ("explanation", question.id, 4, False),
    ]


async def test_card_review_cycle_and_retire(engine: AsyncEngine, sessions: Sessions) -> None:
    topic = await make_topic(sessions)
    card = await tx(
        sessions, lambda s: authoring.create_card(s, topic_id=topic.id, front="f", back="b")
    )
    assert card.needs_review
    await tx(sessions, lambda s: authoring.approve_card(s, card.id))
    await tx(sessions, lambda s: authoring.approve_card(s, card.id))  # no change
    await tx(sessions, lambda s: authoring.send_card_to_review(s, card.id))
    await tx(sessions, lambda s: authoring.approve_card(s, card.id))
    alice = await tx(sessions, lambda s: scheduling.add_card_to_deck(s, card.id, "alice"))
    bob = await tx(sessions, lambda s: scheduling.add_card_to_deck(s, card.id, "bob"))
    await tx(sessions, lambda s: scheduling.suspend_card(s, card.id, "bob"))
    await take_outbox(engine)

    retired = await tx(sessions, lambda s: authoring.retire_card(s, card.id))
    assert retired.retired_at is not None and retired.version == 5
    outbox = await take_outbox(engine)
    assert outbox[0] == ("card", card.id, 5, True)
    assert sorted(outbox[1:]) == [
        ("card_progress", alice.id, 2, False),
        ("card_progress", bob.id, 3, False),
    ]
    for learner in ("alice", "bob"):
        row = await tx(sessions, lambda s, who=learner: scheduling.get_progress(s, card.id, who))
        assert (row.state, row.due_at, row.step) == ("retired", None, None)

    await tx(sessions, lambda s: authoring.retire_card(s, card.id))  # no change
    assert await take_outbox(engine) == []
    for action in (authoring.approve_card, authoring.send_card_to_review):
        with pytest.raises(Conflict, match="is retired"):
            await tx(sessions, lambda s, a=action: a(s, card.id))  # type: ignore[misc]
    with pytest.raises(Conflict, match="is retired"):
        await tx(sessions, lambda s: scheduling.rate_card(s, card.id, "alice", "good"))
    assert await take_outbox(engine) == []


async def test_card_history_of_outbox_rows(engine: AsyncEngine, sessions: Sessions) -> None:
    topic = await make_topic(sessions)
    await take_outbox(engine)
    card = await make_approved_card(sessions, topic.id)
    await tx(sessions, lambda s: authoring.send_card_to_review(s, card.id))
    assert await take_outbox(engine) == [
        ("card", card.id, 1, True),
        ("card", card.id, 2, False),
        ("card", card.id, 3, True),
    ]


async def test_card_links_only_a_question_of_its_topic(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    one = await make_topic(sessions)
    two = await make_topic(sessions)
    question = await make_question(sessions, one.id)
    with pytest.raises(Conflict, match=f"belongs to topic {one.id}"):
        await tx(
            sessions,
            lambda s: authoring.create_card(
                s, topic_id=two.id, front="f", back="b", question_id=question.id
            ),
        )
    card = await tx(
        sessions,
        lambda s: authoring.create_card(
            s, topic_id=one.id, front="f", back="b", question_id=question.id
        ),
    )
    with pytest.raises(Conflict, match="live card"):
        await tx(sessions, lambda s: authoring.delete_question(s, question.id))
    with pytest.raises(Conflict, match="live card"):
        await tx(sessions, lambda s: authoring.update_question(s, question.id, topic_id=two.id))
    unlinked = await tx(sessions, lambda s: authoring.update_card(s, card.id, question_id=None))
    assert (unlinked.question_id, unlinked.version) == (None, 2)
    await tx(sessions, lambda s: authoring.delete_question(s, question.id))


async def test_delete_card_tombstones_its_progress(engine: AsyncEngine, sessions: Sessions) -> None:
    topic = await make_topic(sessions)
    card = await make_approved_card(sessions, topic.id)
    progress = await tx(sessions, lambda s: scheduling.add_card_to_deck(s, card.id, "alice"))
    await take_outbox(engine)
    await tx(sessions, lambda s: authoring.delete_card(s, card.id, expected_version=2))
    assert await take_outbox(engine) == [
        ("card", card.id, 3, True),
        ("card_progress", progress.id, 2, True),
    ]
    with pytest.raises(NotFound):
        await tx(sessions, lambda s: scheduling.get_progress(s, card.id, "alice"))


async def test_deck_add_and_reviews(engine: AsyncEngine, sessions: Sessions) -> None:
    topic = await make_topic(sessions)
    card = await make_approved_card(sessions, topic.id)
    await take_outbox(engine)
    added = await tx(sessions, lambda s: scheduling.add_card_to_deck(s, card.id, "alice"))
    assert (added.state, added.due_at, added.reps, added.version) == ("new", None, 0, 1)
    assert await take_outbox(engine) == [("card_progress", added.id, 1, False)]
    with pytest.raises(Conflict, match="already in learner 'alice'"):
        await tx(sessions, lambda s: scheduling.add_card_to_deck(s, card.id, "alice"))

    t0 = datetime(2026, 3, 1, 9, 0, tzinfo=UTC)
    first = await tx(sessions, lambda s: scheduling.rate_card(s, card.id, "alice", "good", t0))
    # FSRS learning steps are 1 min and 10 min: "good" on a new card moves to the second.
    assert (first.state, first.step, first.reps, first.lapses) == ("learning", 1, 1, 0)
    assert first.due_at == t0 + timedelta(minutes=10)
    assert first.last_review_at == t0
    assert await take_outbox(engine) == [("card_progress", added.id, 2, False)]

    t1 = t0 + timedelta(minutes=10)
    second = await tx(sessions, lambda s: scheduling.rate_card(s, card.id, "alice", "good", t1))
    assert second.state == "review" and second.due_at is not None
    assert second.due_at >= t1 + timedelta(days=1)
    t2 = second.due_at
    lapse = await tx(sessions, lambda s: scheduling.rate_card(s, card.id, "alice", "again", t2))
    assert (lapse.state, lapse.reps, lapse.lapses) == ("relearning", 3, 1)
    assert lapse.due_at == t2 + timedelta(minutes=10)

    with pytest.raises(Conflict, match="before the last review"):
        await tx(sessions, lambda s: scheduling.rate_card(s, card.id, "alice", "good", t0))
    with pytest.raises(InvalidInput, match="rating 'great' is not one of"):
        await tx(sessions, lambda s: scheduling.rate_card(s, card.id, "alice", "great"))
    with pytest.raises(InvalidInput, match="time zone"):
        await tx(
            sessions,
            lambda s: scheduling.rate_card(s, card.id, "alice", "good", datetime(2030, 1, 1)),
        )
    await take_outbox(engine)

    suspended = await tx(sessions, lambda s: scheduling.suspend_card(s, card.id, "alice"))
    assert (suspended.state, suspended.due_at) == ("suspended", None)
    with pytest.raises(Conflict, match="is suspended"):
        await tx(sessions, lambda s: scheduling.rate_card(s, card.id, "alice", "good"))
    assert await take_outbox(engine) == [("card_progress", added.id, 5, False)]


async def test_unapproved_card_cannot_be_studied(engine: AsyncEngine, sessions: Sessions) -> None:
    topic = await make_topic(sessions)
    card = await make_approved_card(sessions, topic.id)
    await tx(sessions, lambda s: scheduling.add_card_to_deck(s, card.id, "alice"))
    await tx(sessions, lambda s: authoring.send_card_to_review(s, card.id))
    await take_outbox(engine)
    with pytest.raises(Conflict, match="not approved"):
        await tx(sessions, lambda s: scheduling.rate_card(s, card.id, "alice", "good"))
    with pytest.raises(Conflict, match="not approved"):
        await tx(sessions, lambda s: scheduling.add_card_to_deck(s, card.id, "bob"))
    with pytest.raises(NotFound, match="card 999 not found"):
        await tx(sessions, lambda s: scheduling.add_card_to_deck(s, 999, "bob"))
    with pytest.raises(InvalidInput, match="not a valid id"):
        await tx(sessions, lambda s: scheduling.add_card_to_deck(s, card.id, "../etc"))
    assert await take_outbox(engine) == []


async def test_list_pages_in_id_order(sessions: Sessions) -> None:
    ids = [(await make_topic(sessions)).id for _ in range(5)]
    await tx(sessions, lambda s: authoring.delete_topic(s, ids[1]))
    first = await tx(sessions, lambda s: authoring.list_topics(s, limit=2))
    assert [t.id for t in first] == [ids[0], ids[2]]
    rest = await tx(sessions, lambda s: authoring.list_topics(s, after_id=ids[2], limit=10))
    assert [t.id for t in rest] == ids[3:]
    with pytest.raises(InvalidInput, match="limit must be between 1 and 200"):
        await tx(sessions, lambda s: authoring.list_topics(s, limit=0))
