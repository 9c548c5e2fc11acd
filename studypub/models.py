"""Tables: the authoring side (source rows) and the publishing side (outbox, feed).

Every authoring table carries ``version``: SQLAlchemy's ``version_id_col`` sets it to 1 at
insert and adds 1 on every ORM update (soft delete, review and retire included), and refuses
an update whose in-memory version is no longer the row's (optimistic locking for free).
"""

from __future__ import annotations

import enum
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    DDL,
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Dialect,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, declared_attr, mapped_column
from sqlalchemy.types import TypeDecorator

from studypub import checksums

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid alias).
BigId = BigInteger().with_variant(Integer(), "sqlite")


def utcnow() -> datetime:
    return datetime.now(UTC)


def new_epoch() -> str:
    """A fresh feed epoch: cursors of another epoch (e.g. before a restore) are refused."""
    return uuid.uuid4().hex[:12]


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on both databases (SQLite stores naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: studypub stores UTC-aware datetimes")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SourceMixin:
    """Columns every authoring table has: id, version, timestamps, soft delete."""

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, onupdate=utcnow, nullable=False
    )
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    @declared_attr.directive
    def __mapper_args__(cls) -> dict[str, Any]:
        return {"version_id_col": cls.version}


# ---------------------------------------------------------------- authoring


class Topic(SourceMixin, Base):
    __tablename__ = "topics"

    title: Mapped[str] = mapped_column(String(200), nullable=False)
    description: Mapped[str] = mapped_column(Text, default="", nullable=False)


class ExplanationStatus(enum.StrEnum):
    PENDING = "pending"
    READY = "ready"
    FAILED = "failed"


class Question(SourceMixin, Base):
    __tablename__ = "questions"

    topic_id: Mapped[int] = mapped_column(ForeignKey("topics.id"), index=True, nullable=False)
    stem: Mapped[str] = mapped_column(Text, nullable=False)
    choices: Mapped[list[str]] = mapped_column(JSON, nullable=False)
    answer: Mapped[str] = mapped_column(Text, nullable=False)
    explanation: Mapped[str | None] = mapped_column(Text, default=None)
    explanation_status: Mapped[str] = mapped_column(
        String(16), default=ExplanationStatus.PENDING.value, nullable=False
    )
    explanation_error: Mapped[str | None] = mapped_column(Text, default=None)

    __table_args__ = (
        CheckConstraint(
            "explanation_status IN ('pending', 'ready', 'failed')", name="explanation_status"
        ),
    )


class MemoCard(SourceMixin, Base):
    __tablename__ = "memo_cards"

    topic_id: Mapped[int] = mapped_column(ForeignKey("topics.id"), index=True, nullable=False)
    question_id: Mapped[int | None] = mapped_column(ForeignKey("questions.id"), default=None)
    front: Mapped[str] = mapped_column(Text, nullable=False)
    back: Mapped[str] = mapped_column(Text, nullable=False)
    needs_review: Mapped[bool] = mapped_column(Boolean, default=True, nullable=False)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


class ProgressState(enum.StrEnum):
    NEW = "new"
    LEARNING = "learning"
    REVIEW = "review"
    RELEARNING = "relearning"
    SUSPENDED = "suspended"  # terminal: the learner set the card aside
    RETIRED = "retired"  # terminal: the card itself was retired

    @property
    def terminal(self) -> bool:
        return self in (ProgressState.SUSPENDED, ProgressState.RETIRED)


class CardProgress(SourceMixin, Base):
    """One learner's spaced-repetition state of one card (FSRS fields)."""

    __tablename__ = "card_progress"

    card_id: Mapped[int] = mapped_column(ForeignKey("memo_cards.id"), nullable=False)
    learner: Mapped[str] = mapped_column(String(200), nullable=False)
    state: Mapped[str] = mapped_column(String(16), default=ProgressState.NEW.value, nullable=False)
    step: Mapped[int | None] = mapped_column(Integer, default=None)
    due_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)
    stability: Mapped[float | None] = mapped_column(Float, default=None)
    difficulty: Mapped[float | None] = mapped_column(Float, default=None)
    reps: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    lapses: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    last_review_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        UniqueConstraint("card_id", "learner", name="uq_card_progress_card_learner"),
        CheckConstraint(
            "state IN ('new', 'learning', 'review', 'relearning', 'suspended', 'retired')",
            name="state",
        ),
    )


# ---------------------------------------------------------------- publishing


