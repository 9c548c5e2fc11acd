"""``studypub dead list | show | replay | drop`` on both databases: the dead rows an operator
reads, replays once the cause is fixed (harmless when a newer version was published since),
or drops after a confirmation. Dead rows come from a relay that met a payload the database
refuses (the poison rule), or are set dead through the ORM where only their columns matter."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta
from pathlib import Path

import pytest
from click.testing import Result
from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from typer.testing import CliRunner

from studypub import dead
from studypub.cli import app
from studypub.db import read_session_factory
from studypub.models import Outbox, utcnow
from studypub.outbox import snapshot_values
from studypub.relay import Outcomes, Relay
from tests.support.cli import cli
from tests.support.databases import url_of
from tests.support.outbox import outbox_count
from tests.support.state import head_of, the_published_row
from tests.support.triggers import POISON_ERROR, POISON_TITLE, poison_rule
from tests.support.writes import create_topics, update_topic

Sessions = async_sessionmaker[AsyncSession]


async def studypub_dead(engine: AsyncEngine, *args: str, stdin: str | None = None) -> Result:
    """``studypub dead ARGS`` on ``engine``'s database, in process (stdout and stderr apart)."""
    argv = ["dead", *args, "--database-url", url_of(engine)]
    return await asyncio.to_thread(CliRunner().invoke, app, argv, input=stdin)


async def poisoned_topic(engine: AsyncEngine, sessions: Sessions) -> tuple[int, int]:
    """A topic the database refused to publish: (its id, its dead outbox row's id). The
    refusal (the poison rule) is gone afterwards: the cause is fixed."""
    async with poison_rule(engine):
        [topic_id] = await create_topics(sessions, [POISON_TITLE])
        assert await Relay(engine, listen=False, max_attempts=1).run_once() == Outcomes(dead=1)
    async with engine.connect() as conn:
        outbox_id = (await conn.execute(select(Outbox.id))).scalar_one()
    return topic_id, outbox_id


async def dead_row(
    sessions: Sessions,
    kind: str,
    source_id: int,
    *,
    error: str = "IntegrityError: refused",
    dead_for: timedelta = timedelta(minutes=5),
    version: int = 1,
) -> int:
    """An outbox row set dead through the ORM, dead for ``dead_for``; returns its id."""
    values = snapshot_values(
        kind=kind, source_id=source_id, source_version=version, payload={"id": source_id}
    )
    row = Outbox(**values, attempts=10, dead_at=utcnow() - dead_for, last_error=error)
    async with sessions() as s:
        s.add(row)
        await s.commit()
    return row.id


async def waiting_row(sessions: Sessions, source_id: int) -> int:
    """An outbox row the relay has not given up on."""
    row = Outbox(**snapshot_values(kind="topic", source_id=source_id, source_version=1, payload={}))
    async with sessions() as s:
        s.add(row)
        await s.commit()
    return row.id


async def dead_ids(engine: AsyncEngine) -> list[int]:
    async with engine.connect() as conn:
        query = select(Outbox.id).where(Outbox.dead_at.is_not(None)).order_by(Outbox.id)
        return list((await conn.execute(query)).scalars())


# ---------------------------------------------------------------- list


