"""Verify: find drift between source rows and the published store, and repair it.

Drift is a (kind, id) whose published row is not what its projection says it should be:

- ``missing``: eligible, but not published, or published as a tombstone;
- ``stale``: published live with another payload hash than the projection's;
- ``not_eligible``: published live, but the projection says "not eligible" (or the source row
  is gone);
- ``ahead``: published with a higher (version, schema_version) than the source row's. This
  cannot happen through the normal path (e.g. the authoring database was restored under a
  newer published store); the relay would drop any fix as stale, so it is reported, never
  repaired.

Each page reads the source rows of one target in keyset order (deleted ones too), the keys
with an outbox row waiting (in flight, not drift), and the published rows of the same id
range: three set-based queries, then the projections run in Python. A repair enqueues the
current state of the drifted keys through the normal relay path, one write transaction per
page; the relay's version and hash rules make a fix that raced a live write harmless.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from studypub import outbox, target_store
from studypub.db import read_session_factory, session_factory
from studypub.projection import PROJECTORS, SCHEMA_VERSION, SHARED, payload_hash
from studypub.targets import DEFAULT_PAGE, Target, check_page


class DriftClass(StrEnum):
    """How a published row differs from what its projection says (see the module doc)."""

    MISSING = "missing"
    STALE = "stale"
    NOT_ELIGIBLE = "not_eligible"
    AHEAD = "ahead"


REPAIRABLE = frozenset({DriftClass.MISSING, DriftClass.STALE, DriftClass.NOT_ELIGIBLE})
# Drifted keys kept per kind in a summary, for the operator to look at (the counts are exact).
EXAMPLES_PER_KIND = 20

# (target, source rows checked so far): called after every page.
ProgressCallback = Callable[[Target, int], None]


@dataclass(frozen=True, slots=True)
class Drift:
    """One drifted key. ``published_version`` (the newest source version the relay has seen
    for the key, ``published.latest_version``) is None when nothing is published."""

    kind: str
    id: int
    drift: DriftClass
    source_version: int | None  # None: the source row is gone
    published_version: int | None
    scope: str = SHARED  # of the published row: a tombstone for a gone source row keeps it


@dataclass(frozen=True, slots=True)
class DriftPage:
    """What one page found. ``counts[kind]`` has ``checked``, ``in_flight`` and each class."""

    target: Target
    after_id: int
    rows: int  # source rows read; fewer than the limit means this is the last page
    last_id: int
    counts: dict[str, Counter[str]]
    drifted: list[Drift]


@dataclass
class ChecksumCheck:
    """The relay's state checksums against a full recount: the kinds whose checksums
    differed, and whether they were set to the recount (``--repair``)."""

    drifted: list[str] = field(default_factory=list)
    repaired: bool = False

    @property
    def unrepaired(self) -> int:
        return 0 if self.repaired else len(self.drifted)


@dataclass
class VerifySummary:
    """One kind's totals over a whole run. ``repaired`` counts outbox rows enqueued."""

    kind: str
    checked: int = 0
    in_flight: int = 0
    missing: int = 0
    stale: int = 0
    not_eligible: int = 0
    ahead: int = 0
    repaired: int = 0
    examples: list[Drift] = field(default_factory=list)

    @property
    def drift(self) -> int:
        return sum(self.count(name) for name in DriftClass)

    @property
    def unrepaired(self) -> int:
        return self.drift - self.repaired

    def count(self, name: DriftClass) -> int:
        """How many keys of this kind drifted in class ``name``."""
        return int(getattr(self, name.value))

    def as_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "checked": self.checked,
            "in_flight": self.in_flight,
            **{name.value: self.count(name) for name in DriftClass},
            "repaired": self.repaired,
            "examples": [{"id": d.id, "drift": d.drift.value} for d in self.examples],
        }


async def find_drift(
    session: AsyncSession, target: Target, *, after_id: int = 0, limit: int = DEFAULT_PAGE
) -> DriftPage:
    """Compare one keyset page of ``target``'s source rows with their published rows.

    The page covers the ids after ``after_id`` up to its last source row, or all of them
    when it is the last page, so published rows whose source row is gone are found too.
    """
    kinds = target.kinds
    sources = await target_store.read_sources(
        session, target, after_id=after_id, limit=limit, eligible_only=False
    )
    last = len(sources) < limit
    last_id = sources[-1].id if sources else after_id
    up_to = None if last else last_id

    # Order matters on PostgreSQL, where each statement sees what was committed when it
    # began: source rows, then the outbox, then the published rows. A write committed after
    # the source read is then either still in the outbox (skipped) or already published, so
    # it can only look "ahead" (or, a new row, published without a source row); such keys
    # are read again at the end (see _recheck_raced).
    pending = await target_store.read_waiting_keys(session, kinds, after_id=after_id, up_to=up_to)
    published = await target_store.read_published_keys(
        session, kinds, after_id=after_id, up_to=up_to
    )

    counts = {kind: Counter[str]() for kind in kinds}
    drifted: list[Drift] = []
    for row in sources:
        for kind in kinds:
            key = (kind, row.id)
            pub = published.pop(key, None)  # what is left afterwards has no source row
            if key in pending:
                counts[kind]["in_flight"] += 1
                continue
            counts[kind]["checked"] += 1
            found = _classify(PROJECTORS[kind](row), row.version, pub)
            if found is not None:
                counts[kind][found] += 1
                version = None if pub is None else pub.version
                drifted.append(Drift(kind, row.id, found, row.version, version))
    for (kind, id_), pub in published.items():  # no source row left for these
        if (kind, id_) in pending:
            counts[kind]["in_flight"] += 1
            continue
        counts[kind]["checked"] += 1
        if not pub.deleted:
            counts[kind][DriftClass.NOT_ELIGIBLE] += 1
            drifted.append(Drift(kind, id_, DriftClass.NOT_ELIGIBLE, None, pub.version, pub.scope))

    drifted = await _recheck_raced(session, target, drifted, counts)
    return DriftPage(target, after_id, len(sources), last_id, counts, drifted)