class Outbox(Base):
    """A payload snapshot waiting for the relay. Deleted in the relay's apply transaction."""

    __tablename__ = "outbox"

    id: Mapped[int] = mapped_column(BigId, primary_key=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    source_id: Mapped[int] = mapped_column(BigInteger, nullable=False)
    source_version: Mapped[int] = mapped_column(Integer, nullable=False)
    schema_version: Mapped[int] = mapped_column(Integer, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    payload_hash: Mapped[str] = mapped_column(String(64), nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, default=False, nullable=False)
    # Who may see the published row ('' shared, or a learner: projection.scope_of).
    scope: Mapped[str] = mapped_column(String(200), default="", server_default="", nullable=False)
    enqueued_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    attempts: Mapped[int] = mapped_column(Integer, default=0, nullable=False)
    available_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    last_error: Mapped[str | None] = mapped_column(Text, default=None)
    dead_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)

    __table_args__ = (
        # The relay's claim: live rows in id order (dead rows leave the index).
        Index(
            "ix_outbox_due",
            "id",
            "available_at",
            postgresql_where=text("dead_at IS NULL"),
            sqlite_where=text("dead_at IS NULL"),
        ),
        Index(
            "ix_outbox_dead",
            "dead_at",
            postgresql_where=text("dead_at IS NOT NULL"),
            sqlite_where=text("dead_at IS NOT NULL"),
        ),
        # By entity: the waiting rows of a key range (verify), of a tombstone's entity
        # (prune), of a kind (studypub dead).
        Index("ix_outbox_entity", "kind", "source_id"),
    )


class Published(Base):
    """The current published state of one (kind, id), and its feed entry (``seq``).

    ``seq`` is NULL only for a tombstone of an entity that was never in the feed: it is kept
    to refuse late snapshots (version monotonicity) but no consumer needs to hear of it.

    ``version`` and ``schema_version`` are the feed entry's, exactly what consumers hold.
    ``latest_version`` and ``latest_schema_version`` are the newest the relay has seen for the
    entity, applied or found unchanged: the relay refuses anything older (invariant 3). They
    run ahead of the entry's when a write changed the source row but not its payload (no new
    feed entry for it, invariant 4), so that a snapshot older than that write, with another
    payload, cannot slip in afterwards, while every consumer still holds exactly this row.
    """

    __tablename__ = "published"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    version: Mapped[int] = mapped_column(Integer, nullable=False)
    schema_version: Mapped[int] = mapped_column(Integer, nullable=False)
    latest_version: Mapped[int] = mapped_column(Integer, nullable=False)
    latest_schema_version: Mapped[int] = mapped_column(Integer, nullable=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, nullable=False)
    hash: Mapped[str] = mapped_column(String(64), nullable=False)
    deleted: Mapped[bool] = mapped_column(Boolean, nullable=False)
    seq: Mapped[int | None] = mapped_column(BigInteger, unique=True)
    published_at: Mapped[datetime] = mapped_column(UTCDateTime, nullable=False)
    # '' for shared content, else the learner whose progress row this is: a learner's feed
    # is the seq order of its scope and the shared one, each read through this index.
    scope: Mapped[str] = mapped_column(String(200), default="", server_default="", nullable=False)

    __table_args__ = (Index("ix_published_scope_seq", "scope", "seq"),)


class FeedHead(Base):
    """The single counter row of the feed. Locked by each apply transaction until commit."""

    __tablename__ = "feed_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[str] = mapped_column(String(32), nullable=False)
    last_seq: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    floor: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)

    __table_args__ = (CheckConstraint("id = 1", name="single_row"),)


class FeedChecksum(Base):
    """The state checksum of the live published rows of one (kind, scope), kept by the relay
    in its apply transaction (:mod:`studypub.checksums`): how many there are (``entries``),
    and the sums of the two 32-bit halves of each one's 64-bit hash prefix. Plain sums: exact
    in a BIGINT up to 2^31 rows, on both databases, with no overflow rule to need.
    ``changed_seq``: the feed head of the last change, for readers that follow changes."""

    __tablename__ = "feed_checksums"

    kind: Mapped[str] = mapped_column(String(32), primary_key=True)
    scope: Mapped[str] = mapped_column(String(200), primary_key=True)
    entries: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    sum_hi: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    sum_lo: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    changed_seq: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False, index=True)


# The SQL function the relay's statements call: created with the table on PostgreSQL (as
# migration 0005 does); a SQLite connection gets it at connect (studypub.db).
_CREATE_H64 = DDL(checksums.PG_H64).execute_if(dialect="postgresql")  # type: ignore[no-untyped-call]
event.listen(FeedChecksum.__table__, "before_create", _CREATE_H64)


class BackfillCheckpoint(Base):
    """Where the backfill of one kind stands; saved in the same transaction as each page."""

    __tablename__ = "backfill_checkpoints"

    target: Mapped[str] = mapped_column(String(32), primary_key=True)
    last_id: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    rows_done: Mapped[int] = mapped_column(BigInteger, default=0, nullable=False)
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, nullable=False)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, default=None)


# ---------------------------------------------------------------- requests


class IdempotencyKey(Base):
    """A client's ``Idempotency-Key`` and the response its first request produced.

    Written in the transaction of that request's write, so the key exists exactly when the
    write does. ``status`` and ``body`` are NULL only while that transaction runs (the key is
    taken first, so a concurrent duplicate waits for it); a committed row always has them.
    """

    __tablename__ = "idempotency_keys"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    fingerprint: Mapped[str] = mapped_column(String(64), nullable=False)
    status: Mapped[int | None] = mapped_column(Integer, default=None)
    body: Mapped[dict[str, Any] | None] = mapped_column(JSON, default=None)
    etag: Mapped[str | None] = mapped_column(String(64), default=None)
    created_at: Mapped[datetime] = mapped_column(
        UTCDateTime, default=utcnow, index=True, nullable=False
    )


SOURCE_MODELS: tuple[type[SourceMixin], ...] = (Topic, Question, MemoCard, CardProgress)


# PostgreSQL wakes the relay from inside each enqueueing transaction (see notify.py). The
# migration creates the same objects; ``create_all`` gets them through this DDL event.
OUTBOX_NOTIFY_FUNCTION = """
CREATE OR REPLACE FUNCTION studypub_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('studypub_outbox', '');
    RETURN NULL;
END $$
"""
OUTBOX_NOTIFY_TRIGGER = """
CREATE TRIGGER outbox_notify AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION studypub_outbox_notify()
"""
for _statement in (OUTBOX_NOTIFY_FUNCTION, OUTBOX_NOTIFY_TRIGGER):
    event.listen(
        Outbox.__table__,
        "after_create",
        DDL(_statement).execute_if(dialect="postgresql"),  # type: ignore[no-untyped-call]
    )