async def test_list_shows_the_dead_rows_oldest_dead_first_in_a_table(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    card = await dead_row(sessions, "card", 12, error="ValueError: bad card")
    topic = await dead_row(
        sessions,
        "topic",
        7,
        version=3,
        error="IntegrityError: refused\nDETAIL: the second line",
        dead_for=timedelta(hours=3, minutes=5, seconds=10),
    )
    await waiting_row(sessions, 8)

    result = await studypub_dead(engine, "list")

    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    header = ["id", "kind", "entity", "version", "attempts", "age", "error"]
    assert lines[2].replace("┃", " ").split() == header
    topic_line, card_line = lines[4], lines[5]  # oldest dead first
    assert topic_line.replace("│", " ").split() == [
        str(topic),
        "topic",
        "7",
        "3",
        "10",
        "3h",
        "5m",
        "IntegrityError:",
        "refused",
    ]
    assert card_line.replace("│", " ").split()[:2] == [str(card), "card"]
    assert "5m" in card_line and "ValueError: bad card" in card_line
    assert "second line" not in result.stdout  # the first line of the error only
    assert lines[-1] == "2 dead rows; `studypub dead show ID` for one in full"


async def test_list_json_kind_and_limit(engine: AsyncEngine, sessions: Sessions) -> None:
    first = await dead_row(sessions, "topic", 1, error="E: one\nmore", dead_for=timedelta(hours=2))
    card = await dead_row(sessions, "card", 2, dead_for=timedelta(hours=1))
    last = await dead_row(sessions, "topic", 3, dead_for=timedelta(minutes=1))

    everything = json.loads((await studypub_dead(engine, "list", "--json")).stdout)
    assert everything["total"] == 3
    assert [row["id"] for row in everything["rows"]] == [first, card, last]
    row = everything["rows"][0]
    assert row["kind"] == "topic" and row["source_id"] == 1 and row["source_version"] == 1
    assert row["attempts"] == 10 and row["error"] == "E: one"
    assert 7190 < row["dead_age_s"] < 7300 and row["dead_at"].endswith("Z")

    topics = json.loads((await studypub_dead(engine, "list", "--kind", "topic", "--json")).stdout)
    assert (topics["total"], [r["id"] for r in topics["rows"]]) == (2, [first, last])
    limited = json.loads((await studypub_dead(engine, "list", "--limit", "1", "--json")).stdout)
    assert (limited["total"], [r["id"] for r in limited["rows"]]) == (3, [first])

    table = await studypub_dead(engine, "list", "--kind", "card")
    assert str(card) in table.stdout and "topic" not in table.stdout
    assert table.stdout.splitlines()[-1].startswith("1 dead row;")
    cut = await studypub_dead(engine, "list", "--limit", "2")
    assert cut.stdout.splitlines()[-1].startswith("3 dead rows (2 shown: --limit to see more)")


async def test_list_says_no_dead_rows_in_one_line(engine: AsyncEngine, sessions: Sessions) -> None:
    await waiting_row(sessions, 1)
    result = await studypub_dead(engine, "list")
    assert (result.exit_code, result.stdout) == (0, "no dead rows\n")
    await dead_row(sessions, "topic", 2)
    result = await studypub_dead(engine, "list", "--kind", "card")
    assert (result.exit_code, result.stdout) == (0, "no dead rows of kind card\n")
    result = await studypub_dead(engine, "list", "--kind", "card", "--json")
    assert json.loads(result.stdout) == {"total": 0, "rows": []}


# ---------------------------------------------------------------- show


async def test_show_prints_the_whole_row(engine: AsyncEngine, sessions: Sessions) -> None:
    topic_id, outbox_id = await poisoned_topic(engine, sessions)

    result = await studypub_dead(engine, "show", str(outbox_id))

    assert result.exit_code == 0, result.output
    out = result.stdout
    assert f"outbox row      {outbox_id}\n" in out
    assert f"entity          {topic_id}, version 1\n" in out
    assert "attempts        1\n" in out
    assert POISON_ERROR in out.split("\nerror\n")[1]
    payload = json.loads(out.split("\npayload\n")[1])
    assert payload == {"id": topic_id, "title": POISON_TITLE, "description": ""}
    assert f'  "title": "{POISON_TITLE}"' in out  # pretty: one field a line

    body = json.loads((await studypub_dead(engine, "show", str(outbox_id), "--json")).stdout)
    assert (body["id"], body["kind"], body["source_id"]) == (outbox_id, "topic", topic_id)
    assert POISON_ERROR in body["error"] and body["payload"] == payload


async def test_show_prints_a_multi_line_error_in_full(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    outbox_id = await dead_row(sessions, "card", 4, error="E: first [bold]x[/]\nsecond line")
    result = await studypub_dead(engine, "show", str(outbox_id))
    assert "\nerror\nE: first [bold]x[/]\nsecond line\npayload\n" in result.stdout


async def test_show_refuses_an_unknown_or_waiting_row_in_one_line(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    waiting = await waiting_row(sessions, 1)
    unknown = await studypub_dead(engine, "show", "999")
    assert unknown.exit_code == 1
    assert unknown.stderr == (
        "error: no outbox row 999: published, dropped or never enqueued"
        " (`studypub dead list` shows the dead ones)\n"
    )
    alive = await studypub_dead(engine, "show", str(waiting))
    assert alive.exit_code == 1
    assert alive.stderr == (
        f"error: outbox row {waiting} is not dead: it waits for the relay (attempts so far: 0)\n"
    )


# ---------------------------------------------------------------- replay


async def test_replay_by_id_publishes_the_row_once_the_cause_is_fixed(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic_id, outbox_id = await poisoned_topic(engine, sessions)
    other = await dead_row(sessions, "topic", topic_id + 100)

    result = await studypub_dead(engine, "replay", "--id", str(outbox_id))

    assert result.exit_code == 0, result.output
    assert result.stdout == "replayed 1 dead row: due again at the relay's next pass\n"
    async with engine.connect() as conn:
        row = (await conn.execute(select(Outbox).where(Outbox.id == outbox_id))).one()
    assert (row.dead_at, row.attempts) == (None, 0)
    assert row.available_at <= utcnow()
    assert POISON_ERROR in row.last_error  # kept until the relay tries it again
    assert await dead_ids(engine) == [other]

    assert await Relay(engine, listen=False).run_once() == Outcomes(applied=1)
    published = await the_published_row(engine)
    assert (published.id, published.payload["title"]) == (topic_id, POISON_TITLE)


async def test_replay_by_kind_and_all(engine: AsyncEngine, sessions: Sessions) -> None:
    topics = [await dead_row(sessions, "topic", i) for i in (1, 2)]
    card = await dead_row(sessions, "card", 3)

    by_kind = await studypub_dead(engine, "replay", "--kind", "topic")
    assert by_kind.exit_code == 0, by_kind.output
    assert by_kind.stdout.startswith("replayed 2 dead rows:")
    assert await dead_ids(engine) == [card]

    again = await studypub_dead(engine, "replay", "--kind", "topic")
    assert again.stdout == "no dead rows matched: nothing replayed\n"

    everything = await studypub_dead(engine, "replay", "--all")
    assert everything.stdout.startswith("replayed 1 dead row:")
    assert await dead_ids(engine) == []
    assert await outbox_count(engine, dead=False) == len(topics) + 1


async def test_replay_with_kind_and_ids_takes_the_rows_matching_both(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic = await dead_row(sessions, "topic", 1)
    card = await dead_row(sessions, "card", 2)
    waiting = await waiting_row(sessions, 3)

    result = await studypub_dead(
        engine, "replay", "--kind", "topic", "--id", str(topic), "--id", str(card),
        "--id", str(waiting),
    )  # fmt: skip

    assert result.exit_code == 0, result.output
    assert result.stdout == (
        f"replayed 1 dead row: due again at the relay's next pass; not dead rows: {card},"
        f" {waiting} (published, dropped, waiting, or never enqueued)\n"
    )
    assert await dead_ids(engine) == [card]


async def test_replaying_a_row_older_than_what_was_published_since_is_harmless(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic_id, outbox_id = await poisoned_topic(engine, sessions)
    newer = await update_topic(sessions, topic_id, title="cured")
    assert await Relay(engine, listen=False).run_once() == Outcomes(applied=1)
    head = await head_of(engine)

    result = await studypub_dead(engine, "replay", "--id", str(outbox_id))
    assert result.exit_code == 0, result.output
    # Nothing refuses the old payload any more: only the version rule keeps it out.
    assert await Relay(engine, listen=False).run_once() == Outcomes(stale=1)

    published = await the_published_row(engine)
    assert (published.version, published.payload["title"]) == (newer, "cured")
    assert await head_of(engine) == head  # no feed entry for the replayed row
    assert await outbox_count(engine) == 0


# ---------------------------------------------------------------- drop


async def test_drop_asks_first_and_declining_changes_nothing(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    rows = [await dead_row(sessions, "topic", i) for i in (1, 2)]

    declined = await studypub_dead(engine, "drop", "--all", stdin="n\n")

    assert declined.exit_code == 1
    assert "Delete 2 dead rows? Deleted snapshots are never published. [y/N]" in declined.stdout
    assert await dead_ids(engine) == rows

    confirmed = await studypub_dead(engine, "drop", "--all", stdin="y\n")
    assert confirmed.exit_code == 0, confirmed.output
    assert confirmed.stdout.splitlines()[-1] == "dropped 2 dead rows"
    assert await outbox_count(engine) == 0


async def test_drop_yes_deletes_only_the_chosen_dead_rows(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    topic = await dead_row(sessions, "topic", 1)
    card = await dead_row(sessions, "card", 2)
    waiting = await waiting_row(sessions, 3)

    result = await studypub_dead(engine, "drop", "--kind", "card", "--yes")
    assert (result.exit_code, result.stdout) == (0, "dropped 1 dead row\n")
    assert await dead_ids(engine) == [topic]

    result = await studypub_dead(engine, "drop", "--id", str(waiting), "--yes")
    assert result.stdout == (
        f"no dead rows matched; not dead rows: {waiting}"
        " (published, dropped, waiting, or never enqueued)\n"
    )
    assert await outbox_count(engine) == 2
    nothing = await studypub_dead(engine, "drop", "--id", str(card))  # gone: no prompt
    assert (nothing.exit_code, nothing.stdout) == (0, "no dead rows matched: nothing dropped\n")


async def test_drop_leaves_a_row_dead_since_the_count_it_confirmed(
    engine: AsyncEngine, sessions: Sessions
) -> None:
    """The prompt showed N rows; a row that died while the operator read it is not among
    them, and stays."""
    seen = await dead_row(sessions, "topic", 1)
    choice = dead.choose([], [], every=True)
    async with read_session_factory(engine)() as s:
        count, newest = await dead.count(s, choice)
    assert count == 1
    later = await dead_row(sessions, "topic", 2, dead_for=timedelta(0))
    async with sessions() as s:
        dropped = await dead.drop(s, choice, dead_until=newest)
        await s.commit()
    assert dropped == dead.Changed(rows=1)
    assert seen not in await dead_ids(engine) == [later]


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["replay"],
            "no dead rows chosen: give --kind KIND or --id ID (each repeatable; together,"
            " the rows matching both), or --all for every dead row",
        ),
        (
            ["drop", "--yes"],
            "no dead rows chosen: give --kind KIND or --id ID (each repeatable; together,"
            " the rows matching both), or --all for every dead row",
        ),
        (
            ["replay", "--all", "--kind", "topic"],
            "--all chooses every dead row: give it alone, or --kind and --id",
        ),
        (["drop", "--id", "-3"], "invalid --id -3: outbox ids are positive"),
        (["replay", "--id", "0"], "invalid --id 0: outbox ids are positive"),
        (["show", "0"], "invalid ID 0: outbox ids are positive"),
        (
            ["list", "--kind", "quiz"],
            "unknown kind 'quiz': allowed kinds are topic, question, explanation, card,"
            " card_progress; choose a dead row of another kind by --id",
        ),
        (
            ["replay", "--kind", "quiz"],
            "unknown kind 'quiz': allowed kinds are topic, question, explanation, card,"
            " card_progress; choose a dead row of another kind by --id",
        ),
        (["list", "--limit", "0"], "invalid --limit 0: allowed 1..10000"),
    ],
)
def test_bad_input_is_one_line_before_the_database(
    tmp_path: Path, args: list[str], message: str
) -> None:
    database = tmp_path / "never-created.db"
    result = cli("dead", *args, "--database-url", f"sqlite+aiosqlite:///{database}")
    assert result.exit_code == 1
    assert result.stderr == f"error: {message}\n"
    assert not database.exists()