def _classify(payload: dict[str, Any] | None, version: int, pub: Any) -> DriftClass | None:
    """The drift class of one key, or None when its published row is right."""
    if pub is not None and (pub.version, pub.schema_version) > (version, SCHEMA_VERSION):
        return DriftClass.AHEAD
    if payload is None:
        return DriftClass.NOT_ELIGIBLE if pub is not None and not pub.deleted else None
    if pub is None or pub.deleted:
        return DriftClass.MISSING
    return DriftClass.STALE if pub.hash != payload_hash(payload) else None


def _may_have_raced(d: Drift) -> bool:
    return d.drift == DriftClass.AHEAD or d.source_version is None


async def _recheck_raced(
    session: AsyncSession, target: Target, drifted: list[Drift], counts: dict[str, Counter[str]]
) -> list[Drift]:
    """Drop keys that only looked drifted because a live write came in between the reads.

    An "ahead" key whose source row has caught up, or a published key whose source row
    was inserted after the source read (the last page's open id range), was in flight.
    """
    raced = [d for d in drifted if _may_have_raced(d)]
    if not raced:
        return drifted
    ids = sorted({d.id for d in raced})
    now = await target_store.read_source_versions(session, target, ids)
    kept = []
    for d in drifted:
        version = now.get(d.id)
        if _may_have_raced(d) and version is not None and version >= (d.published_version or 0):
            counts[d.kind][d.drift] -= 1
            counts[d.kind]["checked"] -= 1
            counts[d.kind]["in_flight"] += 1
        else:
            kept.append(d)
    return kept


async def repair_page(
    session: AsyncSession, target: Target, drifted: Sequence[Drift]
) -> list[Drift]:
    """Enqueue the current state of the repairable ``drifted`` keys; returns those enqueued.

    The source rows are read again in the caller's write transaction, so what is enqueued
    is their state now. A key whose source row is gone gets a tombstone at its published
    version: the relay applies it (same version, other content) without inventing a newer
    version that a reused id could not overtake.
    """
    fixes = [d for d in drifted if d.drift in REPAIRABLE]
    if not fixes:
        return []
    rows = await target_store.read_sources_by_id(session, target, sorted({d.id for d in fixes}))
    values, done = [], []
    for d in fixes:
        row = rows.get(d.id)
        if row is not None:
            values.append(outbox.outbox_values(d.kind, row))
            done.append(d)
        elif d.published_version is not None:
            done.append(d)
            values.append(
                outbox.snapshot_values(
                    kind=d.kind,
                    source_id=d.id,
                    source_version=d.published_version,
                    payload=None,
                    scope=d.scope,
                )
            )
    await outbox.insert_outbox(session, values)
    return done


async def verify(
    engine: AsyncEngine,
    targets: Sequence[Target],
    *,
    page: int = DEFAULT_PAGE,
    repair: bool = False,
    progress: ProgressCallback | None = None,
) -> list[VerifySummary]:
    """Verify ``targets`` page by page; one summary per kind, in target order.

    With ``repair``, each page with drift enqueues its fixes in one write transaction of its
    own: a stopped run keeps the pages it repaired, and a new run finds only what is left.
    """
    check_page(page)
    reads, writes = read_session_factory(engine), session_factory(engine)
    summaries: list[VerifySummary] = []
    for target in targets:
        by_kind = {kind: VerifySummary(kind) for kind in target.kinds}
        summaries.extend(by_kind.values())
        after_id, rows = 0, 0
        while True:
            async with reads() as session:
                found = await find_drift(session, target, after_id=after_id, limit=page)
            for kind, counts in found.counts.items():
                summary = by_kind[kind]
                summary.checked += counts["checked"]
                summary.in_flight += counts["in_flight"]
                for name in DriftClass:
                    setattr(summary, name.value, summary.count(name) + counts[name])
            for d in found.drifted:
                if len(by_kind[d.kind].examples) < EXAMPLES_PER_KIND:
                    by_kind[d.kind].examples.append(d)
            if repair and found.drifted:
                async with writes() as session, session.begin():
                    repaired = await repair_page(session, target, found.drifted)
                for d in repaired:
                    by_kind[d.kind].repaired += 1
            rows += found.rows
            if progress is not None:
                progress(target, rows)
            if found.rows < page:
                break
            after_id = found.last_id
    return summaries


async def verify_checksums(
    engine: AsyncEngine, targets: Sequence[Target], *, repair: bool = False
) -> ChecksumCheck:
    """Compare the relay's state checksums of the targets' kinds with a full recount of the
    live published rows, in one read snapshot; with ``repair``, set the drifted ones to the
    recount (the entries themselves are ``verify``'s business, through the relay)."""
    kinds = [kind for target in targets for kind in target.kinds]
    async with read_session_factory(engine)() as session:
        kept = await target_store.read_checksum_rows(session, kinds)
        recounted = await target_store.recount_checksums(session, kinds)
    drifted = sorted(
        {
            kind
            for kind, scope in kept.keys() | recounted.keys()
            if kept.get((kind, scope)) != recounted.get((kind, scope))
        }
    )
    check = ChecksumCheck(drifted)
    if drifted and repair:
        async with session_factory(engine)() as session, session.begin():
            await target_store.recount_checksums_locked(session, kinds)
        check.repaired = True
    return check
