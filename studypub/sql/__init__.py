"""The raw SQL statements of the store, whole and named, one file per database.

``postgresql.sql`` and ``sqlite.sql`` hold the statements whose text differs between the
databases (the relay's apply transaction); everything else is SQLAlchemy Core in
``studypub.store``. Each statement stands under a ``-- name --`` header, with a comment on
why it has its shape. A step of a statement that one database runs in several statements
is named ``statement.step`` (SQLite has no data-modifying ``WITH``), so both files define
the same statements (``tests/test_sql.py``).

Lists are bound as one value, never rendered into the text: an array on PostgreSQL, one
JSON text on SQLite (read with ``json_each``). So each statement keeps the same text, and
its cached plan, whatever the batch size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any

from sqlalchemy import Dialect, Text, TextClause, bindparam, text
from sqlalchemy.types import TypeDecorator, TypeEngine

from studypub.models import UTCDateTime

DIALECTS: tuple[str, ...] = ("postgresql", "sqlite")

_HEADER = re.compile(r"^-- ([a-z_]+(?:\.[a-z_]+)?) --$", re.MULTILINE)
# The bind parameters text() finds (SQLAlchemy's own pattern): ":name", not "::type".
_BIND = re.compile(r"(?<![:\w\\]):(\w+)(?!:)")


class _JsonList(TypeDecorator[Sequence[Any]]):
    """A list bound as one JSON text, for SQLite's ``json_each``."""

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Sequence[Any] | None, dialect: Dialect) -> str | None:
        return None if value is None else json.dumps(list(value))


# Binds that need a type: UTC datetimes (SQLite stores them naive), and SQLite's lists.
_TIMES: dict[str, TypeEngine[Any]] = {"now": UTCDateTime(), "available": UTCDateTime()}
_BIND_TYPES: dict[str, dict[str, TypeEngine[Any]]] = {
    "postgresql": _TIMES,
    "sqlite": {
        **_TIMES,
        **{name: _JsonList() for name in ("ids", "claimed", "kinds", "rows", "applied")},
    },
}


def parse(source: str) -> dict[str, str]:
    """``{name: statement}`` from a file of ``-- name --`` sections.

    A section's comment lines (``--``) are the reader's, not the database's: they are dropped.
    """
    parts = _HEADER.split(source)
    statements: dict[str, str] = {}
    for name, body in zip(parts[1::2], parts[2::2], strict=True):
        if name in statements:
            raise ValueError(f"statement {name!r} is defined twice")
        lines = [line for line in body.splitlines() if not line.lstrip().startswith("--")]
        statement = "\n".join(lines).strip()
        if not statement:
            raise ValueError(f"statement {name!r} is empty")
        statements[name] = statement
    return statements


def read_source(dialect: str) -> str:
    """The text of ``<dialect>.sql``, as packaged."""
    return resources.files(__name__).joinpath(f"{dialect}.sql").read_text(encoding="utf-8")


@cache
def queries(dialect: str) -> Mapping[str, TextClause]:
    """The statements of ``dialect`` (``postgresql`` or ``sqlite``), parsed once, typed binds."""
    types = _BIND_TYPES[dialect]
    compiled: dict[str, TextClause] = {}
    for name, statement in parse(read_source(dialect)).items():
        binds = [bindparam(b, type_=types[b]) for b in set(_BIND.findall(statement)) if b in types]
        compiled[name] = text(statement).bindparams(*binds)
    return compiled
