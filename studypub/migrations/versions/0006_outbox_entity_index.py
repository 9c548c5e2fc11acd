"""ix_outbox_entity: the outbox by (kind, source_id), for verify, prune and dead rows

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_outbox_entity", "outbox", ["kind", "source_id"])


def downgrade() -> None:
    op.drop_index("ix_outbox_entity", table_name="outbox")
