"""The raw SQL files: both databases define the same statements, every one is used, and the
loader reads them whole (no fragments, no values rendered into the text)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from studypub import sql, store
from studypub.store import Verdict


def _statement(name: str) -> str:
    return name.split(".")[0]


def test_both_databases_define_the_same_statements() -> None:
    names = {dialect: set(sql.queries(dialect)) for dialect in sql.DIALECTS}
    # A step ("publish.decide") belongs to a statement that the other database runs whole.
    statements = {dialect: {_statement(n) for n in found} for dialect, found in names.items()}
    assert statements["postgresql"] == statements["sqlite"]
    assert {"claim_next", "claim_ids", "read_claimed", "publish"} <= statements["sqlite"]


def test_every_statement_is_used_by_the_store() -> None:
    source = Path(store.__file__).read_text(encoding="utf-8")
    strings = {
        node.value
        for node in ast.walk(ast.parse(source))
        if isinstance(node, ast.Constant) and isinstance(node.value, str)
    }
    for dialect in sql.DIALECTS:
        unused = set(sql.queries(dialect)) - strings
        assert not unused, f"{dialect}.sql: {sorted(unused)} defined but never run"


@pytest.mark.parametrize("dialect", sql.DIALECTS)
def test_verdicts_are_the_enums_and_no_kind_is_rendered(dialect: str) -> None:
    text = sql.read_source(dialect)
    quoted = set(re.findall(r"'([a-z_]+)'", text))
    assert {v.value for v in Verdict} <= quoted
    # The publishable kinds are bound (:kinds), never spelled out in the SQL.
    assert not quoted & {"topic", "question", "explanation", "card", "card_progress"}
    assert ":kinds" in text


@pytest.mark.parametrize("dialect", sql.DIALECTS)
def test_now_binds_as_a_utc_datetime(dialect: str) -> None:
    for name, clause in sql.queries(dialect).items():
        binds = clause._bindparams  # what text() will bind
        if "now" in binds:
            assert type(binds["now"].type).__name__ == "UTCDateTime", name


def test_parse_keeps_statements_whole_and_drops_comments() -> None:
    source = (
        "-- a file comment\n\n-- one --\n-- why it is so\nSELECT 1\nFROM t\n\n"
        "-- two.step --\nSELECT 2\n"
    )
    assert sql.parse(source) == {"one": "SELECT 1\nFROM t", "two.step": "SELECT 2"}
    with pytest.raises(ValueError, match="defined twice"):
        sql.parse("-- one --\nSELECT 1\n-- one --\nSELECT 2\n")
    with pytest.raises(ValueError, match="empty"):
        sql.parse("-- one --\n-- only a comment\n")
