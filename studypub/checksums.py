"""State checksums: a consumer proves its replica equals the feed without reading it again.

The relay keeps, per (kind, scope), the number of live published entries and an
order-independent checksum of them, in its apply transaction (``feed_checksums``; the
statements are in ``studypub/sql``): an applied entry adds its contribution, the live entry
it replaces (or deletes) subtracts its own. A feed page that reaches the head carries the
checksums of what it covers, and a consumer compares them with its own, computed the same
way from the entries it holds.

An entry's contribution is the first 16 hex digits of its payload hash, read as two 32-bit
halves. The checksum of a set of entries is the sum of the high halves and the sum of the low
halves, each modulo 2^32, written as 16 hex digits (``"%08x%08x"``): any consumer computes it
with 32-bit arithmetic (JavaScript numbers included), and it is the same in whatever order the
entries come. The database keeps the plain sums (exact in a BIGINT up to 2^31 entries), so
that neither database needs an overflow rule.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import func

HALF = 2**32
# The SQL function: studypub_h64(hash) -> the first 16 hex digits as one signed 64-bit
# integer, parsed once per entry; its halves are (h >> 32) & 0xFFFFFFFF and h & 0xFFFFFFFF
# (HI and LO below, the same text on both databases).
H64 = "studypub_h64"
HI = "(({h}) >> 32) & 4294967295"
LO = "({h}) & 4294967295"

# PostgreSQL: a plain SQL function, inlined by the planner (created by migration 0005).
PG_H64 = f"""
CREATE OR REPLACE FUNCTION {H64}(hash text) RETURNS bigint
LANGUAGE sql IMMUTABLE PARALLEL SAFE
AS $$ SELECT ('x' || substr(hash, 1, 16))::bit(64)::bigint $$
"""


def h32(hash_hex: str, half: int) -> int:
    """One 32-bit half of an entry's contribution: 0 the high one, 1 the low one."""
    return int(hash_hex[8 * half : 8 * half + 8], 16)


def h64(hash_hex: str) -> int:
    """``studypub_h64`` on SQLite: as PostgreSQL's ``bit(64)::bigint``, two's complement."""
    value = int(hash_hex[:16], 16)
    return value - 2**64 if value >= 2**63 else value


def register_sqlite(dbapi_connection: Any) -> None:
    """Give a SQLite connection ``studypub_h64`` (at connect, see :mod:`studypub.db`)."""
    dbapi_connection.create_function(H64, 1, h64, deterministic=True)


def hi_of(hash_column: Any) -> Any:
    """The high half of a hash column's contribution, as a SQLAlchemy expression."""
    return func.studypub_h64(hash_column).op(">>")(32).op("&")(HALF - 1)


def lo_of(hash_column: Any) -> Any:
    """The low half, likewise."""
    return func.studypub_h64(hash_column).op("&")(HALF - 1)


def sql_halves(column: str) -> tuple[str, str]:
    """The SQL of the two halves of ``column``'s contribution (``column``: a hash)."""
    h = f"{H64}({column})"
    return HI.format(h=h), LO.format(h=h)


def checksum(sum_hi: int, sum_lo: int) -> str:
    return f"{sum_hi % HALF:08x}{sum_lo % HALF:08x}"


@dataclass(slots=True)
class State:
    """The count and sums of a set of live entries; what a consumer keeps per kind."""

    entries: int = 0
    sum_hi: int = 0
    sum_lo: int = 0

    def add(self, hash_hex: str, sign: int = 1) -> None:
        self.entries += sign
        self.sum_hi += sign * h32(hash_hex, 0)
        self.sum_lo += sign * h32(hash_hex, 1)

    def add_state(self, other: State, sign: int = 1) -> None:
        self.entries += sign * other.entries
        self.sum_hi += sign * other.sum_hi
        self.sum_lo += sign * other.sum_lo

    @property
    def checksum(self) -> str:
        return checksum(self.sum_hi, self.sum_lo)

    def as_json(self) -> dict[str, Any]:
        return {"count": self.entries, "checksum": self.checksum}


def of_entries(entries: Iterable[Mapping[str, Any]]) -> dict[str, State]:
    """Per kind, the state of the live entries among ``entries`` (one per key)."""
    states: dict[str, State] = {}
    for entry in entries:
        if not entry["deleted"]:
            states.setdefault(entry["kind"], State()).add(entry["hash"])
    return states


Key = tuple[str, str]  # (kind, scope)


class Book:
    """The checksums of every (kind, scope), kept up to date by a reader that follows the
    feed (the feed tail), with the totals per kind over every scope, so that a page for any
    reader costs a few lookups: shared plus its own scope, or the totals."""

    def __init__(self) -> None:
        self.rows: dict[Key, State] = {}
        self.totals: dict[str, State] = {}

    def update(self, rows: Mapping[Key, State]) -> None:
        """Rows read again (changed since the last read): replace them, move the totals."""
        for key, state in rows.items():
            old = self.rows.get(key)
            total = self.totals.setdefault(key[0], State())
            if old is not None:
                total.add_state(old, -1)
            total.add_state(state)
            self.rows[key] = state

    def add(self, key: Key, hash_hex: str, sign: int = 1) -> None:
        """One live entry of ``key`` more (``sign`` -1: one less), for a reader that keeps
        the book from the entries themselves (an edge server)."""
        self.rows.setdefault(key, State()).add(hash_hex, sign)
        self.totals.setdefault(key[0], State()).add(hash_hex, sign)

    def for_reader(self, kinds: Iterable[str] | None, scope: str | None) -> dict[str, State]:
        """Per kind, the state a reader of ``kinds`` (None: all) in ``scope`` (None: every
        scope) holds once it has read the feed to the head. Kinds with nothing live are left
        out, as a consumer leaves them out."""
        states: dict[str, State] = {}
        for kind in self.totals if kinds is None else kinds:
            if scope is None:
                state = self.totals.get(kind)
            else:
                state = merged(self.rows.get((kind, "")), self.rows.get((kind, scope)))
            if state is not None and state.entries:
                states[kind] = state
        return states


def merged(*states: State | None) -> State | None:
    present = [state for state in states if state is not None]
    if len(present) < 2:
        return present[0] if present else None
    total = State()
    for state in present:
        total.add_state(state)
    return total


def to_json(states: Mapping[str, State]) -> str:
    """``{"kind": {"count": n, "checksum": "..."}, ...}``, kinds in order."""
    return json.dumps(
        {kind: states[kind].as_json() for kind in sorted(states)}, separators=(",", ":")
    )
