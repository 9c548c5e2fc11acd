"""published.latest_version: the relay's high-water mark apart from the feed entry's version

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 08:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Added nullable, filled from the entry's versions (until now one pair served both
    # purposes), then made NOT NULL.
    with op.batch_alter_table("published", schema=None) as batch_op:
        batch_op.add_column(sa.Column("latest_version", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("latest_schema_version", sa.Integer(), nullable=True))
    op.execute(
        "UPDATE published SET latest_version = version, latest_schema_version = schema_version"
    )
    with op.batch_alter_table("published", schema=None) as batch_op:
        batch_op.alter_column("latest_version", existing_type=sa.Integer(), nullable=False)
        batch_op.alter_column("latest_schema_version", existing_type=sa.Integer(), nullable=False)


def downgrade() -> None:
    # The entry's versions become the high-water mark again, as before this revision.
    op.execute(
        "UPDATE published SET version = latest_version, schema_version = latest_schema_version"
    )
    with op.batch_alter_table("published", schema=None) as batch_op:
        batch_op.drop_column("latest_schema_version")
        batch_op.drop_column("latest_version")
