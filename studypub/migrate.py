"""Schema migrations (Alembic), driven from code: no alembic.ini to keep beside the data."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.ext.asyncio import AsyncEngine

from studypub.db import connect_checked
from studypub.errors import SchemaNotMigrated

MIGRATIONS_DIR = Path(__file__).parent / "migrations"


def alembic_config(url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def head_revision() -> str:
    head = ScriptDirectory.from_config(alembic_config("sqlite://")).get_current_head()
    assert head is not None
    return head


def _url(engine: AsyncEngine) -> str:
    return engine.url.render_as_string(hide_password=False)


async def upgrade(engine: AsyncEngine, revision: str = "head") -> None:
    """Migrate the database of ``engine`` to ``revision``."""
    async with connect_checked(engine):
        pass  # a clear error if the database cannot be reached
    # Alembic's env.py runs its own event loop; keep it off ours.
    await asyncio.to_thread(command.upgrade, alembic_config(_url(engine)), revision)


async def current_revision(engine: AsyncEngine) -> str | None:
    async with connect_checked(engine) as conn:
        return await conn.run_sync(
            lambda sync: MigrationContext.configure(sync).get_current_revision()
        )


async def require_current(engine: AsyncEngine) -> None:
    """Raise :class:`SchemaNotMigrated` unless the database is at the head revision."""
    current = await current_revision(engine)
    if current != head_revision():
        state = "has no studypub schema" if current is None else f"is at revision {current}"
        raise SchemaNotMigrated(
            f"the database {state}, this studypub needs {head_revision()}: "
            "run `studypub db upgrade`"
        )
