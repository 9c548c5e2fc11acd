"""The apply rule of every consumer (DESIGN "Apply rule"), as a Python oracle and a table of
cases. The Python replica's SQL and the web viewer's ``shouldApply`` are both checked against
it case by case, so the consumers cannot drift apart from each other or from the relay.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

A = "a" * 64
B = "b" * 64
KIND = "topic"

Held = dict[str, Any]  # what a consumer holds for a key: version, schema_version, hash, deleted


def held(version: int, schema_version: int, hash: str, deleted: bool = False) -> Held:
    return {
        "version": version,
        "schema_version": schema_version,
        "hash": hash,
        "deleted": deleted,
    }


def applies(current: Mapping[str, Any] | None, entry: Mapping[str, Any]) -> bool:
    """Apply when (version, schema_version) is higher, or equal with another hash or deleted
    flag; never move a key back."""
    if current is None:
        return True
    new = (entry["version"], entry["schema_version"])
    old = (current["version"], current["schema_version"])
    if new != old:
        return new > old
    return (entry["hash"], entry["deleted"]) != (current["hash"], current["deleted"])


# (what it shows, held for the key or None, the entry, whether it applies)
CASES: list[tuple[str, Held | None, Held, bool]] = [
    ("nothing held", None, held(1, 1, A), True),
    ("a tombstone, nothing held", None, held(2, 1, B, deleted=True), True),
    ("equal in everything: a no-op", held(3, 1, A), held(3, 1, A), False),
    ("equal tombstones: a no-op", held(3, 1, B, True), held(3, 1, B, True), False),
    ("same version, another hash: a repair", held(3, 1, A), held(3, 1, B), True),
    ("same version, deleted now", held(3, 1, A), held(3, 1, A, deleted=True), True),
    ("same version, live again", held(3, 1, B, True), held(3, 1, A), True),
    ("higher version, same hash", held(3, 1, A), held(4, 1, A), True),
    ("higher schema version", held(3, 1, A), held(3, 2, B), True),
    ("higher version, lower schema version", held(3, 2, A), held(4, 1, B), True),
    ("older version: never back", held(3, 1, A), held(2, 1, B), False),
    ("older schema version: never back", held(3, 2, A), held(3, 1, B), False),
    ("lower version, higher schema version", held(3, 1, A), held(2, 2, B), False),
    ("older live entry after a tombstone", held(3, 1, B, True), held(2, 1, A), False),
    ("older tombstone over a live entry", held(3, 1, A), held(2, 1, B, True), False),
]


def case_ids() -> list[str]:
    return [name for name, *_ in CASES]


def entry(key_id: int, state: Held, seq: int) -> dict[str, Any]:
    """A feed entry for ``(KIND, key_id)`` in ``state`` (a tombstone's payload is ``{}``)."""
    payload: dict[str, Any] = (
        {}
        if state["deleted"]
        else {"id": key_id, "title": f"v{state['version']} {state['hash'][0]}"}
    )
    return {
        "seq": seq,
        "kind": KIND,
        "id": key_id,
        "payload": payload,
        "published_at": "2024-01-01T00:00:00+00:00",
        **state,
    }
