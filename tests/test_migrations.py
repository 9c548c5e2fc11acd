"""Migrations: ``upgrade head`` on an empty database gives exactly the models' schema."""

from __future__ import annotations

from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect, select, text
from sqlalchemy.engine import Connection

from studypub import migrate
from studypub.db import create_engine
from studypub.models import Base, FeedHead


def _diff(conn: Connection) -> list[Any]:
    context = MigrationContext.configure(conn, opts={"compare_type": True})
    return list(compare_metadata(context, Base.metadata))


async def test_upgrade_head_equals_the_models(fresh_url: str):
    engine = create_engine(fresh_url)
    try:
        await migrate.upgrade(engine)
        assert await migrate.current_revision(engine) == migrate.head_revision()
        async with engine.connect() as conn:
            assert await conn.run_sync(_diff) == []
            names = await conn.run_sync(lambda c: set(inspect(c).get_table_names()))
            assert names == set(Base.metadata.tables) | {"alembic_version"}
            head = (await conn.execute(select(FeedHead.last_seq, FeedHead.floor))).one()
            assert tuple(head) == (0, 0)  # the feed head row is in place
            if engine.dialect.name == "postgresql":  # the relay's wake-up on enqueue
                trigger = await conn.scalar(
                    text("SELECT count(*) FROM pg_trigger WHERE tgname = 'outbox_notify'")
                )
                assert trigger == 1
    finally:
        await engine.dispose()
