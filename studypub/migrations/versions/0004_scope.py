"""scope: who may see a published row ('' shared, or the learner of a progress row)

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02 10:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# A progress row's scope is its learner, read from the source row (a tombstone's payload is
# empty); a source row already gone leaves the row shared, as it was before this revision.
FILL = """
UPDATE {table} SET scope = COALESCE(
    (SELECT learner FROM card_progress c WHERE c.id = {table}.{id}), '')
WHERE kind = 'card_progress'
"""


def upgrade() -> None:
    for table in ("outbox", "published"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("scope", sa.String(length=200), server_default="", nullable=False)
            )
    op.execute(FILL.format(table="outbox", id="source_id"))
    op.execute(FILL.format(table="published", id="id"))
    with op.batch_alter_table("published", schema=None) as batch_op:
        batch_op.create_index("ix_published_scope_seq", ["scope", "seq"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("published", schema=None) as batch_op:
        batch_op.drop_index("ix_published_scope_seq")
        batch_op.drop_column("scope")
    with op.batch_alter_table("outbox", schema=None) as batch_op:
        batch_op.drop_column("scope")
