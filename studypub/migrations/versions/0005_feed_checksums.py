"""feed_checksums: the relay's count and checksum of the live entries per (kind, scope)

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 11:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from studypub.checksums import H64, PG_H64, sql_halves

HI, LO = sql_halves("hash")

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The initial values: a full count of the live entries (the relay keeps them from here on).
# On SQLite, studypub_h64 is a function every studypub connection has (studypub.db).
FILL = f"""
INSERT INTO feed_checksums (kind, scope, entries, sum_hi, sum_lo, changed_seq)
SELECT kind, scope, count(*), sum({HI}), sum({LO}), max(seq)
FROM published WHERE NOT deleted GROUP BY kind, scope
"""


def upgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_H64)
    op.create_table(
        "feed_checksums",
        sa.Column("kind", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=200), nullable=False),
        sa.Column("entries", sa.BigInteger(), nullable=False),
        sa.Column("sum_hi", sa.BigInteger(), nullable=False),
        sa.Column("sum_lo", sa.BigInteger(), nullable=False),
        sa.Column("changed_seq", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("kind", "scope", name=op.f("pk_feed_checksums")),
    )
    op.create_index(
        op.f("ix_feed_checksums_changed_seq"), "feed_checksums", ["changed_seq"], unique=False
    )
    op.execute(FILL)


def downgrade() -> None:
    op.drop_table("feed_checksums")
    if op.get_bind().dialect.name == "postgresql":
        op.execute(f"DROP FUNCTION {H64}(text)")
